"""Quickstart: three NumPy sequences of lengths 4, 2 and 7 packed into one scree.Array, then
causal varlen attention over them with the reference implementation (the spec)."""

import numpy as np

import scree

arr = scree.pack([np.random.randn(4, 8), np.random.randn(2, 8), np.random.randn(7, 8)])
print(arr.values.shape)  # (13, 8)
print(arr.offsets)       # [ 0  4  6 13]
from scree.kernels.reference import varlen_attention
out = varlen_attention(arr, arr, arr, causal=True)

# The checks below make this example a test: shapes and offsets are as printed above, and the
# first token of every sequence (causal: it sees only itself) attends to exactly its own value.
assert arr.values.shape == (13, 8)
assert arr.offsets.tolist() == [0, 4, 6, 13]
assert out.values.shape == (13, 8) and out.offsets.tolist() == [0, 4, 6, 13]
for i in range(len(arr)):
    np.testing.assert_allclose(out[i][0], arr[i][0], rtol=1e-12)
print(out)

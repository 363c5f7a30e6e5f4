"""Ragged math and data sources: elementwise math with per-sequence operands, per-sequence
reductions and softmax, token slicing, an Arrow column in and out, and token-budget batches, each
checked against a loop over the sequences (so this example is a test too). NumPy only; pyarrow
for the Arrow part when it is installed."""

import numpy as np

import scree

rng = np.random.default_rng(0)
arr = scree.pack([rng.standard_normal((n, 4)) for n in (3, 0, 5, 2)])
seqs = list(arr)

# Elementwise math: a per-sequence row (n, 4) is repeated over each sequence's tokens.
scale = rng.standard_normal((len(arr), 4))
scaled = np.exp(arr * scale + 1.0)
for i, s in enumerate(seqs):
    np.testing.assert_allclose(scaled[i], np.exp(s * scale[i] + 1.0))

# Per-sequence ops: reductions to (n, 4) (an empty sequence gives the identity), softmax per sequence.
assert arr.sum().shape == (4, 4) and (arr.sum()[1] == 0).all() and (arr.max()[1] == -np.inf).all()
soft = arr.softmax()
for i, s in enumerate(seqs):
    if len(s):
        e = np.exp(s - s.max(axis=0))
        np.testing.assert_allclose(soft[i], e / e.sum(axis=0), rtol=1e-12)
np.testing.assert_allclose(arr.logsumexp()[2], np.log(np.exp(seqs[2]).sum(axis=0)), rtol=1e-12)
assert arr.argmax()[1].tolist() == [-1] * 4  # no position in an empty sequence

# Token slicing per sequence, truncation, and the sequences of two Arrays in one.
last_two = arr[:, -2:]
assert [len(s) for s in last_two] == [2, 0, 2, 2]
assert [len(s) for s in arr.truncate(1, side="left")] == [1, 0, 1, 1]
both = scree.cat([arr, arr[2:]])
assert len(both) == 6 and both.split([4, 2])[1].total == 7

# An Arrow list column in and out, zero-copy (pyarrow optional).
try:
    import pyarrow as pa
except ImportError:
    pa = None
if pa is not None:
    column = pa.array([[1, 2, 3], [], [4, 5]], type=pa.list_(pa.int64()))
    tokens = scree.bridges.from_arrow(column)
    assert tokens.offsets.dtype == np.int32 and tokens.values.tolist() == [1, 2, 3, 4, 5]
    assert scree.bridges.to_arrow(tokens).to_pylist() == column.to_pylist()

# Token-budget batches: every batch within 8 tokens, every sequence once.
lengths = [3, 0, 5, 2, 7, 1, 4]
batches = list(scree.data.TokenBudgetSampler(lengths, max_tokens=8, seed=0))
assert all(sum(lengths[i] for i in b) <= 8 for b in batches)
assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
print("ragged ops example: all checks passed")

"""Migrating HuggingFace-style padded code to scree, bit-exactly.

A HF model hands you `hidden` (batch, seq, dim) plus `attention_mask` (batch, seq), often left
padded for generation. `scree.bridges.from_hf_padded` keeps only the real tokens; token-wise work
(here a linear layer) runs on the packed values without computing a single pad slot; and
`to_hf_padded` gives back exactly the padded layout the rest of the HF code expects."""

import torch

import scree
from scree.bridges import from_hf_padded, to_hf_padded

torch.manual_seed(0)
lengths = [5, 1, 9, 3]
batch, seq, dim = len(lengths), max(lengths), 16

# A left-padded batch, as a HF tokenizer with padding_side="left" would produce it.
attention_mask = torch.zeros(batch, seq, dtype=torch.long)
for i, n in enumerate(lengths):
    attention_mask[i, seq - n:] = 1
hidden = torch.randn(batch, seq, dim) * attention_mask[..., None]  # pad slots hold zeros, as HF's

# 1. Into scree: only the 18 real tokens, no padding.
arr = from_hf_padded(hidden, attention_mask)
print(arr)
assert arr.lengths.tolist() == lengths

# 2. Token-wise work on the packed values: 18 rows instead of 4 * 9 = 36.
proj = torch.nn.Linear(dim, dim)
with torch.no_grad():
    out = arr.map(proj)

# 3. Back to the HF layout, left padded. The layout is exact; the numbers match running the layer
#    on every pad slot up to GEMM blocking (BLAS may sum in another order for 18 vs 36 rows).
padded_out, mask_out = to_hf_padded(out, padding_side="left")
with torch.no_grad():
    reference = proj(hidden) * attention_mask[..., None]
assert torch.equal(mask_out, attention_mask)
torch.testing.assert_close(padded_out, reference, rtol=1e-6, atol=1e-6)
assert torch.equal(padded_out[attention_mask == 0], torch.zeros_like(padded_out[attention_mask == 0]))

# 4. The round trip itself is bit-exact for either padding side: tokens are copied, never recomputed.
for side in ("left", "right"):
    x, m = to_hf_padded(arr, padding_side=side)
    assert torch.equal(from_hf_padded(x, m).values, arr.values)
print(f"round trip bit-exact; {arr.total} packed tokens vs {batch * seq} padded slots "
      f"({1 - arr.total / (batch * seq):.0%} of the work skipped)")

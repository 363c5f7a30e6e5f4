"""Migrating HuggingFace-style padded code to scree, bit-exactly.

A HF model hands you `hidden` (batch, seq, dim) plus `attention_mask` (batch, seq), often left
padded for generation. `scree.bridges.from_hf_padded` keeps only the real tokens; token-wise work
(here a linear layer) runs on the packed values without computing a single pad slot; and
`to_hf_padded` gives back exactly the padded layout the rest of the HF code expects.

Part 5 goes one step further: whole HF models with `attn_implementation="scree"` (after
`scree.integrations.transformers.register()`), fed either the usual padded batch or a packed one
from `DataCollatorWithFlattening` — no padding at all — and checked against HF's eager attention.
It needs `transformers` (skipped, with the reason printed, when it is not installed)."""

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

# 5. A HF model with attn_implementation="scree": padded and packed batches, against eager.
try:
    import transformers
except ImportError as e:  # pragma: no cover - transformers is an optional extra ([hf])
    print(f"HF model section skipped: {e}")
    raise SystemExit(0)

import scree.integrations.transformers as scree_hf

scree_hf.register()
config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2)
model = transformers.LlamaForCausalLM(config).eval()  # random weights, built from the config: no download
docs = [torch.randint(0, 256, (n,)) for n in lengths]


def logits(impl, **inputs):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


# Padded (left, as for generation): only real tokens are compared; scree zeroes the pad rows.
ids = torch.zeros(batch, seq, dtype=torch.long)
ids[attention_mask.bool()] = torch.cat(docs)
padded_scree = logits("scree", input_ids=ids, attention_mask=attention_mask)
padded_eager = logits("eager", input_ids=ids, attention_mask=attention_mask)
real = attention_mask.bool()
torch.testing.assert_close(padded_scree[real], padded_eager[real], rtol=1e-4, atol=1e-5)

# Packed: one row of 18 tokens, cu_seq_lens / max_length_q / position_ids from HF's own collator.
flat = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{"input_ids": d.tolist()} for d in docs])
flat.pop("labels")
packed_scree = logits("scree", **flat)
packed_eager = logits("eager", input_ids=flat["input_ids"], position_ids=flat["position_ids"])
torch.testing.assert_close(packed_scree, packed_eager, rtol=1e-4, atol=1e-5)
# ... and the packed row holds exactly the logits of the padded batch's real tokens.
torch.testing.assert_close(packed_scree[0], padded_scree[real], rtol=1e-4, atol=1e-5)
print(f"HF Llama, attn_implementation='scree': padded ({batch}x{seq} slots) and packed "
      f"({flat['input_ids'].shape[1]} tokens, cu_seq_lens {flat['cu_seq_lens_q'].tolist()}) both match eager")

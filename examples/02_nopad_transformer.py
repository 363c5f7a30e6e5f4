"""A full pre-norm transformer block (RMSNorm -> GQA self-attention with rotary embeddings ->
residual -> RMSNorm -> SwiGLU -> residual) on a packed batch of variable-length sequences with
scree.nn: no padding anywhere. Checked against the same block, same weights, run the way padded
code runs it today: a (batch, longest, dim) tensor, positions 0..L-1 per row, and
torch's scaled_dot_product_attention with a causal + key-padding mask."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import scree
from scree.nn import TransformerBlock

torch.manual_seed(0)
rng = np.random.default_rng(0)
dim, heads, kv_heads = 64, 8, 2
lengths = np.clip(rng.lognormal(np.log(12), 1.0, 16).astype(np.int64), 1, 96)
lengths[0] = 96  # one long sequence, the usual cause of padding waste

block = TransformerBlock(dim, heads, num_kv_heads=kv_heads, mlp_hidden=128).double()
x = scree.from_lengths(torch.randn(int(lengths.sum()), dim, dtype=torch.float64), lengths)
print(x)

# 1. scree: the block runs on the packed (total, dim) values; attention per sequence.
with torch.no_grad():
    out = block(x)


# 2. The padded way, written out with plain torch ops (no scree) from the block's own weights.
def padded_block(xp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    p, c = block.params(), block.config
    B, L, _ = xp.shape
    Dh = c.head_dim

    def rope(t):  # HF Llama's rotate-half RoPE with positions 0..L-1 in every (right-padded) row
        inv = 1.0 / 10000.0 ** (torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
        ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None]
        ang = torch.cat([ang, ang], -1)[None, None]
        return t * ang.cos() + torch.cat([-t[..., Dh // 2:], t[..., :Dh // 2]], -1) * ang.sin()

    h = F.rms_norm(xp, (dim,), p["attn_norm"], c.eps)
    q, k, v = (h @ p["w_qkv"].T).split([heads * Dh, kv_heads * Dh, kv_heads * Dh], -1)
    q = rope(q.view(B, L, heads, Dh).transpose(1, 2))
    k = rope(k.view(B, L, kv_heads, Dh).transpose(1, 2))
    v = v.view(B, L, kv_heads, Dh).transpose(1, 2)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    visible = causal[None, None] & mask[:, None, None, :]
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=True)
    h = xp + a.transpose(1, 2).reshape(B, L, heads * Dh) @ p["w_o"].T
    m = F.rms_norm(h, (dim,), p["mlp_norm"], c.eps)
    return h + (F.silu(m @ p["w_gate"].T) * (m @ p["w_up"].T)) @ p["w_down"].T


padded, mask = x.to_padded()
with torch.no_grad():
    ref = padded_block(padded, mask)
ref_packed = scree.from_padded(ref, mask=mask)  # keep the real tokens only

err = (out.values - ref_packed.values).abs().max().item()
n, L = mask.shape
print(f"{n} sequences, {x.total} tokens; padded: {n * L} slots ({1 - x.total / (n * L):.0%} padding)")
print(f"packed block vs padded block with mask: max |diff| = {err:.2e} (float64)")
assert out.offsets.tolist() == x.offsets.tolist()
torch.testing.assert_close(out.values, ref_packed.values, rtol=1e-10, atol=1e-10)

# Sequence i of the packed output is the block applied to sequence i alone.
with torch.no_grad():
    for i in (0, 5, len(x) - 1):
        torch.testing.assert_close(out[i], block(scree.pack([x[i]])).values, rtol=1e-10, atol=1e-10)
print("every sequence matches the padded computation and its own solo run")

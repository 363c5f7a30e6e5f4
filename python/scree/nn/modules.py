"""Role: the PyTorch modules of scree.nn. Each holds its parameters as torch.nn parameters and calls
the shared definition in scree.nn.functional with them, so a module, its JAX / MLX functional form
and the NumPy form compute the same thing. Inputs and outputs are scree.Arrays of torch tensors
(values (total, features)); no padding anywhere. Gradients flow through torch autograd, including
scree.varlen_attention's compiled CPU kernel (a torch custom op with a backward)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scree._array import Array
from scree.nn import functional as F
from scree.nn.functional import BlockConfig

__all__ = ["RMSNorm", "RotaryEmbedding", "SelfAttention", "SwiGLU", "TransformerBlock", "CausalLM"]


def _config(config: BlockConfig | None, dim: int | None, num_heads: int | None, kw: dict) -> BlockConfig:
    if config is not None:
        if dim is not None or num_heads is not None or kw:
            raise TypeError("give either config= or the shape arguments, not both")
        return config
    if dim is None or num_heads is None:
        raise TypeError("dim and num_heads are required without config=")
    return BlockConfig(dim=dim, num_heads=num_heads, **kw)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis (weight initialised to ones); token-wise, on an Array or tensor."""

    def __init__(self, dim: int, eps: float = 1e-6, device: Any = None, dtype: Any = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Any) -> Any:
        return F.rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Rotary embedding (rotate-half, HF Llama's layout) by each token's position within its own
    sequence: `rope(x)` for an Array with values (total, heads, head_dim). No parameters."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        self.head_dim, self.base = head_dim, base

    def forward(self, x: Array, positions: Any = None) -> Array:
        return F.rotary(x, self.base, positions)


class SelfAttention(nn.Module):
    """GQA self-attention: fused qkv projection -> rotary -> scree.varlen_attention -> output
    projection. `SelfAttention(dim, num_heads, num_kv_heads=None, head_dim=None, causal=True,
    window=None, softcap=None, scale=None, rope_base=10000.0, bias=False)` or `config=`."""

    def __init__(self, dim: int | None = None, num_heads: int | None = None, *, config: BlockConfig | None = None,
                 bias: bool = False, **kw: Any):
        super().__init__()
        self.config = c = _config(config, dim, num_heads, kw)
        self.qkv = nn.Linear(c.dim, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim, bias=bias)
        self.o = nn.Linear(c.num_heads * c.head_dim, c.dim, bias=bias)

    def params(self) -> dict[str, Any]:
        return {"w_qkv": self.qkv.weight, "b_qkv": self.qkv.bias, "w_o": self.o.weight, "b_o": self.o.bias}

    def forward(self, x: Array) -> Array:
        return F.attention(x, self.params(), self.config)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases; token-wise, on an Array or tensor."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def params(self) -> dict[str, Any]:
        return {"w_gate": self.gate.weight, "w_up": self.up.weight, "w_down": self.down.weight}

    def forward(self, x: Any) -> Any:
        return F.swiglu(x, self.params())


class TransformerBlock(nn.Module):
    """Pre-norm block on a packed batch: h = x + attn(norm(x)); out = h + mlp(norm(h)).
    `TransformerBlock(dim, num_heads, num_kv_heads=None, head_dim=None, mlp_hidden=None, eps=1e-6,
    causal=True, window=None, softcap=None, scale=None, rope_base=10000.0)` or `config=`."""

    def __init__(self, dim: int | None = None, num_heads: int | None = None, *, config: BlockConfig | None = None,
                 **kw: Any):
        super().__init__()
        self.config = c = _config(config, dim, num_heads, kw)
        self.attn_norm = RMSNorm(c.dim, c.eps)
        self.attn = SelfAttention(config=c)
        self.mlp_norm = RMSNorm(c.dim, c.eps)
        self.mlp = SwiGLU(c.dim, c.mlp_hidden)

    def params(self) -> dict[str, Any]:
        """The parameters under the names scree.nn.functional.transformer_block reads."""
        return {"attn_norm": self.attn_norm.weight, **self.attn.params(), "mlp_norm": self.mlp_norm.weight,
                **self.mlp.params()}

    def forward(self, x: Array) -> Array:
        return F.transformer_block(x, self.params(), self.config)


class CausalLM(nn.Module):
    """Embedding -> TransformerBlocks -> RMSNorm -> lm_head, on packed token ids (an int64 Array);
    returns an Array of logits (total, vocab)."""

    def __init__(self, vocab: int, num_layers: int, dim: int | None = None, num_heads: int | None = None, *,
                 config: BlockConfig | None = None, **kw: Any):
        super().__init__()
        self.config = c = _config(config, dim, num_heads, kw)
        self.embed = nn.Embedding(vocab, c.dim)
        self.blocks = nn.ModuleList(TransformerBlock(config=c) for _ in range(num_layers))
        self.norm = RMSNorm(c.dim, c.eps)
        self.lm_head = nn.Linear(c.dim, vocab, bias=False)

    def params(self) -> dict[str, Any]:
        """The parameters under the names scree.nn.functional.causal_lm reads."""
        return {"embed": self.embed.weight, "blocks": [b.params() for b in self.blocks], "norm": self.norm.weight,
                "lm_head": self.lm_head.weight}

    def forward(self, tokens: Array) -> Array:
        return F.causal_lm(tokens, self.params(), self.config)

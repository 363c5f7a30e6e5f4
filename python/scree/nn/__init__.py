"""Role: scree.nn, no-pad transformer building blocks on `scree.Array` (imported explicitly by
users; `import scree` never imports it).

PyTorch modules (torch is imported on first access to one of them, not by `import scree.nn`)::

    RMSNorm, RotaryEmbedding, SelfAttention (GQA), SwiGLU, TransformerBlock, CausalLM

Functional forms sharing the same definition (scree.nn.functional, written once against the
backend namespace), with thin JAX and MLX entry points::

    scree.nn.functional      rms_norm, rotary, linear, silu, swiglu, attention, transformer_block
    scree.nn.functional_jax  init_block_params / transformer_block / causal_lm for JAX
    scree.nn.functional_mlx  the same for MLX

Every module takes and returns scree.Arrays whose values are (total tokens, features); rotary
angles come from each token's position within its own sequence (`Array.positions()`), and
attention never crosses a sequence boundary (`scree.varlen_attention`)."""

from __future__ import annotations

from typing import Any

from scree.nn.functional import BlockConfig

_TORCH_MODULES = ("RMSNorm", "RotaryEmbedding", "SelfAttention", "SwiGLU", "TransformerBlock", "CausalLM")

__all__ = ["BlockConfig", *_TORCH_MODULES]


def __getattr__(name: str) -> Any:
    if name in _TORCH_MODULES:
        from scree.nn import modules  # imports torch
        return getattr(modules, name)
    raise AttributeError(f"module 'scree.nn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["functional"])

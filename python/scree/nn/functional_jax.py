"""Role: scree.nn's functional forms for JAX. The math is scree.nn.functional (one definition for
every framework); this module adds JAX parameter initialisation and conversion. Every function
takes `scree.Array`s of jax arrays and works under jax.jit (offsets traced: one compile per
(total, n) shape), jax.grad and jax.vmap like the rest of scree.

    params = init_block_params(config, seed=0)            # or params_from(torch_block.params())
    out = jax.jit(transformer_block, static_argnums=2)(x, params, config)
"""

from __future__ import annotations

from typing import Any

import jax  # noqa: F401 - the user asked for the JAX form; scree's JAX backend registers the pytree
import numpy as np

from scree.nn import functional as _F
from scree.nn.functional import (BlockConfig, attention, causal_lm, linear, rms_norm, rotary, silu, swiglu,
                                 transformer_block)

__all__ = ["BlockConfig", "rms_norm", "rotary", "linear", "silu", "swiglu", "attention", "transformer_block",
           "causal_lm", "init_block_params", "init_causal_lm_params", "params_from"]

_BACKEND = "jax"


def init_block_params(config: BlockConfig, seed: int = 0) -> dict[str, Any]:
    """Parameters of one block as jax arrays (float32)."""
    return _F.params_to(_F.init_block_params(config, np.random.default_rng(seed)), _BACKEND)


def init_causal_lm_params(vocab: int, num_layers: int, config: BlockConfig, seed: int = 0) -> dict[str, Any]:
    """Parameters of causal_lm as jax arrays (float32)."""
    return _F.params_to(_F.init_causal_lm_params(vocab, num_layers, config, np.random.default_rng(seed)), _BACKEND)


def params_from(params: Any) -> Any:
    """A parameter tree of another framework (e.g. `scree.nn.TransformerBlock(...).params()`) as
    jax arrays."""
    return _F.params_to(params, _BACKEND)

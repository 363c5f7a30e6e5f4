"""Role: scree.nn's functional forms for JAX. The math is scree.nn.functional (one definition for
every framework); this module adds JAX parameter initialisation and conversion. Every function
takes scree.Arrays of jax arrays and works under jax.jit (offsets traced: one compile per
(total, n) shape), jax.grad and jax.vmap like the rest of scree.

    params = init_block_params(config, seed=0)            # or params_from(torch_block.params())
    out = jax.jit(transformer_block, static_argnums=2)(x, params, config)
"""

from __future__ import annotations

import jax  # noqa: F401 - the user asked for the JAX form; scree's JAX backend registers the pytree
from scree.nn import functional as _F
from scree.nn.functional import (BlockConfig, attention, causal_lm, linear, rms_norm, rotary, silu, swiglu,
                                 transformer_block)

__all__ = ["BlockConfig", "rms_norm", "rotary", "linear", "silu", "swiglu", "attention", "transformer_block",
           "causal_lm", "init_block_params", "init_causal_lm_params", "params_from"]

init_block_params, init_causal_lm_params, params_from = _F.framework_params_api("jax")

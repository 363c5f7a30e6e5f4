"""Role: scree.nn's functional forms for MLX. The math is scree.nn.functional (one definition for
every framework); this module adds MLX parameter initialisation and conversion. Every function
takes scree.Arrays of mlx arrays; gradients through mx.grad (scree.varlen_attention is an
mx.custom_function with a compiled backward on float32 / float16).

    params = init_block_params(config, seed=0)            # or params_from(torch_block.params())
    out = transformer_block(x, params, config)
"""

from __future__ import annotations

import mlx.core  # noqa: F401 - the user asked for the MLX form
from scree.nn import functional as _F
from scree.nn.functional import (BlockConfig, attention, causal_lm, linear, rms_norm, rotary, silu, swiglu,
                                 transformer_block)

__all__ = ["BlockConfig", "rms_norm", "rotary", "linear", "silu", "swiglu", "attention", "transformer_block",
           "causal_lm", "init_block_params", "init_causal_lm_params", "params_from"]

init_block_params, init_causal_lm_params, params_from = _F.framework_params_api("mlx")

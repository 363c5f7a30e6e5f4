"""Role: scree.nn's functional forms for MLX. The math is scree.nn.functional (one definition for
every framework); this module adds MLX parameter initialisation and conversion. Every function
takes `scree.Array`s of mlx arrays; gradients through mx.grad (scree.varlen_attention is an
mx.custom_function with a compiled backward on float32 / float16).

    params = init_block_params(config, seed=0)            # or params_from(torch_block.params())
    out = transformer_block(x, params, config)
"""

from __future__ import annotations

from typing import Any

import mlx.core  # noqa: F401 - the user asked for the MLX form
import numpy as np

from scree.nn import functional as _F
from scree.nn.functional import (BlockConfig, attention, causal_lm, linear, rms_norm, rotary, silu, swiglu,
                                 transformer_block)

__all__ = ["BlockConfig", "rms_norm", "rotary", "linear", "silu", "swiglu", "attention", "transformer_block",
           "causal_lm", "init_block_params", "init_causal_lm_params", "params_from"]

_BACKEND = "mlx"


def init_block_params(config: BlockConfig, seed: int = 0) -> dict[str, Any]:
    """Parameters of one block as mlx arrays (float32)."""
    return _F.params_to(_F.init_block_params(config, np.random.default_rng(seed)), _BACKEND)


def init_causal_lm_params(vocab: int, num_layers: int, config: BlockConfig, seed: int = 0) -> dict[str, Any]:
    """Parameters of causal_lm as mlx arrays (float32)."""
    return _F.params_to(_F.init_causal_lm_params(vocab, num_layers, config, np.random.default_rng(seed)), _BACKEND)


def params_from(params: Any) -> Any:
    """A parameter tree of another framework (e.g. `scree.nn.TransformerBlock(...).params()`) as
    mlx arrays."""
    return _F.params_to(params, _BACKEND)

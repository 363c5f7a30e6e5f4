"""scree._connect: the framework glue, in one place above the kernels layer (awkward's _connect is
the model): the torch custom ops and autograd (torch.py), the JAX XLA FFI calls and custom_vjp
(jax.py) and the JAX pytree registration (jax_pytree.py), the MLX custom_function (mlx.py), and the
plain NumPy calls (numpy.py). Each glue module imports its framework and is loaded only for arrays
of that framework (`glue`), so importing this package imports no framework.

Every glue module provides the same two functions:
    serves(q, v) -> bool                    whether a compiled kernel takes these q, v values
    varlen_attention(q, k, v, spec) -> (out values, lse)   for scree.Arrays and an AttentionSpec
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from scree import _backends

__all__ = ["glue"]

_GLUE: dict[str, ModuleType] = {}


def glue(ns: ModuleType) -> ModuleType:
    """The glue module of backend namespace `ns` (imported on first use)."""
    mod = _GLUE.get(ns.name)  # a plain dict hit after the first import: torch.compile traces it
    if mod is None:
        mod = _GLUE[ns.name] = importlib.import_module(f"scree._connect.{ns.name}")
    return mod


def _register_jax_pytree(ns: ModuleType) -> None:
    importlib.import_module("scree._connect.jax_pytree")


# scree.Array becomes a JAX pytree as soon as scree meets JAX (the backend namespace loads); if jax
# was imported before scree, at `import scree` (sys.modules only: this imports nothing new).
_backends.on_load("jax", _register_jax_pytree)
if "jax" in sys.modules:
    _backends.get("jax")

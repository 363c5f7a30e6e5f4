"""scree._connect: the framework glue, in one place above the kernels layer (awkward's _connect is
the model): the torch custom ops and autograd of attention (torch.py) and the custom ops that let
torch.compile trace selections of data-dependent size (torch_selections.py), the JAX XLA FFI calls and custom_vjp
(jax.py) and the JAX pytree registration (jax_pytree.py), scree's CPU kernels on torch's OpenMP
workers (torch_openmp.py), the MLX custom_function (mlx.py), and the
plain NumPy calls (numpy.py). Each glue module imports its framework and is loaded only for arrays
of that framework (`glue`), so importing this package imports no framework.

Every glue module provides the same two functions:
    serves(q, v) -> bool                    whether a compiled kernel takes these q, v values
    varlen_attention(q, k, v, spec, with_lse) -> (out values, lse)   for scree.Arrays and an
        AttentionSpec; lse may be None when not with_lse (the glue then need not compute it)
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from scree import _backends

__all__ = ["glue"]

_GLUE: dict[str, ModuleType] = {}


def glue(ns: ModuleType) -> ModuleType:
    """The glue module of backend namespace `ns`. Loaded with the namespace (below), so this is a
    plain dict hit, which torch.compile traces (an import inside a traced call it cannot)."""
    mod = _GLUE.get(ns.name)
    if mod is None:
        mod = _load(ns)
    return mod


def _load(ns: ModuleType) -> ModuleType:
    mod = _GLUE[ns.name] = importlib.import_module(f"scree._connect.{ns.name}")
    if ns.name == "jax":  # scree.Array becomes a pytree as soon as scree meets JAX
        importlib.import_module("scree._connect.jax_pytree")
    if ns.name == "torch":  # the custom ops torch.compile traces selections of data-dependent size with
        ns.provide_traced_selections(importlib.import_module("scree._connect.torch_selections"))
        importlib.import_module("scree._connect.torch_openmp")  # CPU kernels on torch's OpenMP workers
    return mod


# Each backend's glue loads with its namespace, when scree first meets that framework; if jax was
# imported before scree, at `import scree` (sys.modules only: this imports nothing new).
for _name in _backends.names():
    _backends.on_load(_name, _load)
if "jax" in sys.modules:
    _backends.get("jax")

"""Backend detection and lookup: the bottom layer of scree's Python side. Each backend is one small
module (numpy.py, torch.py, jax.py, mlx.py) of array primitives with the same names and meaning,
written down once as the typed Protocol in protocol.py; everything above this package is written
once against that namespace. Frameworks are detected through `sys.modules` only (array-api-compat's
habit), so scree never imports a framework the user has not imported. Layers above that must act
when a backend is first loaded (the JAX pytree registration in scree._connect) say so with
`on_load`, so this package never imports upwards."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, Callable

from scree._errors import BackendError

__all__ = ["get", "of", "common", "names", "on_load"]

_MODULES = {"numpy": "scree._backends.numpy", "torch": "scree._backends.torch",
            "jax": "scree._backends.jax", "mlx": "scree._backends.mlx"}


def names() -> tuple[str, ...]:
    """Names of the backends scree knows."""
    return tuple(_MODULES)


_LOADED: dict[str, ModuleType] = {}
_ON_LOAD: dict[str, list[Callable[[ModuleType], None]]] = {}


def on_load(name: str, hook: Callable[[ModuleType], None]) -> None:
    """Call hook(namespace) when backend `name` is first loaded (at once if it already is)."""
    _ON_LOAD.setdefault(name, []).append(hook)
    if name in _LOADED:
        hook(_LOADED[name])


def get(name: str) -> ModuleType:
    """The backend namespace called `name` ('numpy', 'torch', 'jax', 'mlx'); importing it imports
    that framework (call it only when the user asked for that framework)."""
    # A plain dict hit after the first import: torch.compile (dynamo) can trace it, not importlib.
    mod = _LOADED.get(name)
    if mod is not None:
        return mod
    try:
        path = _MODULES[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(_MODULES)}") from None
    mod = _LOADED[name] = importlib.import_module(path)
    for hook in _ON_LOAD.get(name, ()):
        hook(mod)
    return mod


# Backend by array type, once a type has been seen: `of` runs several times per scree call (each
# Array built, each argument checked), and the module-name test below cost ~4 us a call on an H200
# host (benchmarks/NOTES.md).
_BY_TYPE: dict[type, ModuleType] = {}


def of(x: Any) -> ModuleType:
    """The backend namespace owning native array `x`; BackendError for anything else."""
    be = _BY_TYPE.get(type(x))
    if be is None:
        be = _BY_TYPE[type(x)] = _of_type(x)
    return be


def _of_type(x: Any) -> ModuleType:
    mod = type(x).__module__.split(".", 1)[0]
    if mod == "numpy":
        return get("numpy")
    if mod == "torch" and "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
        return get("torch")
    # jax.Array values are jaxlib objects; tracers (inside jit/grad/vmap) are jax objects.
    if mod in ("jax", "jaxlib") and "jax" in sys.modules and isinstance(x, sys.modules["jax"].Array):
        return get("jax")
    if mod == "mlx" and "mlx.core" in sys.modules and isinstance(x, sys.modules["mlx.core"].array):
        return get("mlx")
    raise BackendError(
        "expected a NumPy array, torch.Tensor, jax.Array or mlx.core.array, got "
        f"{type(x).__module__}.{type(x).__qualname__}"
    )


def common(**arrays: Any) -> ModuleType:
    """The one backend shared by all named arrays (None values are ignored); BackendError naming
    the culprits when frameworks or devices differ. A device reported as None (a JAX tracer inside
    jit, whose placement XLA decides) matches any device."""
    found: list[tuple[str, ModuleType, str]] = []
    for name, x in arrays.items():
        if x is None:
            continue
        be = of(x)
        found.append((name, be, be.device(x)))
    if not found:
        raise BackendError("no arrays given")
    first_name, first_be, first_dev = found[0]
    for name, be, dev in found[1:]:
        if be is not first_be:
            raise BackendError(
                f"{name} is a {be.name} array but {first_name} is a {first_be.name} array; "
                f"convert one with scree.Array.to() or the framework first"
            )
        if dev != first_dev and dev is not None and first_dev is not None:
            raise BackendError(f"{name} is on {dev} but {first_name} is on {first_dev}")
    return first_be

"""scree: variable-length (ragged) tensors as a first-class type.

``scree.Array(values, offsets)`` is the same object over NumPy arrays, torch tensors, JAX arrays
and MLX arrays; its layout is validated once in C++ and its layout operations run on compiled C++
kernels on the host (NumPy, torch CPU) and as framework ops elsewhere. ``import scree`` imports no
framework: a framework is only touched once you hand scree one of its arrays.

With JAX, ``scree.Array`` is a pytree (registered when scree first sees a JAX array, or at
``import scree`` if jax was imported before): it passes through ``jax.jit``, ``jax.grad`` and
``jax.vmap``. An Array built from NumPy data only and handed to jax.jit before scree ever saw jax
needs ``arr.to("jax")`` first (which registers it too).

Layers, each importing only those below it: _backends (array primitives) < _layout < _array, _elementwise <
kernels (reference, layout dispatch, attention plan and calls) < _connect (framework glue) <
_construct, _combine, _attention, _paged_attention (the public functions) < bridges, nn, integrations.
_paged (the paged KV cache type) sits beside _array; _host_cache (the host memory kept for reuse)
beside _C, the only module it imports.
"""

from scree._array import Array
from scree._attention import varlen_attention, varlen_attention_backward
from scree._paged import PagedKV
from scree._paged_attention import paged_attention
from scree._construct import from_cu_seqlens, from_lengths, from_offsets, from_padded, pack, unpack
from scree._combine import cat, concat_sequences
from scree._host_cache import empty_host_cache, host_cache_info
from scree._errors import (
    ArgumentError,
    BackendError,
    DeviceError,
    DTypeError,
    OutOfMemoryError,
    RaggedError,
    ScreeError,
    ShapeError,
    UnsupportedError,
)

__version__ = "0.1.0"

# Subpackages reachable as attributes after `import scree` (scree.bridges.from_arrow, scree.nn,
# scree.integrations, scree.data, scree.distributed), imported on first use: scree.nn builds torch modules, so
# importing it eagerly would import torch (PEP 562 module __getattr__).
_LAZY_SUBPACKAGES = ("bridges", "data", "distributed", "integrations", "nn")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        import importlib

        return importlib.import_module(f"scree.{name}")
    raise AttributeError(f"module 'scree' has no attribute {name!r}")

__all__ = [
    "Array", "pack", "unpack", "from_offsets", "from_lengths", "from_cu_seqlens", "from_padded",
    "cat",
    "concat_sequences",
    "ScreeError", "RaggedError", "ShapeError", "DTypeError", "UnsupportedError", "ArgumentError",
    "BackendError", "DeviceError", "OutOfMemoryError", "varlen_attention", "varlen_attention_backward",
    "PagedKV", "paged_attention", "host_cache_info", "empty_host_cache", "__version__",
]

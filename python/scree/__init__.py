"""scree: variable-length (ragged) tensors as a first-class type.

``scree.Array(values, offsets)`` is the same object over NumPy arrays and torch tensors; its
layout is validated once in C++ and its layout operations run on compiled C++ kernels on the
host. ``import scree`` imports no framework: torch is only touched once you hand scree a tensor.
"""

from scree._array import Array
from scree._construct import from_cu_seqlens, from_lengths, from_offsets, from_padded, pack, unpack
from scree.kernels.attention import varlen_attention, varlen_attention_backward
from scree._errors import (
    ArgumentError,
    BackendError,
    DTypeError,
    RaggedError,
    ScreeError,
    ShapeError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "Array", "pack", "unpack", "from_offsets", "from_lengths", "from_cu_seqlens", "from_padded",
    "ScreeError", "RaggedError", "ShapeError", "DTypeError", "UnsupportedError", "ArgumentError",
    "BackendError", "varlen_attention", "varlen_attention_backward", "__version__",
]

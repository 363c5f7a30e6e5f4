"""torch.nested jagged tensors <-> scree.Array, zero-copy: a jagged nested tensor is exactly
(values, offsets). torch is imported inside the functions, so `import scree` stays framework-free."""

from __future__ import annotations

from typing import Any

import numpy as np

from scree._array import Array
from scree._construct import pack
from scree._errors import BackendError, UnsupportedError

__all__ = ["to_torch_nested", "from_torch_nested"]


def to_torch_nested(arr: Array) -> Any:
    """A torch.jagged nested tensor sharing arr's values and offsets (torch arrays: zero-copy;
    NumPy arrays are brought over through DLPack first, also zero-copy on the CPU)."""
    import torch

    t = arr if arr.backend == "torch" else arr.to("torch")
    offsets = t.offsets if t.offsets.dtype == torch.int64 else t.offsets.to(torch.int64)
    lengths = np.diff(t.host_offsets)
    # Passing the host-side min/max spares torch a device sync to compute them.
    return torch.nested.nested_tensor_from_jagged(t.values, offsets=offsets, max_seqlen=t.max_length,
                                                  min_seqlen=int(lengths.min()) if lengths.size else 0)


def from_torch_nested(nt: Any) -> Array:
    """Array from a nested tensor: jagged layout zero-copy (values(), offsets()); strided layout
    by packing its components (a copy)."""
    import torch

    if not isinstance(nt, torch.Tensor) or not nt.is_nested:
        raise BackendError(f"expected a torch nested tensor, got {type(nt).__qualname__}")
    if nt.layout == torch.jagged:
        if nt._lengths is not None:
            raise UnsupportedError("jagged nested tensors with holes (lengths != diff(offsets)) are not supported; "
                                   "call .contiguous() first")
        if getattr(nt, "_ragged_idx", 1) != 1:
            raise UnsupportedError("only nested tensors ragged in dimension 1 map onto scree.Array")
        return Array(nt.values(), nt.offsets())
    return pack(list(nt.unbind()))

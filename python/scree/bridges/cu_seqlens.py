"""FlashAttention-style varlen arguments: (values, cu_seqlens int32, max_seqlen) <-> scree.Array,
and packed batches described by position_ids that restart at 0 (HF DataCollatorWithFlattening)."""

from __future__ import annotations

from typing import Any

import numpy as np

from scree import _backends
from scree._array import Array, checked_values
from scree._construct import from_cu_seqlens
from scree._errors import ArgumentError, DTypeError, RaggedError, ShapeError
from scree._layout import offsets_from_lengths

__all__ = ["to_cu_seqlens", "from_cu_seqlens", "cu_seqlens_from_lengths", "from_position_ids"]


def to_cu_seqlens(arr: Array) -> tuple[Any, int]:
    """(cu_seqlens int32 on the values' device, max_seqlen host int): what flash_attn_varlen_func takes."""
    return arr.cu_seqlens(), arr.max_length


def cu_seqlens_from_lengths(lengths: Any) -> tuple[Any, int]:
    """(cu_seqlens int32, max_seqlen) from per-sequence lengths (a native int array of any backend)."""
    ns = _backends.of(lengths)
    offsets, host, longest = offsets_from_lengths(ns, lengths, like=lengths)
    if host[-1] > np.iinfo(np.int32).max:  # (the cast wrapped silently)
        raise ArgumentError(f"sum(lengths) = {int(host[-1])} tokens does not fit int32 cu_seqlens")
    return ns.astype(offsets, "int32"), longest


def from_position_ids(values: Any, position_ids: Any) -> Array:
    """Array from a packed row whose position_ids restart at 0 at each sequence start (shape
    (total,) or (1, total)). A sequence must count 0, 1, 2, ... without gaps."""
    ns = _backends.common(values=values, position_ids=position_ids)
    checked_values(ns, values)
    if not ns.is_integer(position_ids):
        raise DTypeError(f"position_ids must be integers, got {ns.dtype_name(position_ids)}")
    shape = tuple(ns.shape(position_ids))
    if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)):
        raise ShapeError(f"position_ids must have shape (total,) or (1, total) (one packed row), got {shape}")
    pos = np.asarray(ns.to_numpy(position_ids)).reshape(-1).astype(np.int64)
    if pos.shape[0] != ns.shape(values)[0]:
        raise ShapeError(f"position_ids has {pos.shape[0]} entries but values has shape {ns.shape(values)}")
    starts = np.flatnonzero(pos == 0)
    if pos.size and (starts.size == 0 or starts[0] != 0):
        raise RaggedError("position_ids must start at 0 (the first token begins a sequence)")
    host = np.append(starts, pos.size).astype(np.int64)
    expected = np.arange(pos.size) - np.repeat(host[:-1], np.diff(host))
    bad = np.flatnonzero(pos != expected)
    if bad.size:
        raise RaggedError(f"position_ids must count 0, 1, 2, ... within each sequence; index {int(bad[0])} "
                          f"has {int(pos[bad[0]])}, expected {int(expected[bad[0]])}")
    return Array._trusted(values, ns.from_numpy(host, like=values), host, int(np.diff(host).max(initial=0)))

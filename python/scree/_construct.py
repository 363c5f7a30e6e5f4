"""Constructors of scree.Array: pack, from_offsets, from_lengths, from_cu_seqlens, from_padded,
and unpack. Lengths and offsets are turned into a layout by the C++ core (one validation)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scree import _backends
from scree._array import Array, checked_values
from scree._backends import dtypes
from scree._errors import ArgumentError, BackendError, DTypeError, RaggedError, ShapeError
from scree._layout import host_lengths, offsets_from_lengths
from scree.kernels import layout, reference

__all__ = ["pack", "unpack", "from_offsets", "from_lengths", "from_cu_seqlens", "from_padded"]


def from_offsets(values: Any, offsets: Any, validate: bool = True) -> Array:
    """Array over `values` `(total, *feature)` split at `offsets` (n+1). Zero-copy."""
    return Array(values, offsets, validate=validate)


def from_lengths(values: Any, lengths: Any) -> Array:
    """Array over `values` split into consecutive sequences of the given lengths. Zero-copy."""
    ns = _backends.of(values)
    if ns.owns(lengths):
        _backends.common(values=values, lengths=lengths)
    checked_values(ns, values)
    if ns.is_tracing():
        return Array._trusted(values, _traced_offsets(ns, values, lengths))
    offsets, host, longest = offsets_from_lengths(ns, lengths, like=values)
    if ns.shape(values)[0] != host[-1]:
        raise RaggedError(f"sum(lengths) = {int(host[-1])} must equal values.shape[0] "
                          f"(values has shape {tuple(ns.shape(values))})")
    return Array._trusted(values, offsets, host, longest)


def _traced_offsets(ns: Any, values: Any, lengths: Any) -> Any:
    """from_lengths' offsets while torch.compile traces: Python int lengths are constants of the
    trace and checked here; a length tensor's values cannot be (like offsets built in a compiled
    region, see README)."""
    if ns.owns(lengths):
        if not ns.is_integer(lengths) or len(ns.shape(lengths)) != 1:
            raise DTypeError(f"lengths must be a 1-D integer array, got {ns.dtype_name(lengths)} of shape "
                             f"{tuple(ns.shape(lengths))}")
    else:
        lengths = list(lengths)
        if not all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in lengths):
            raise DTypeError("lengths must be integers")
        bad = next((i for i, x in enumerate(lengths) if x < 0), None)
        if bad is not None:
            raise RaggedError(f"lengths[{bad}] = {lengths[bad]} is negative")
        if sum(lengths) != ns.shape(values)[0]:
            raise RaggedError(f"sum(lengths) = {sum(lengths)} must equal values.shape[0] "
                              f"(values has shape {tuple(ns.shape(values))})")
    return reference.offsets_on_device(ns, lengths, values)


def from_cu_seqlens(values: Any, cu_seqlens: Any, max_seqlen: int | None = None,
                    validate: bool = True) -> Array:
    """Array over FlashAttention-style `values` (total, ...) and `cu_seqlens` (int32, n+1), zero-copy:
    the Array's offsets *are* cu_seqlens. No device synchronisation either way: on a GPU the check
    runs there (see scree.Array). A max_seqlen below the longest sequence raises
    scree.ArgumentError naming max_seqlen (on a GPU: at the next scree call after the check ran);
    an upper bound is kept, as FlashAttention takes it."""
    if not validate:
        return Array._unchecked(values, cu_seqlens, max_seqlen, "max_seqlen")
    return Array._checked(values, cu_seqlens, max_seqlen, "max_seqlen")


def pack(sequences: Sequence[Any]) -> Array:
    """Pack a list of native arrays `(len_i, *feature)` of one backend, device and dtype."""
    seqs = list(sequences)
    if not seqs:
        raise ArgumentError("pack needs at least one sequence to know the dtype and feature shape")
    first = seqs[0]
    ns = _backends.of(first)
    # One cheap pass over attributes every backend's arrays have; the per-backend check with its
    # message only on a mismatch (per-sequence overhead dominated packs of many short sequences).
    kind, dev, dt = type(first), ns.device(first), first.dtype
    if any(type(s) is not kind or ns.device(s) != dev for s in seqs):
        for i, s in enumerate(seqs):
            if s is None:  # (common() ignores None, as optional arguments)
                raise BackendError(f"sequences[{i}] is None; every sequence must be a {ns.name} array")
        _backends.common(**{f"sequences[{i}]": s for i, s in enumerate(seqs)})
    shapes = [tuple(s.shape) for s in seqs]
    feat = shapes[0][1:]
    for i, (shape, s) in enumerate(zip(shapes, seqs)):
        if len(shape) < 1:
            raise ShapeError(f"sequences[{i}] is 0-D; each sequence needs shape (length, *feature)")
        if shape[1:] != feat:
            raise ShapeError(f"sequences[{i}] has feature shape {shape[1:]}, sequences[0] has {feat}")
        if s.dtype != dt:
            raise DTypeError(f"sequences[{i}] has dtype {ns.dtype_name(s)}, sequences[0] has {ns.dtype_name(first)}")
    checked_values(ns, first, "sequences[0]")
    if ns.is_tracing():  # torch.compile: offsets from the trace's shapes, on the device
        return reference.pack_on_device(seqs)
    lengths = np.fromiter((shape[0] for shape in shapes), dtype=np.int64, count=len(shapes))
    return layout.pack(ns, seqs, lengths)


def unpack(arr: Array) -> list[Any]:
    """The sequences of `arr` as a list of native views (zero-copy)."""
    return arr.unpack()


def from_padded(padded: Any, mask: Any = None, lengths: Any = None, padding_side: str = "right") -> Array:
    """Array from padded `(n, L, *feature)` plus a mask (n, L; tokens where true/nonzero, taken in
    order, so left and right padding both work) or lengths (n,) with padding on `padding_side`.
    Without either, every row is L tokens long."""
    if mask is not None and lengths is not None:
        raise ArgumentError("give mask or lengths to from_padded, not both")
    ns = _backends.common(padded=padded, mask=mask)
    shape = ns.shape(padded)
    if len(shape) < 2:
        raise ShapeError(f"padded must have shape (n, max_len, *feature), got {shape}")
    dtypes.checked_dtype(ns, padded, "padded")
    if mask is not None and ns.shape(mask) != shape[:2]:
        raise ShapeError(f"mask shape {ns.shape(mask)} must equal padded.shape[:2] = {shape[:2]}")
    if lengths is not None:  # checked before the result is allocated from them
        lengths = host_lengths(ns, lengths)
        if len(lengths) != shape[0] or (lengths.size and lengths.max() > shape[1]):
            raise ShapeError(f"lengths (n={len(lengths)}, longest={int(lengths.max(initial=0))}) do not fit padded "
                             f"of shape {tuple(shape)}")
    return layout.from_padded(ns, padded, mask, lengths, padding_side)

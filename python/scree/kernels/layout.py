"""Dispatch of the layout operations: host arrays (NumPy, torch CPU) go to the compiled C++
kernels in scree._C, zero-copy; anything else (torch CUDA, tensors that need autograd) runs the
reference in scree.kernels.reference with the framework's own ops. Outputs are allocated here in
the caller's framework, so the C++ side never needs to know which framework it serves."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from scree import _array, _backends, _C
from scree._array import Array
from scree._errors import ArgumentError, ShapeError
from scree._layout import offsets_from_lengths
from scree.kernels import reference

# dtypes the C++ reductions are instantiated for (src/cpu/reduce.cpp).
_REDUCE_DTYPES = {"float16", "bfloat16", "float32", "float64", "int32", "int64"}


def _native(ns: ModuleType, *arrays: Any) -> bool:
    """Whether the C++ kernels take these arrays: host memory, no autograd graph to extend, and not
    while torch.compile traces (it cannot trace into scree._C; the reference's torch ops it can)."""
    return all(ns.is_host(x) and not ns.needs_autograd(x) for x in arrays if x is not None) and not ns.is_tracing()


def _host_int64(ns: ModuleType, host: np.ndarray, like: Any) -> Any:
    return ns.from_numpy(host, like=like)


# Below this many bytes per sequence, handing each array to C++ (~1.3 us a torch tensor for its
# NumPy view, more through DLPack; benchmarks/NOTES.md) costs more than the copy: the framework's
# own concatenation wins, where the arrays' addresses cannot be passed instead.
_PACK_MIN_BYTES_PER_SEQUENCE = 64 << 10


def pack(ns: ModuleType, seqs: Sequence[Any], lengths: np.ndarray) -> Array:
    """seqs: checked by the caller (one backend, device, dtype, feature shape); lengths: their rows."""
    first = seqs[0]
    # One device (the caller checked): the first tells host or not; autograd asks of every one.
    if not ns.is_host(first) or ns.is_tracing() or any(ns.needs_autograd(s) for s in seqs):
        return reference.pack(seqs, lengths)
    # By address (torch): ~0.2 us a sequence where its NumPy view cost ~1.3; 16k sequences of
    # 1..64 tokens x 64 floats: 83-84 -> 41-48 ms, torch.cat 64-66 (NOTES.md, issue 20 step 8).
    by_address = all(ns.by_address(s) for s in seqs)
    if not by_address:
        row_bytes = int(np.prod(ns.shape(first)[1:], dtype=np.int64)) * ns.itemsize(first)
        if len(seqs) > 16 and int(lengths.sum()) * row_bytes < _PACK_MIN_BYTES_PER_SEQUENCE * len(seqs):
            return reference.pack(seqs, lengths)
    host = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=host[1:])
    out = ns.empty((int(host[-1]), *ns.shape(first)[1:]), ns.dtype_name(first), like=first)
    if by_address:
        _C.pack_addresses(np.fromiter((ns.data_ptr(s) for s in seqs), dtype=np.int64, count=len(seqs)), host, out)
    else:
        _C.pack([ns.host_view(s) for s in seqs], host, out)
    return Array._trusted(out, _host_int64(ns, host, first), host, int(lengths.max(initial=0)))


def gather(arr: Array, index: Any) -> Array:
    ns = arr._ns
    if ns.is_tracing():
        return _gather_traced(arr, index)
    idx = np.asarray(ns.to_numpy(index) if ns.owns(index) else index)
    if idx.dtype == np.bool_:
        if idx.shape != (arr.num_sequences,):
            raise ShapeError(f"boolean sequence mask must have shape ({arr.num_sequences},), got {idx.shape}")
        idx = np.flatnonzero(idx)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ArgumentError(f"sequence indices must be integers, slices or a boolean mask, got {idx.dtype}")
    n = arr.num_sequences
    idx = np.ascontiguousarray(idx.reshape(-1), dtype=np.int64)
    bad = np.flatnonzero((idx < -n) | (idx >= n))
    if bad.size:
        raise IndexError(f"sequence index {int(idx[bad[0]])} (at position {int(bad[0])}) out of range for {n} sequences")
    # (numpy's contiguous: an empty index list must still reach the C++ kernel with row-major strides)
    idx = _backends.get("numpy").contiguous(np.where(idx < 0, idx + n, idx))
    if not _native(ns, arr.values):
        return reference.gather(arr, idx)
    out_host = np.empty(len(idx) + 1, dtype=np.int64)
    _C.gather_offsets(arr.host_offsets, idx, out_host)
    values = ns.contiguous(arr.values)
    out = ns.empty((int(out_host[-1]), *arr.feature_shape), ns.dtype_name(values), like=values)
    _C.gather(values, arr.host_offsets, idx, out_host, out)
    lens = np.diff(out_host)
    return Array._trusted(out, _host_int64(ns, out_host, arr.offsets), out_host, int(lens.max(initial=0)))


def _gather_traced(arr: Array, index: Any) -> Array:
    """gather while torch.compile traces: the index as a device array, no host offsets. A list of
    ints is checked here (its values are constants of the trace); a traced index tensor cannot be,
    and indexes the offsets as the framework does (IndexError on the CPU, a device assert on CUDA)."""
    ns, n = arr._ns, arr.num_sequences
    if isinstance(index, range):
        index = list(index)
    if isinstance(index, (list, tuple)):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in index):
            raise ArgumentError("sequence indices must be ints while torch.compile traces (a list of ints, or an "
                                "integer or boolean tensor)")
        for pos, i in enumerate(index):
            if i < -n or i >= n:
                raise IndexError(f"sequence index {i} (at position {pos}) out of range for {n} sequences")
        index = ns.asarray([i % n for i in index] if index else [], dtype="int64", like=arr.offsets)
    elif ns.owns(index) and ns.dtype_name(index) == "bool":
        if tuple(ns.shape(index)) != (n,):
            raise ShapeError(f"boolean sequence mask must have shape ({n},), got {tuple(ns.shape(index))}")
        index = ns.true_rows(index)
    elif ns.owns(index) and ns.is_integer(index):
        index = ns.astype(index.reshape(-1), "int64")
        index = ns.where(index < 0, index + n, index)
    else:
        raise ArgumentError(f"sequence indices must be ints, an integer or boolean tensor, got {type(index).__name__}")
    return reference.gather_on_device(arr, index)


def _index_kernel(arr: Array, dtype: str, kernel: Any, ref: Any) -> Any:
    ns = arr._ns
    if dtype not in ("int32", "int64"):
        raise ArgumentError(f"dtype must be 'int32' or 'int64', got {dtype!r}")
    if not _native(ns, arr.values):
        return ref(arr, dtype)
    out = ns.empty((arr.total,), dtype, like=arr.values)
    kernel(arr.host_offsets, out)
    return out


def positions(arr: Array, dtype: str) -> Any:
    return _index_kernel(arr, dtype, _C.positions, reference.positions)


def segment_ids(arr: Array, dtype: str) -> Any:
    return _index_kernel(arr, dtype, _C.segment_ids, reference.segment_ids)


def to_padded(arr: Array, pad_value: Any, padding_side: str, max_length: int | None) -> tuple[Any, Any]:
    ns = arr._ns
    if not _native(ns, arr.values):
        return reference.to_padded(arr, pad_value, padding_side, max_length)
    left = reference._padding_side(padding_side)
    length = arr._padded_length(max_length)  # checked against the longest sequence
    values = ns.contiguous(arr.values)
    dt = ns.dtype_name(values)
    padded = ns.empty((arr.num_sequences, length, *arr.feature_shape), dt, like=values)
    mask = ns.empty((arr.num_sequences, length), "bool", like=values)
    _C.pad(values, arr.host_offsets, padded, mask, ns.full((1,), pad_value, dt, like=values), left)
    return padded, mask


def from_padded(ns: ModuleType, padded: Any, mask: Any, lengths: Any, padding_side: str) -> Array:
    if not _native(ns, padded, mask):
        return reference.from_padded(padded, mask, lengths, padding_side)
    left = reference._padding_side(padding_side)
    shape = ns.shape(padded)  # rank, mask shape and lengths checked by scree.from_padded
    n, length = shape[:2]
    padded = ns.contiguous(padded)
    if mask is not None:
        mask = ns.contiguous(mask if ns.dtype_name(mask) == "bool" else mask != 0)
        host = np.empty(n + 1, dtype=np.int64)
        _C.mask_offsets(mask, host)
        values = ns.empty((int(host[-1]), *shape[2:]), ns.dtype_name(padded), like=padded)
        _C.unpad_mask(padded, mask, host, values)
    else:
        if lengths is None:
            lengths = np.full(n, length, dtype=np.int64)
        _, host, _ = offsets_from_lengths(ns, lengths, like=padded)
        values = ns.empty((int(host[-1]), *shape[2:]), ns.dtype_name(padded), like=padded)
        _C.unpad(padded, host, values, left)
    lens = np.diff(host)
    return Array._trusted(values, _host_int64(ns, host, padded), host, int(lens.max(initial=0)))


# Reductions with a C++ kernel (src/cpu/reduce.cpp, softmax.cpp; var / std: segment_var); the others
# compose those in the reference (any / all / argmax / argmin: a few framework ops over the segments).
_CPP_REDUCTIONS = {"sum", "mean", "max", "min", "prod", "logsumexp"}
_FLOATS = {"float16", "bfloat16", "float32", "float64"}


def reduce(arr: Array, op: str, ddof: int = 0) -> Any:
    ns = arr._ns
    dt = ns.dtype_name(arr.values)
    if op in ("var", "std") and _native(ns, arr.values) and dt in _FLOATS:
        values = ns.contiguous(arr.values)
        out = ns.empty((arr.num_sequences, *arr.feature_shape), dt, like=values)
        _C.segment_var(values, arr.host_offsets, out, ddof, op == "std")
        return out
    if op not in _CPP_REDUCTIONS or not _native(ns, arr.values) or dt not in _REDUCE_DTYPES:
        return reference.reduce(arr, op, ddof)
    values = ns.contiguous(arr.values)
    out_dt = "int64" if (op in ("sum", "prod") and ns.is_integer(values)) else dt
    out = ns.empty((arr.num_sequences, *arr.feature_shape), out_dt, like=values)
    _C.segment_reduce(values, arr.host_offsets, out, op)
    return out


def softmax(arr: Array, log: bool) -> Array:
    ns = arr._ns
    if not _native(ns, arr.values) or ns.dtype_name(arr.values) not in _FLOATS:
        return reference.softmax(arr, log)
    values = ns.contiguous(arr.values)
    out = ns.empty(ns.shape(values), ns.dtype_name(values), like=values)
    _C.segment_softmax(values, arr.host_offsets, out, log)
    return arr.with_values(out)


def concat_sequences(ns: ModuleType, arrays: Sequence[Array]) -> Array:
    """Sequence i of the result = arrays[0][i] ++ arrays[1][i] ++ ... (checked by the caller:
    same backend, sequence count, dtype and feature shape). Host arrays: one C++ pack over the
    non-empty row ranges in output order; elsewhere the reference."""
    if not _native(ns, *(a.values for a in arrays)):
        return reference.concat_sequences(arrays)
    hosts = [a.host_offsets for a in arrays]
    lens = np.stack([np.diff(h) for h in hosts])  # (k, n)
    out_host = np.zeros(lens.shape[1] + 1, dtype=np.int64)
    np.cumsum(lens.sum(axis=0), out=out_host[1:])
    # piece (i, j) = rows hosts[j][i]:hosts[j][i+1] of arrays[j], in order i-major; empties dropped.
    seq, src = np.nonzero(lens.T)
    row_bytes = int(np.prod(arrays[0].feature_shape, dtype=np.int64)) * ns.itemsize(arrays[0].values)
    if len(seq) > 16 and int(out_host[-1]) * row_bytes < _PACK_MIN_BYTES_PER_SEQUENCE * len(seq):
        return reference.concat_sequences(arrays)  # many short pieces: one scatter beats per-piece binding
    values = [ns.host_view(a.values) for a in arrays]
    starts = np.stack(hosts)[src, seq]
    ends = starts + lens[src, seq]
    pieces = [values[j][int(a):int(b)] for j, a, b in zip(src.tolist(), starts.tolist(), ends.tolist())]
    piece_offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=piece_offsets[1:])
    first = arrays[0].values
    out = ns.empty((int(out_host[-1]), *arrays[0].feature_shape), ns.dtype_name(first), like=first)
    _C.pack(pieces, piece_offsets, out)
    lengths = np.diff(out_host)
    return Array._trusted(out, _host_int64(ns, out_host, arrays[0].offsets), out_host, int(lengths.max(initial=0)))


def cumsum(arr: Array) -> Array:
    ns = arr._ns
    dt = ns.dtype_name(arr.values)
    if not _native(ns, arr.values) or dt not in _REDUCE_DTYPES:
        return reference.cumsum(arr)
    values = ns.contiguous(arr.values)
    out = ns.empty(ns.shape(values), dt if dt in _FLOATS else "int64", like=values)
    _C.segment_cumsum(values, arr.host_offsets, out)
    return arr.with_values(out)


# Token-level indexing: one gather of rows by a host index (reference), a single framework op on
# every backend; the C++ pack (as concat_sequences) only pays past ~64 KiB a piece, which these
# rarely reach.
# Token selection: from the host offsets (one gather by a host index), or, while torch.compile
# traces (no host offsets to read), from the device offsets with a symbolic result size.
def slice_tokens(arr: Array, start: int | None, stop: int | None) -> Array:
    if arr._ns.is_tracing():
        return reference.slice_tokens_on_device(arr, start, stop)
    return reference.slice_tokens(arr, start, stop)


def truncate(arr: Array, max_length: int, side: str) -> Array:
    if arr._ns.is_tracing():
        return reference.truncate_on_device(arr, max_length, side)
    return reference.truncate(arr, max_length, side)


def filter_tokens(arr: Array, mask: Any) -> Array:
    ns = arr._ns
    if ns.is_tracing():
        if not ns.owns(mask) or ns.dtype_name(mask) != "bool" or tuple(ns.shape(mask)) != (arr.total,):
            raise ShapeError(f"filter needs a boolean mask of shape ({arr.total},) (one per token) of the values' "
                             f"framework while torch.compile traces, got {type(mask).__name__}")
        return reference.filter_tokens_on_device(arr, mask)
    return reference.filter_tokens(arr, mask)


# Array's per-sequence methods (arr.positions(), arr.sum(), arr[[0, 2]], ...) run these.
_array.provide_layout_ops(sys.modules[__name__])

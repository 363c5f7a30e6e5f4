"""The spec: readable reference implementations of every public scree operation, written once
against the backend namespace (scree._backends), so the same code runs on NumPy and torch on any
device. The compiled kernels are tested against these; on devices without a compiled kernel
(torch CUDA today) scree runs these directly, and they never synchronise the device except where
a result's shape depends on data (from_padded)."""

from __future__ import annotations

import contextlib
from itertools import accumulate
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from scree import _backends
from scree._array import Array
from scree._errors import ArgumentError, DTypeError, ShapeError, framework_unsupported
from scree._layout import offsets_from_lengths
from scree.kernels.attention_reference import varlen_attention

__all__ = [
    "pack", "pack_on_device", "offsets_on_device", "gather", "segment_ids", "positions", "to_padded", "from_padded", "reduce",
    "concat_sequences", "elementwise", "expand", "softmax", "cumsum", "REDUCTIONS", "token_range", "slice_tokens",
    "truncate", "filter_tokens", "take_ranges", "slice_tokens_on_device", "truncate_on_device", "gather_on_device",
    "filter_tokens_on_device", "paged_tokens", "paged_attention", "cat", "varlen_attention",
]


def _device_offsets(arr: Array) -> Any:
    return _backends.of(arr.values).astype(arr.offsets, "int64")


def pack(sequences: Sequence[Any], lengths: np.ndarray | None = None) -> Array:
    """Concatenate sequences (each `(len_i, *feature)`) into one Array; `lengths`, when the caller
    has them already, are their row counts."""
    ns = _backends.of(sequences[0])
    if lengths is None:
        lengths = np.array([ns.shape(s)[0] for s in sequences], dtype=np.int64)
    host = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = ns.concat(list(sequences), axis=0)
    return Array._trusted(values, ns.from_numpy(host, like=values), host, int(lengths.max(initial=0)))


def pack_on_device(sequences: Sequence[Any]) -> Array:
    """pack with the offsets made from the row counts on the values' device, no NumPy (what
    torch.compile traces; the counts are the trace's shapes)."""
    ns = _backends.of(sequences[0])
    values = ns.concat(list(sequences), axis=0)
    ends = list(accumulate((ns.shape(s)[0] for s in sequences), initial=0))
    return Array._trusted(values, ns.asarray(ends, dtype="int64", like=values))


def offsets_on_device(ns: ModuleType, lengths: Any, like: Any) -> Any:
    """Offsets (n + 1, int64, on like's device) from lengths given as Python ints or a native
    integer array, without a host read (torch.compile): 0 then the running sum."""
    if ns.owns(lengths):
        return ns.concat([ns.zeros((1,), "int64", like=like), ns.cumsum(ns.astype(lengths, "int64"))])
    return ns.asarray(list(accumulate(lengths, initial=0)), dtype="int64", like=like)


def gather(arr: Array, indices: np.ndarray) -> Array:
    """The sequences `indices` (host int64, already wrapped to [0, n)) as a new Array."""
    h = arr.host_offsets
    return pack([arr.values[int(h[i]):int(h[i + 1])] for i in indices]) if len(indices) else \
        Array._trusted(arr.values[:0], _backends.of(arr.values).zeros((1,), "int64", like=arr.values),
                       np.zeros(1, np.int64), 0)


def segment_ids(arr: Array, dtype: str = "int64") -> Any:
    """Sequence index of each token: i repeated lengths[i] times."""
    ns = _backends.of(arr.values)
    off = _device_offsets(arr)
    ids = ns.repeat(ns.arange(arr.num_sequences, "int64", like=arr.values), off[1:] - off[:-1], arr.total)
    return ns.astype(ids, dtype)


def positions(arr: Array, dtype: str = "int64") -> Any:
    """Index of each token within its sequence: t - offsets[segment_ids[t]]."""
    ns = _backends.of(arr.values)
    off = _device_offsets(arr)
    pos = ns.arange(arr.total, "int64", like=arr.values) - off[segment_ids(arr)]
    return ns.astype(pos, dtype)


def _padding_side(padding_side: str) -> bool:
    if padding_side not in ("right", "left"):
        raise ArgumentError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    return padding_side == "left"


def _padded_slots(arr: Array, length: int, left: bool) -> tuple[Any, Any]:
    """(sequence, slot) coordinates of every token in a (n, length) padded layout."""
    seg = segment_ids(arr)
    pos = positions(arr)
    if left:
        off = _device_offsets(arr)
        pos = pos + (length - (off[1:] - off[:-1]))[seg]
    return seg, pos


def to_padded(arr: Array, pad_value: Any = 0, padding_side: str = "right",
              max_length: int | None = None) -> tuple[Any, Any]:
    """(padded `(n, L, *feature)`, mask (n, L) bool)."""
    ns = _backends.of(arr.values)
    left = _padding_side(padding_side)
    length = arr._padded_length(max_length)  # checked against the longest sequence
    n, dt = arr.num_sequences, ns.dtype_name(arr.values)
    seg, pos = _padded_slots(arr, length, left)
    padded = ns.full((n, length, *arr.feature_shape), pad_value, dt, like=arr.values)
    padded = ns.index_put(padded, (seg, pos), arr.values)
    mask = ns.zeros((n, length), "bool", like=arr.values)
    mask = ns.index_put(mask, (seg, pos), ns.full((arr.total,), True, "bool", like=arr.values))
    return padded, mask


def from_padded(padded: Any, mask: Any = None, lengths: Any = None, padding_side: str = "right") -> Array:
    """Array from padded `(n, L, *feature)` and either a mask (n, L) (tokens where nonzero, any
    pattern, in order) or lengths (n,) with padding on `padding_side`; neither: all L tokens."""
    ns = _backends.of(padded)
    left = _padding_side(padding_side)
    if len(ns.shape(padded)) < 2:
        raise ShapeError(f"padded must have shape (n, max_len, *feature), got {ns.shape(padded)}")
    n, length = ns.shape(padded)[:2]
    if mask is not None:
        mask = mask != 0 if ns.dtype_name(mask) != "bool" else mask
        values = ns.masked_rows(padded, mask)
        counts = ns.sum(ns.astype(mask, "int64"), axis=1)
        offsets = ns.concat([ns.zeros((1,), "int64", like=padded), ns.cumsum(counts)])
        return Array(values, offsets)
    if lengths is None:
        lengths = np.full(n, length, dtype=np.int64)  # host: known without a sync (or a jax.jit trace)
    offsets, host, longest = offsets_from_lengths(ns, lengths, like=padded)
    if len(host) - 1 != n or longest > length:
        raise ShapeError(f"lengths (n={len(host) - 1}, longest={longest}) do not fit padded of shape "
                         f"{tuple(ns.shape(padded))}")
    shell = Array._trusted(ns.empty((int(host[-1]), *ns.shape(padded)[2:]), ns.dtype_name(padded), like=padded),
                           offsets, host, longest)
    seg, pos = _padded_slots(shell, length, left)
    return shell.with_values(padded[seg, pos])


REDUCTIONS = ("sum", "mean", "max", "min", "prod", "any", "all", "logsumexp", "var", "std", "argmax", "argmin")
_FLOAT_ONLY = ("mean", "logsumexp", "var", "std")


def reduce(arr: Array, op: str, ddof: int = 0) -> Any:
    """Per-sequence reduction over tokens -> `(n, *feature)`: one of REDUCTIONS. dtypes: sum and prod
    of bool and integers give int64; mean, logsumexp, var, std need floats; any, all give bool;
    argmax / argmin give int64 positions within the sequence (the first one; a NaN wins, as in
    NumPy). Empty sequences: sum 0, prod 1, mean / var / std NaN, max -inf and min +inf (the lowest
    / highest integer; False / True for bool), any False, all True, logsumexp -inf, argmax /
    argmin -1. var / std divide by length - ddof (NaN where that is <= 0)."""
    ns = _backends.of(arr.values)
    kind = ns.dtype_name(arr.values)
    if op not in REDUCTIONS:
        raise ArgumentError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {op!r}")
    if not (ns.is_floating(arr.values) or ns.is_integer(arr.values) or kind == "bool"):
        # (complex sums came back as int64, silently wrong: NumPy cast them)
        raise DTypeError(f"{op} needs boolean, integer or floating-point values, got {kind}")
    if op in _FLOAT_ONLY and not ns.is_floating(arr.values):
        raise DTypeError(f"{op} needs a floating-point dtype, got {kind}")
    with _quiet(ns), framework_unsupported(f"{op} of {kind} values"):
        return _reduce(ns, arr, op, kind, ddof)


def _quiet(ns: Any) -> Any:
    """NumPy's warnings off where empty sequences' 0/0 and log 0 are the answers (NumPy only:
    torch.compile cannot trace np.errstate, and other frameworks do not warn)."""
    return np.errstate(divide="ignore", invalid="ignore") if ns.name == "numpy" else contextlib.nullcontext()


def _reduce(ns: Any, arr: Array, op: str, kind: str, ddof: int) -> Any:
    v, seg, n, off = arr.values, segment_ids(arr), arr.num_sequences, _device_offsets(arr)
    if op in ("any", "all"):
        b = v if kind == "bool" else v != 0
        hit = ns.segment_reduce(ns.astype(b if op == "any" else ~b, "int8"), seg, n, "max") > 0
        return hit if op == "any" else ~hit
    if op in ("max", "min") and kind == "bool":
        return reduce(arr, "any" if op == "max" else "all")
    if op == "min":  # the order reversed: -x for floats, ~x (two's complement) for integers
        return -ns.segment_reduce(-v, seg, n, "max", off) if ns.is_floating(v) else ~ns.segment_reduce(~v, seg, n, "max")
    if op in ("sum", "prod", "mean", "max"):
        return ns.segment_reduce(ns.astype(v, "int64") if kind == "bool" else v, seg, n, op, off)
    if op in ("argmax", "argmin"):
        return _arg_extreme(arr, op)
    wide = ns.astype(v, "float32") if kind in ("float16", "bfloat16") else v  # 16-bit floats: float32 math
    if op == "logsumexp":
        shift, total = _shifted_sums(ns, wide, seg, n, off)
        return ns.astype(ns.log(total) + shift, kind)
    mean = ns.segment_reduce(wide, seg, n, "mean", off)
    dev = wide - mean[seg]
    count = ns.reshape(ns.astype(arr.lengths, ns.dtype_name(wide)) - ddof, (n,) + (1,) * (len(ns.shape(v)) - 1))
    # length <= ddof: NaN (no degrees of freedom left), not the inf or -0 that the division gives
    var = ns.where(count > 0, ns.segment_reduce(dev * dev, seg, n, "sum", off) / ns.maximum(count, 0 * count + 1),
                   float("nan"))
    return ns.astype(var if op == "var" else var ** 0.5, kind)


def _shifted_sums(ns: Any, x: Any, seg: Any, n: int, off: Any) -> tuple[Any, Any]:
    """(shift, sum(exp(x - shift))) per sequence: shift = the largest value where it is finite,
    else 0 (so a column of -inf sums to 0 and +inf / NaN propagate), as the C++ kernels do."""
    m = ns.segment_reduce(x, seg, n, "max", off)
    shift = ns.where(ns.isfinite(m), m, ns.zeros(tuple(ns.shape(m)), ns.dtype_name(m), like=m))
    return shift, ns.segment_reduce(ns.exp(x - shift[seg]), seg, n, "sum", off)


def _arg_extreme(arr: Array, op: str) -> Any:
    ns = _backends.of(arr.values)
    v, seg, n = arr.values, segment_ids(arr), arr.num_sequences
    x = ns.astype(v, "int8") if ns.dtype_name(v) == "bool" else v
    best = reduce(arr.with_values(x), "max" if op == "argmax" else "min")[seg]
    hit = x == best
    if ns.is_floating(x):
        hit = hit | ((x != x) & (best != best))  # NaN is the extreme, as in NumPy
    rank = len(ns.shape(v))
    pos = ns.reshape(positions(arr), (arr.total,) + (1,) * (rank - 1))
    first = ~ns.segment_reduce(~ns.where(hit, pos, arr.total), seg, n, "max")  # the smallest hit position
    empty = ns.reshape(arr.lengths == 0, (n,) + (1,) * (rank - 1))
    return ns.where(empty, -1, first)


def softmax(arr: Array, log: bool = False) -> Array:
    """Per-sequence softmax over tokens (log_softmax when log), the same shape as arr; floats only,
    16-bit floats computed in float32. A column of -inf gives NaN (0/0, as torch); an empty
    sequence has no rows."""
    ns = _backends.of(arr.values)
    kind = ns.dtype_name(arr.values)
    if not ns.is_floating(arr.values):
        raise DTypeError(f"{'log_softmax' if log else 'softmax'} needs a floating-point dtype, got {kind}")
    seg, n = segment_ids(arr), arr.num_sequences
    x = ns.astype(arr.values, "float32") if kind in ("float16", "bfloat16") else arr.values
    with _quiet(ns):
        shift, total = _shifted_sums(ns, x, seg, n, _device_offsets(arr))
        out = x - shift[seg] - ns.log(total)[seg] if log else ns.exp(x - shift[seg]) / total[seg]
    return arr.with_values(ns.astype(out, kind))


def concat_sequences(arrays: Sequence[Array]) -> Array:
    """Sequence i of the result = arrays[0][i] ++ arrays[1][i] ++ ... : every token moves to row
    out_offsets[seq] + (tokens of seq in the arrays before it) + its position, one scatter of all
    rows. No host sync: the output size is the sum of the inputs' totals, so it also runs traced
    (jax.jit) and differentiates through the scatter."""
    ns = _backends.of(arrays[0].values)
    like = arrays[0].values
    n = arrays[0].num_sequences
    lengths = [ns.astype(a.lengths, "int64") for a in arrays]
    seq_len = lengths[0]
    for l in lengths[1:]:
        seq_len = seq_len + l
    out_offsets = ns.concat([ns.zeros((1,), "int64", like=like), ns.cumsum(seq_len)])
    before = ns.zeros((n,), "int64", like=like)  # tokens of each sequence placed so far
    rows = []
    for a, l in zip(arrays, lengths):
        seg = segment_ids(a)
        rows.append(out_offsets[seg] + before[seg] + positions(a))
        before = before + l
    total = sum(a.total for a in arrays)
    out = ns.zeros((total, *arrays[0].feature_shape), ns.dtype_name(like), like=like)
    out = ns.index_put(out, (ns.concat(rows),), ns.concat([a.values for a in arrays]))
    known = _concat_host_offsets(arrays)  # None for traced offsets: no host bookkeeping to carry
    return Array._trusted(out, out_offsets) if known is None else Array._trusted(out, out_offsets, *known)


def _concat_host_offsets(arrays: Sequence[Array]) -> tuple[np.ndarray, int] | None:
    """(host offsets, max_length) of concat_sequences(arrays), or None if any offsets are traced."""
    hosts = [a._known_host_offsets() for a in arrays]
    if any(h is None for h in hosts):
        return None
    out_host = np.zeros(arrays[0].num_sequences + 1, dtype=np.int64)
    np.cumsum(np.sum([np.diff(h) for h in hosts], axis=0), out=out_host[1:])
    return out_host, int(np.diff(out_host).max(initial=0))


def expand(arr: Array, per_sequence: Any) -> Any:
    """Row i of per_sequence `(n, *f)` broadcast to sequence i's tokens, one sequence at a time:
    `(total, *ones, *f)`, the ones making f align with the feature axes from the right."""
    ns = _backends.of(arr.values)
    rank, f = len(ns.shape(arr.values)), tuple(ns.shape(per_sequence))[1:]
    row_shape = (1,) * (rank - 1 - len(f)) + f
    h = arr.host_offsets
    rows = [ns.concat([ns.reshape(per_sequence[i:i + 1], (1, *row_shape))] * int(h[i + 1] - h[i]), axis=0)
            for i in range(arr.num_sequences) if h[i + 1] > h[i]]
    return ns.concat(rows, axis=0) if rows else ns.reshape(per_sequence[:0], (0, *row_shape))


def elementwise(fn: Any, arr: Array, *operands: Any) -> Array:
    """`fn(arr, *operands)` computed sequence by sequence, the semantics of Array's operators and
    ufuncs written out: for sequence i, an Array operand (same offsets) gives its sequence i, a
    scalar or an array of lower rank than the values passes whole, an array of the values' rank
    gives its rows of sequence i (total rows), its row i (n rows, where n != total) or its single
    row (1 row)."""
    ns = _backends.of(arr.values)
    h, n, total = arr.host_offsets, arr.num_sequences, arr.total
    rank = len(ns.shape(arr.values))
    for x in operands:
        if isinstance(x, Array) and not np.array_equal(x.host_offsets, h):
            raise ShapeError("elementwise operands are Arrays over different layouts")

    def piece(x: Any, i: int, lo: int, hi: int) -> Any:
        if isinstance(x, Array):
            return x.values[lo:hi]
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) < rank:
            return x
        if shape[0] == total:
            return x[lo:hi]
        if shape[0] == 1:
            return x
        if shape[0] == n:
            return x[i:i + 1]
        raise ShapeError(f"operand of shape {shape} does not fit values of {total} tokens in {n} sequences")

    pieces = [fn(*(piece(x, i, int(h[i]), int(h[i + 1])) for x in (arr, *operands))) for i in range(n)]
    if not pieces:  # no sequence: the whole (empty) values, so the result has fn's dtype and shape
        return arr.with_values(fn(arr.values, *(piece(x, 0, 0, 0) if isinstance(x, Array) else x
                                                for x in operands)))
    values = ns.concat(pieces, axis=0)
    return Array._trusted(values, ns.from_numpy(h, like=values), h, int(np.diff(h).max(initial=0)))


def cumsum(arr: Array) -> Array:
    """Per-sequence running sum over tokens, the same layout: bool and integers in int64, floats
    in their dtype. The running sum of all rows minus, for each sequence, the sum before it,
    accumulated in float64 (int64): one scan and one gather, differentiable and jit-able. A float64
    sequence that starts after a large prefix loses the prefix's rounding (abs(prefix) x 1e-16); the
    C++ kernel (host arrays) sums each sequence from zero."""
    ns = _backends.of(arr.values)
    kind = ns.dtype_name(arr.values)
    if not (ns.is_floating(arr.values) or ns.is_integer(arr.values) or kind == "bool"):
        raise DTypeError(f"cumsum needs boolean, integer or floating-point values, got {kind}")
    floating = ns.is_floating(arr.values)
    with framework_unsupported(f"cumsum of {kind} values"):
        x = ns.astype(arr.values, "float64" if floating else "int64")
    running = ns.cumsum(x)
    before = ns.concat([ns.zeros((1, *arr.feature_shape), ns.dtype_name(x), like=x), running], axis=0)
    starts = ns.astype(arr.offsets, "int64")[:-1]
    out = running - before[starts][segment_ids(arr)]
    return arr.with_values(ns.astype(out, kind if floating else "int64"))


# ---- token-level indexing ----------------------------------------------------------------------
def token_range(arr: Array, lo: np.ndarray, hi: np.ndarray) -> Array:
    """Tokens [lo[i], hi[i]) of each sequence i (host int64, 0 <= lo <= hi <= length), as a new
    Array: one gather of rows by a host index (differentiable; the host offsets are read, a sync
    for device offsets never copied to the host)."""
    h = arr.host_offsets
    lens = (hi - lo).astype(np.int64)
    out_host = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=out_host[1:])
    idx = np.repeat(h[:-1] + lo - out_host[:-1], lens) + np.arange(out_host[-1], dtype=np.int64)
    return _rows(arr, idx, out_host)


def _rows(arr: Array, idx: np.ndarray, out_host: np.ndarray) -> Array:
    """arr's rows idx (host int64) over the host offsets out_host."""
    ns = _backends.of(arr.values)
    values = arr.values[:0] if idx.size == 0 else arr.values[ns.from_numpy(idx, like=arr.values)]
    lens = np.diff(out_host)
    return Array._trusted(values, ns.from_numpy(out_host, like=arr.offsets), out_host, int(lens.max(initial=0)))


def slice_tokens(arr: Array, start: int | None, stop: int | None) -> Array:
    """Each sequence sliced as a Python list is, seq[start:stop] (negative bounds count from that
    sequence's end, bounds past it clamp, an empty result where stop <= start)."""
    lens = np.diff(arr.host_offsets)

    def bound(b: int | None, default: np.ndarray) -> np.ndarray:
        if b is None:
            return default
        return np.clip(lens + b, 0, lens) if b < 0 else np.minimum(b, lens)

    lo = bound(start, np.zeros_like(lens))
    hi = np.maximum(bound(stop, lens), lo)
    return token_range(arr, lo, hi)


def truncate(arr: Array, max_length: int, side: str = "right") -> Array:
    """At most max_length tokens of each sequence: side='right' drops tokens at the end (keeps
    the first max_length), side='left' drops them at the start (keeps the last), as tokenizers'
    truncation_side."""
    if side not in ("right", "left"):
        raise ArgumentError(f"side must be 'right' or 'left', got {side!r}")
    lens = np.diff(arr.host_offsets)
    keep = np.minimum(lens, min(max_length, arr.total))  # (a max_length past int64 is no bound either)
    return token_range(arr, lens - keep, lens) if side == "left" else token_range(arr, np.zeros_like(lens), keep)


def filter_tokens(arr: Array, mask: Any) -> Array:
    """The tokens where mask (total,) is true, each staying in its sequence (read on the host: the
    result's size depends on it)."""
    ns = _backends.of(arr.values)
    m = np.asarray(ns.to_numpy(mask) if ns.owns(mask) else mask)
    if m.dtype != np.bool_ or m.shape != (arr.total,):
        raise ShapeError(f"filter needs a boolean mask of shape ({arr.total},) (one per token), "
                         f"got {m.dtype} of shape {m.shape}")
    h = arr.host_offsets
    idx = np.flatnonzero(m).astype(np.int64)
    counts = np.add.reduceat(m.astype(np.int64), h[:-1]) if arr.total else np.zeros(arr.num_sequences, np.int64)
    counts = np.where(np.diff(h) > 0, counts, 0)  # (reduceat gives the next row for an empty sequence)
    out_host = np.zeros(arr.num_sequences + 1, dtype=np.int64)
    np.cumsum(counts, out=out_host[1:])
    return _rows(arr, idx, out_host)


# ---- the same selections from device offsets alone (what torch.compile traces) ----------------------
def take_ranges(arr: Array, starts: Any, lengths: Any) -> Array:
    """Rows starts[j] .. starts[j] + lengths[j] - 1 of arr's values as sequence j of a new Array
    (int64 on the values' device, lengths >= 0): token and sequence selection without host offsets.
    The result's size is data-dependent (Backend.rows_of_ranges: symbolic under torch.compile)."""
    ns = _backends.of(arr.values)
    rows = ns.rows_of_ranges(starts, lengths)
    offsets = ns.concat([ns.zeros((1,), "int64", like=lengths), ns.cumsum(lengths)])
    return Array._trusted(arr.values[rows], offsets)


def _bounded(ns: ModuleType, lens: Any, b: int, total: int) -> Any:
    """A slice bound per sequence, as a Python list takes it: min(b, length) for b >= 0,
    max(length + b, 0) for b < 0 (b first brought within the token count, so no int64 overflow)."""
    if b < 0:
        return ns.maximum(lens + max(b, -total), lens * 0)
    b = min(b, total)
    return ns.where(lens < b, lens, lens * 0 + b)


def slice_tokens_on_device(arr: Array, start: int | None, stop: int | None) -> Array:
    """slice_tokens computed from the device offsets (no host copy)."""
    ns = _backends.of(arr.values)
    off = _device_offsets(arr)
    lens = off[1:] - off[:-1]
    lo = lens * 0 if start is None else _bounded(ns, lens, start, arr.total)
    hi = lens if stop is None else _bounded(ns, lens, stop, arr.total)
    hi = ns.maximum(hi, lo)
    return take_ranges(arr, off[:-1] + lo, hi - lo)


def truncate_on_device(arr: Array, max_length: int, side: str = "right") -> Array:
    """truncate computed from the device offsets (no host copy)."""
    if side not in ("right", "left"):
        raise ArgumentError(f"side must be 'right' or 'left', got {side!r}")
    ns = _backends.of(arr.values)
    off = _device_offsets(arr)
    keep = _bounded(ns, off[1:] - off[:-1], max_length, arr.total)
    return take_ranges(arr, off[1:] - keep if side == "left" else off[:-1], keep)


def gather_on_device(arr: Array, index: Any) -> Array:
    """The sequences `index` (int64 on the values' device, already in [0, n)) as a new Array."""
    off = _device_offsets(arr)
    starts = off[index]
    return take_ranges(arr, starts, off[index + 1] - starts)


def filter_tokens_on_device(arr: Array, mask: Any) -> Array:
    """filter_tokens with the mask and offsets left on the device (the mask must already be a
    boolean array of shape (total,) of the values' backend)."""
    ns = _backends.of(arr.values)
    off = _device_offsets(arr)
    counts = ns.segment_reduce(ns.astype(mask, "int64"), segment_ids(arr), arr.num_sequences, "sum", off)
    offsets = ns.concat([ns.zeros((1,), "int64", like=off), ns.cumsum(counts)])
    return Array._trusted(arr.values[ns.true_rows(mask)], offsets)


# ---- a paged KV cache ------------------------------------------------------------------------------
def paged_tokens(kv: Any, which: str) -> list[Any]:
    """Sequence i's cached keys (which="k") or values, token by token out of its pages: token t is
    position t % page_size of page page_table[i][t // page_size]."""
    ns = _backends.of(kv.page_table)
    table, lens = ns.to_numpy(kv.page_table), ns.to_numpy(kv.kv_lens)
    pages = kv.k_pages if which == "k" else kv.v_pages
    size = kv.page_size
    seqs = []
    for i in range(len(lens)):
        rows = [pages[int(table[i][t // size]), t % size] if kv.layout == "NHD" else
                pages[int(table[i][t // size]), :, t % size] for t in range(int(lens[i]))]
        seqs.append(ns.stack(rows) if rows else ns.reshape(pages[:0], (0, kv.heads, kv.head_dim)))
    return seqs


def paged_attention(q: Array, kv: Any, causal: bool = False, scale: float | None = None, window: Any = None,
                    softcap: float | None = None, return_lse: bool = False, upcast: bool = True) -> Any:
    """Attention of q's sequence i over the first kv_lens[i] tokens of sequence i of the paged
    cache `kv` (a scree.PagedKV), bottom-right aligned, with varlen_attention's options."""
    k = pack(paged_tokens(kv, "k"))
    v = k.with_values(pack(paged_tokens(kv, "v")).values)
    return varlen_attention(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap,
                            return_lse=return_lse, upcast=upcast)


def cat(arrays: Sequence[Array]) -> Array:
    """The sequences of arrays[0], then those of arrays[1], ... in one Array: values concatenated,
    offsets shifted by the tokens before (on the device where the offsets are: no sync)."""
    ns = _backends.of(arrays[0].values)
    values = ns.concat([a.values for a in arrays], axis=0)
    pieces, base = [], 0
    for a in arrays:
        off = ns.astype(a.offsets, "int64")
        pieces.append(off[:-1] + base)
        base += a.total
    offsets = ns.concat(pieces + [ns.full((1,), base, "int64", like=arrays[0].offsets)])
    hosts = None if ns.is_tracing() else [a._host_offsets_without_sync() for a in arrays]
    if hosts is None or any(h is None for h in hosts):  # (torch.compile: no host bookkeeping to trace)
        return Array._trusted(values, offsets)
    shifts = np.cumsum([0] + [a.total for a in arrays[:-1]])
    host = np.concatenate([h[:-1] + s for h, s in zip(hosts, shifts)] + [np.array([base], np.int64)])
    return Array._trusted(values, offsets, host, int(np.diff(host).max(initial=0)))

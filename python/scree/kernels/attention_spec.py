"""The argument contract of varlen attention, in one place for the reference and the kernels:
checks that q, k, v are Arrays of one backend with consistent shapes, dtypes and sequence counts,
and normalises causal / window / softcap / scale / deterministic into an AttentionSpec. Every
violation raises a typed scree error that names the argument. It runs on every call, so the
option normalisation is memoised (a model passes the same few option sets on every layer)."""

from __future__ import annotations

import math
import operator
from weakref import ref as _ref
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from scree import _backends
from scree._array import Array
from scree._errors import ArgumentError, BackendError, DTypeError, ShapeError

__all__ = ["AttentionSpec", "attention_spec", "with_head_axis", "drop_head_axis"]


class AttentionSpec(NamedTuple):
    """The checked, normalised arguments of one call (a NamedTuple: built on every call, and a
    frozen dataclass costs ~2 us more to construct)."""
    ns: ModuleType        # the backend namespace of q, k, v
    heads_q: int
    heads_k: int
    head_dim: int
    head_dim_v: int
    dtype: str
    scale: float
    causal: bool
    left: int | None      # None: unbounded
    right: int | None     # None: unbounded; causal makes it 0
    softcap: float | None  # None: off
    single_head: bool     # q, k, v given as (T, D): one head, axis dropped again on output
    deterministic: bool | None  # the caller's choice for the backward; None: the rule at backward time

    @property
    def window_args(self) -> tuple[int, int]:
        """(left, right) as the kernels take them: -1 for unbounded."""
        return (-1 if self.left is None else self.left, -1 if self.right is None else self.right)


# (causal, scale, window, softcap) -> (left, right, scale or None, softcap); bounded, see _options.
_OPTIONS: dict[tuple, tuple[int | None, int | None, float | None, float | None]] = {}


def _options(causal: Any, scale: Any, window: Any, softcap: Any) -> tuple[int | None, int | None, float | None,
                                                                           float | None]:
    causal = _causal_value(causal)
    try:
        key = (causal, scale, window, softcap)
        # A window of other than plain ints and None is normalised every time: (True, 0) or
        # (1.0, 0) equal (1, 0) as keys, and would find its entry instead of raising.
        hit = _OPTIONS.get(key) if window is None or _plain_window(window) else None
    except TypeError:  # an unhashable window (a list): normalised every time
        key, hit = None, None
    if hit is None:
        left, right = _window_bounds(window, causal)
        hit = (left, right, None if scale is None else _scale_value(scale), _softcap_value(softcap))
        if key is not None and len(_OPTIONS) < 256 and _cacheable(key):
            _OPTIONS[key] = hit
    return hit


def _plain_window(window: Any) -> bool:
    return type(window) is tuple and all(type(e) is int or e is None for e in window)


def _cacheable(x: Any) -> bool:
    """Whether an option key holds only plain Python scalars (ints within int64): torch.compile
    guards on this dict's keys, and one np.uint64 or 2**64 window side kept there made every later
    compiled call fail in dynamo's guard code."""
    t = type(x)
    if t is tuple:
        return all(_cacheable(e) for e in x)
    if t is int:
        return -(2 ** 63) <= x < 2 ** 63
    return t is bool or t is float or t is np.float64 or x is None


def attention_spec(q: Any, k: Any, v: Any, causal: bool = False, scale: Any = None, window: Any = None,
                   softcap: Any = None, deterministic: bool | None = None) -> AttentionSpec:
    """The spec after checking every argument of varlen attention; the last one of q's Layout is
    reused where everything the checks read is the same (_memo_key)."""
    if not (isinstance(q, Array) and isinstance(k, Array) and isinstance(v, Array)):
        _not_arrays(q, k, v)
    key = _memo_key(q, k, v, causal, scale, window, softcap, deterministic)
    if key is not None:
        kept = q._layout.plans.get("attention_spec")
        if kept is not None and kept[0] == key:
            return kept[1]
    spec, settled = _checked_spec(q, k, v, causal, scale, window, softcap, deterministic)
    if key is not None and settled:
        q._layout.plans["attention_spec"] = (key, spec)
    return spec


def _memo_key(q: Array, k: Array, v: Array, causal: Any, scale: Any, window: Any, softcap: Any,
              deterministic: Any) -> tuple | None:
    """What the checks of a call read: k's and v's Layouts (q's holds the memo), the values' shapes,
    dtypes and devices, and the options; None where a call is not memoised. Only options of the
    exact types the checks take as they are make keys (True == 1 == 1.0 as keys, and
    deterministic=1 or a window of (True, 0) must raise, not find an entry), and nothing is kept
    while torch.compile traces (it would guard on the shapes). The checks cost ~3.2 us of a ~12 us
    one-token CPU call on the 2-core VM, the key and its comparison ~1.2 (NOTES.md, session 51)."""
    if not (type(causal) is bool and (scale is None or type(scale) is float)
            and (softcap is None or type(softcap) is float)
            and (deterministic is None or type(deterministic) is bool)
            and (window is None or _plain_window(window))):
        return None
    B = q._layout.ns
    if k._layout.ns is not B or v._layout.ns is not B or B.is_tracing():
        return None
    qv, kv, vv = q._values, k._values, v._values
    # k's and v's Layouts by weak reference (CPython hands out the one plain ref an object has): a
    # strong one would keep them, and q's own Layout in self-attention, alive in a reference cycle
    # until the next garbage collection, with their device offsets and schedules.
    return (_ref(k._layout), _ref(v._layout), qv.shape, kv.shape, vv.shape, qv.dtype, kv.dtype, vv.dtype,
            B.device(qv), B.device(kv), B.device(vv), causal, scale, window, softcap, deterministic)


def _checked_spec(q: Array, k: Array, v: Array, causal: Any, scale: Any, window: Any, softcap: Any,
                  deterministic: Any) -> tuple[AttentionSpec, bool]:
    """The spec, and whether every check ran: k's and v's offsets on a device the host never read
    are not compared, and a later call may compare them (so that spec is not memoised)."""
    B = q._layout.ns
    if k._layout.ns is not B or v._layout.ns is not B or not _same_device(B, q._values, k._values, v._values):
        B = _backends.common(q=q.values, k=k.values, v=v.values)  # raises, naming the culprits
    if deterministic is not None and not isinstance(deterministic, (bool, np.bool_)):
        raise ArgumentError(f"deterministic must be True, False or None, got {_show(deterministic)}")
    single = len(q._values.shape) == 2 and len(k._values.shape) == 2 and len(v._values.shape) == 2
    if single:
        q, k, v = (with_head_axis(B, a) for a in (q, k, v))
    Hq, Hk, D, Dv, settled = _check_shapes(q, k, v)
    dtype = _check_dtypes(B, q, k, v)
    left, right, scale_value, cap = _options(causal, scale, window, softcap)
    # A side at least as long as any query-key distance of the call (< Tq + Tk, bottom-right
    # alignment included) bounds nothing: unbounded, so that sides of any size (2**63 and beyond,
    # which int64 cannot hold) reach the kernels and the reference as None / -1.
    reach = q._layout.total + k._layout.total
    if left is not None and left >= reach:
        left = None
    if right is not None and right >= reach:
        right = None
    return AttentionSpec(B, Hq, Hk, D, Dv, dtype, 1.0 / math.sqrt(D) if scale_value is None else scale_value,
                         _causal_value(causal), left, right, cap, single,
                         None if deterministic is None else bool(deterministic)), settled


def _not_arrays(q: Any, k: Any, v: Any) -> None:
    for name, arr in (("q", q), ("k", k), ("v", v)):
        if not isinstance(arr, Array):
            raise BackendError(
                f"{name} must be a scree.Array, got {type(arr).__module__}.{type(arr).__qualname__}; "
                f"wrap packed values with scree.from_lengths(values, lengths) or scree.Array(values, offsets)")


def _same_device(B: ModuleType, q: Any, k: Any, v: Any) -> bool:
    dq = B.device(q)
    return dq is None or ((B.device(k) in (dq, None)) and (B.device(v) in (dq, None)))


def with_head_axis(B: ModuleType, a: Any) -> Any:
    """(T, D) Array -> (T, 1, D) Array over the same memory."""
    return a.with_values(B.reshape(a.values, (a.values.shape[0], 1, a.values.shape[1])))


def drop_head_axis(B: ModuleType, q: Any, out: Any, lse: Any) -> tuple[Any, Any]:
    """Inverse of with_head_axis on the results: out (T, 1, Dv) -> (T, Dv), lse (1, T) -> (T,)."""
    values = out.values
    return q.with_values(B.reshape(values, (values.shape[0], values.shape[2]))), B.reshape(lse, (lse.shape[1],))


def _check_shapes(q: Any, k: Any, v: Any) -> tuple[int, int, int, int, bool]:
    qs, ks, vs = q._values.shape, k._values.shape, v._values.shape
    if not (len(qs) == 3 and len(ks) == 3 and len(vs) == 3):
        for name, shape, dims in (("q", qs, "(Tq, Hq, D)"), ("k", ks, "(Tk, Hk, D)"), ("v", vs, "(Tk, Hk, Dv)")):
            if len(shape) != 3:
                raise ShapeError(f"{name} values must have shape {dims}, got {tuple(shape)}")
    _, Hq, D = qs
    _, Hk, Dk = ks
    _, Hv, Dv = vs
    ql, kl, vl = q._layout, k._layout, v._layout
    if not (ql is kl and kl is vl):  # (one Layout: one sequence count)
        nq, nk, nv = ql.offsets.shape[0] - 1, kl.offsets.shape[0] - 1, vl.offsets.shape[0] - 1
        if nq != nk or nk != nv:
            raise ShapeError(f"q, k, v must hold the same number of sequences, got {nq}, {nk}, {nv}")
    # Offsets traced under jax.jit cannot be compared on the host; there k and v are trusted, as
    # are device offsets the host never copied (reading them would synchronise the GPU).
    # Shared offsets (the usual case: v = k.with_values(...)) need no comparison. While a tracer
    # runs (torch.compile) the host comparison cannot be traced and is skipped: the kernel reads
    # v with k's offsets, as FlashAttention does with its single cu_seqlens_k.
    settled = True  # (False: k's and v's offsets were not compared)
    if kl is not vl and kl.offsets is not vl.offsets and not kl.ns.is_tracing():
        hk, hv = k._host_offsets_without_sync(), v._host_offsets_without_sync()
        settled = hk is not None and hv is not None
        # Both int64 (Layout.host_offsets): equal bytes mean equal offsets; np.array_equal cost
        # ~1.1 us of a ~40 us tiny CPU call, the byte comparison ~0.15 us.
        if hk is not None and hv is not None and hk is not hv and (hk.shape != hv.shape
                                                                   or hk.tobytes() != hv.tobytes()):
            raise ShapeError("k and v must have the same offsets (same sequence lengths)")
    if Hk != Hv:
        raise ShapeError(f"k and v must have the same number of heads, got {Hk} and {Hv}")
    if Hq < 1 or Hk < 1:
        raise ShapeError(f"head counts must be positive, got Hq={Hq}, Hk={Hk}")
    if Hq % Hk != 0:
        raise ShapeError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hk})")
    if D != Dk:
        raise ShapeError(f"q and k head dims differ: {D} vs {Dk}")
    if D < 1:
        raise ShapeError("head dim D must be positive")
    return Hq, Hk, D, Dv, settled


def _check_dtypes(B: Any, q: Any, k: Any, v: Any) -> str:
    qv, kv, vv = q._values, k._values, v._values
    if not (qv.dtype == kv.dtype and qv.dtype == vv.dtype):
        raise DTypeError(f"q, k, v must share one dtype, got {B.dtype_name(qv)}, {B.dtype_name(kv)}, "
                         f"{B.dtype_name(vv)}")
    name = B.dtype_name(qv)
    if not B.is_floating(qv):
        raise DTypeError(f"attention needs floating-point inputs, got {name}")
    return name


def _window_bounds(window: Any, causal: bool) -> tuple[int | None, int | None]:
    """(left, right) with None for an unbounded side; causal caps the right side at 0."""
    left = right = None
    if window is not None:
        if isinstance(window, (str, bytes)):
            raise ArgumentError(f"window must be a (left, right) pair, got {_show(window)}")
        try:
            sides = tuple(window)
        except TypeError:
            raise ArgumentError(f"window must be a (left, right) pair, got {_show(window)}") from None
        if len(sides) != 2:
            raise ArgumentError(f"window must be a (left, right) pair, got {_show(window)}")
        left, right = _window_side("left", sides[0]), _window_side("right", sides[1])
    if causal:
        right = 0  # every bounded right side is >= 0, so causal always wins
    return left, right


def _window_side(name: str, x: Any) -> int | None:
    if x is None:
        return None
    if isinstance(x, bool):  # bool is an int subclass; True as a window size is surely a mistake
        raise ArgumentError(f"window {name} must be an int, None or -1, got {_show(x)}")
    try:
        n = operator.index(x)
    except TypeError:
        raise ArgumentError(f"window {name} must be an int, None or -1, got {_show(x)}") from None
    if n == -1:
        return None
    if n < 0:
        raise ArgumentError(f"window {name} must be >= 0, or None / -1 for unbounded, got {_show(n)}")
    return n


def _show(x: Any) -> str:
    """repr(x) for a message, shortened; never raises (an int of 10**5000 has no repr in Python >=
    3.11 by default, and a message must not replace the typed error with a ValueError)."""
    try:
        text = repr(x)
    except Exception:
        text = f"<{type(x).__name__} without a repr>"
    return text if len(text) <= 80 else text[:60] + "..." + text[-10:]


def _causal_value(causal: Any) -> bool:
    try:
        return bool(causal)
    except Exception:  # e.g. an array of several values: its truth value is ambiguous
        raise ArgumentError(f"causal must be True or False, got {_show(causal)}") from None


def _number(x: Any) -> float:
    """float(x), or ValueError for whatever has no float value: a string, an array of several
    values, an int beyond float64's range (10**400: OverflowError), an object whose __float__
    raises."""
    try:
        return float(x)
    except Exception as e:
        raise ValueError(f"{type(e).__name__}") from None


def _softcap_value(softcap: Any) -> float | None:
    if softcap is None:
        return None
    try:
        c = _number(softcap)
    except ValueError:
        raise ArgumentError(f"softcap must be a positive finite number or None, got {_show(softcap)}") from None
    if c == 0.0:
        return None
    if not (math.isfinite(c) and c > 0):
        raise ArgumentError(f"softcap must be a positive finite number (or None/0 for off), got {_show(softcap)}")
    return c


def _scale_value(scale: Any) -> float:
    try:
        s = _number(scale)
    except ValueError:
        raise ArgumentError(f"scale must be a finite number, got {_show(scale)}") from None
    if not math.isfinite(s):
        raise ArgumentError(f"scale must be finite, got {_show(scale)}")
    return s

"""Layout: the offsets of a scree.Array and everything that depends on them alone, computed at most
once and shared by every Array over the same offsets (Array.with_values, so every layer of a model
that maps a batch's values sees one Layout): the host int64 copy, max_length, the int32 cu_seqlens,
the per-kernel plans (scree.kernels.attention.plan) and the validation state.

Validation (DESIGN §2) happens once per Layout, in C++ (RaggedLayout), and never synchronises a
device by default:
* offsets the host can read without a device transfer (NumPy, torch CPU, JAX CPU, MLX) are checked
  at once, and a bad layout raises where it is built;
* offsets on a GPU are checked on the GPU, once per offsets array and write (Arrays built from the
  same cu_seqlens tensor share one Layout): the backend reduces them to four numbers (first, last,
  smallest and largest step) and starts them on their way to the host behind an event, in one call
  (offsets_summary; torch CUDA: one scree kernel writing into pinned host memory). The verdict is
  read when the numbers have landed, by the next scree call that polls
  (`poll`: every Array construction and attention call, one cheap query per check in flight), and a
  bad layout raises scree.RaggedError there, as torch._assert_async raises at the next sync point,
  but typed and recoverable. The same four numbers give the exact max_length, also without a sync;
* traced offsets (inside jax.jit) cannot be checked by the host: UnsupportedError, as before.
Reading host_offsets of device offsets (indexing, iteration, to_padded, ...) copies them and is the
documented synchronisation; it checks them in C++ at the same time."""

from __future__ import annotations

import collections
import operator
import weakref
from types import ModuleType
from typing import Any

import numpy as np

from scree import _C
from scree._backends.protocol import Readback
from scree._errors import ArgumentError, DTypeError, RaggedError, ShapeError

__all__ = ["Layout", "host_index", "host_lengths", "offsets_from_lengths", "poll", "defer_check"]


def host_index(ns: ModuleType, x: Any) -> np.ndarray:
    """A host int64 NumPy copy/view of int32/int64 offsets; DTypeError for any other dtype."""
    if ns.dtype_name(x) not in ("int32", "int64"):
        raise DTypeError(f"offsets must be int32 or int64, got {ns.dtype_name(x)}")
    return np.ascontiguousarray(ns.to_numpy(x), dtype=np.int64)


def offsets_from_lengths(ns: ModuleType, lengths: Any, like: Any) -> tuple[Any, np.ndarray, int]:
    """(offsets on like's device, host int64 offsets, max_length) from lengths given as a list or
    a native array; scree.RaggedError names the first negative length."""
    lengths_host = host_lengths(ns, lengths)
    host = np.empty(len(lengths_host) + 1, dtype=np.int64)
    longest = _C.offsets_from_lengths(lengths_host, host)
    return ns.from_numpy(host, like=like), host, longest


def host_lengths(ns: ModuleType, lengths: Any) -> np.ndarray:
    """Lengths given as a list or a native array, as a 1-D contiguous host int64 array (device
    lengths are copied: a sync); DTypeError for non-integers, ShapeError for another rank. Signs
    are checked where they become offsets (offsets_from_lengths)."""
    if ns.owns(lengths):
        if not ns.is_integer(lengths):
            raise DTypeError(f"lengths must be integers, got {ns.dtype_name(lengths)}")
        if len(ns.shape(lengths)) != 1:  # (to_numpy may hand back a 0-d array as 1-d)
            raise ShapeError(f"lengths must be 1-D, got shape {tuple(ns.shape(lengths))}")
        lengths_host = ns.to_numpy(lengths)
    else:
        lengths_host = np.asarray(lengths)
        if lengths_host.size == 0 and not hasattr(lengths, "dtype"):  # [] is float64 to NumPy
            lengths_host = lengths_host.astype(np.int64)
        if not np.issubdtype(lengths_host.dtype, np.integer):
            raise DTypeError(f"lengths must be integers, got {lengths_host.dtype}")
    if np.ndim(lengths_host) != 1:  # (before ascontiguousarray, which makes a 0-d array 1-d)
        raise ShapeError(f"lengths must be 1-D, got shape {np.shape(lengths_host)}")
    return np.ascontiguousarray(lengths_host, dtype=np.int64)


def checked_args(ns: ModuleType, offsets: Any, max_length: Any, name: str = "max_length",
                 negative_ok: bool = False) -> int | None:
    """What every Layout needs of its arguments before anything reads the offsets (validate=False
    included; metadata only, no sync): offsets a 1-D integer array of n+1 >= 1 entries, and
    max_length None or an int >= 0 (returned as an int). Typed errors naming the argument."""
    if ns.dtype_name(offsets) not in ("int32", "int64"):
        raise DTypeError(f"offsets must be int32 or int64, got {ns.dtype_name(offsets)}")
    shape = ns.shape(offsets)
    if len(shape) != 1:
        raise ShapeError(f"offsets must be 1-D (n+1 entries), got {len(shape)}-D with shape {tuple(shape)}")
    if shape[0] < 1:
        raise RaggedError("offsets must have at least one element (offsets = [0] describes zero sequences), "
                          "got an empty array")
    return checked_length(max_length, name, negative_ok)


def checked_length(length: Any, name: str, negative_ok: bool = False) -> int | None:
    """A length argument (max_length, max_seqlen): None, or an int >= 0 (NumPy ints too, never a
    bool or a float); ArgumentError naming it otherwise. negative_ok: the caller reports negative
    values itself (to_padded: "shorter than the longest sequence")."""
    if length is None:
        return None
    if isinstance(length, (bool, np.bool_)):
        raise ArgumentError(f"{name} must be an int, got {length!r}")
    try:
        value = operator.index(length)
    except TypeError:
        raise ArgumentError(f"{name} must be an int, got {length!r}") from None
    if value < 0 and not negative_ok:
        raise ArgumentError(f"{name} must be >= 0, got {value}")
    return value


def check_max_length(max_length: int | None, longest: int, name: str = "max_length") -> None:
    """A caller's max_length may bound the longest sequence from above, never from below."""
    if max_length is not None and max_length < longest:
        raise ArgumentError(f"{name}={max_length} is smaller than the longest sequence ({longest})")


_UNSET = object()  # a Layout's device before it is first asked


class Layout:
    """Offsets (n+1, native, on the values' device) and what derives from them (see the module)."""

    __slots__ = ("ns", "offsets", "total", "host", "max_length", "cu32", "plans", "check", "device_summary",
                 "unchecked", "_device", "key", "held", "__weakref__")

    def __init__(self, ns: ModuleType, offsets: Any, total: int, host: np.ndarray | None = None,
                 max_length: int | None = None):
        poll()  # every new layout is a point where the host learns of earlier device checks
        self.ns = ns
        self.offsets = offsets
        self.total = total
        self.host = host                  # host int64 offsets, once known
        self.max_length = max_length      # exact, or a caller's upper bound (FlashAttention's max_seqlen)
        self.cu32: Any = None             # int32 offsets on the device, once asked for
        self.plans: dict[str, Any] = {}   # per-kernel work depending on the offsets only
        self.check: DeviceCheck | None = None
        # The device check's four numbers on the device, where the backend leaves a copy there:
        # kernels read the exact max_length from it before the host knows it. Kept as long as the
        # Layout (a kernel enqueued earlier on the stream may still read it).
        self.device_summary: Any = None
        # Host offsets of an Array made with validate=False: checked in C++ the first time anything
        # reads them (host_offsets), so an operation raises RaggedError before it allocates from
        # or indexes with them (a lying offsets[-1] made to_padded try to allocate 16 TiB).
        self.unchecked = False
        self._device: Any = _UNSET  # the offsets' device name, asked once (device())
        self.key: tuple | None = None  # its _BY_OFFSETS key while cached there
        self.held = False  # kept alive in _RECENT too

    def device(self) -> str | None:
        """The offsets' device name as the backend gives it (ns.device), kept: offsets never move,
        and every with_values asks (three times a call of attention)."""
        d = self._device
        if d is _UNSET:
            d = self._device = self.ns.device(self.offsets)
        return d

    @classmethod
    def validated(cls, ns: ModuleType, offsets: Any, total: int, max_length: int | None = None,
                  name: str = "max_length") -> "Layout":
        """A checked Layout: in C++ at once where the host reads the offsets directly, on the
        device (verdict polled later, no sync) where they live on a GPU."""
        # (a negative max_length is "smaller than the longest sequence", said below with the longest)
        max_length = checked_args(ns, offsets, max_length, name, negative_ok=True)
        if ns.is_tracing():  # torch.compile: no host read or device check can be traced (see README)
            return cls(ns, offsets, total, None, max_length if max_length is None or max_length >= 0 else None)
        if ns.host_readable(offsets) or ns.is_traced(offsets):
            host = host_index(ns, offsets)  # traced: UnsupportedError saying how to build it
            _, _, longest = _C.validate_offsets(host, total)
            check_max_length(max_length, longest, name)
            return cls(ns, offsets, total, host, longest if max_length is None else max_length)
        if max_length is not None and max_length < 0:
            raise ArgumentError(f"{name}={max_length} must be >= 0")
        key = offsets_key(ns, offsets, total, max_length)
        hit = cls.kept(key, offsets)
        if hit is not None:
            return hit
        layout = cls(ns, offsets, total, None, max_length)
        check = DeviceCheck(layout, name)
        layout.check = check if check.readback is not None else None
        if key is not None:
            _BY_OFFSETS[key] = layout
            layout.key = key
            # Held only where a check runs (not inside CUDA graph capture) and the offsets are no
            # view: a view made anew each call (cu[: n + 1]) is never found again, and would keep
            # its base's storage alive.
            if layout.check is not None and getattr(offsets, "_base", None) is None:
                layout.held = True
                _RECENT.append(layout)
        return layout

    @staticmethod
    def kept(key: tuple | None, offsets: Any) -> "Layout | None":
        """The Layout `validated` made for device offsets under `key` (offsets_key), if it is still
        alive: then these very offsets were checked, or are being checked, already."""
        hit = None if key is None else _BY_OFFSETS.get(key)
        if hit is None or hit.offsets is not offsets:  # (alive: its offsets' id was not reused)
            return None
        if hit.held:  # (see _RECENT) a hit keeps it among the recent ones
            _RECENT.append(hit)
        return hit

    def forget(self) -> None:
        """Out of the cache (and out of _RECENT where held): a later Array over the same offsets gets
        a Layout of its own, and its own check (a failed check must raise again for every later
        construction, not once)."""
        if self.key is not None and _BY_OFFSETS.get(self.key) is self:
            del _BY_OFFSETS[self.key]
        self.key = None
        if self.held:
            self.held = False
            try:
                while True:
                    _RECENT.remove(self)
            except ValueError:  # none left (another thread may have taken the last one)
                pass

    @classmethod
    def unvalidated(cls, ns: ModuleType, offsets: Any, total: int, max_length: Any = None,
                    name: str = "max_length") -> "Layout":
        """The Layout of validate=False: the arguments' metadata checked, the offsets' values not
        (offsets in host memory: at their first use, see `unchecked`; JAX CPU ones too, which the
        XLA FFI handlers would otherwise refuse with an untyped JaxRuntimeError), except where the
        framework's own ops would index out of bounds with bad ones (MLX: checked here)."""
        max_length = checked_args(ns, offsets, max_length, name)
        readable = ns.host_readable(offsets) and not ns.is_traced(offsets) and not ns.is_tracing()
        host = host_index(ns, offsets) if readable else None
        if readable and not ns.safe_indexing:
            _C.validate_offsets(host, total)
        layout = cls(ns, offsets, total, host, max_length)
        layout.unchecked = readable and ns.safe_indexing
        return layout

    def host_offsets(self) -> np.ndarray:
        """The host int64 offsets, copied from the device once (the documented sync) and checked."""
        if self.unchecked:
            _C.validate_offsets(self.host, self.total)
            self.unchecked = False
        if self.host is None:
            host = host_index(self.ns, self.offsets)
            check = self.check
            if check is not None:  # the host copy settles the check in flight at once
                check.cancel()
                _, _, longest = _C.validate_offsets(host, self.total)
                check_max_length(self.max_length, longest, check.name)
            self.host = host
        return self.host

    def known_max_length(self) -> int | None:
        """max_length where the host knows it without a sync (given, computed, or a landed device
        check's verdict), else None."""
        if self.max_length is None and self.check is not None:
            poll()
        return self.max_length


# Layouts over device offsets by (id, write counter, total, max_length) of the offsets: Arrays built
# from the same cu_seqlens tensor (q, k and v of a batch, every layer of a model written the
# FlashAttention way) share one Layout, so one device check, one plan. Weak: a Layout lives as long
# as an Array over it.
_BY_OFFSETS: "weakref.WeakValueDictionary[tuple, Layout]" = weakref.WeakValueDictionary()
# ... and the Layouts made or found there lately, held: code written against FlashAttention's API
# (scree.integrations.flash_api, or from_cu_seqlens in each layer) drops its Arrays after every
# call, and a Layout that died with them (at once, or at the next garbage collection where its tile
# schedule names it back) made the next layer pay a new one: the device check, the plan, the
# packed-tile schedule and its kernel (~190 us of host a call against ~55 over a kept Layout on an
# H100 host, benchmarks/NOTES.md, session 36). Bounded: a Layout holds its offsets and a few small
# device buffers; a new batch's Layout pushes the old ones out.
_RECENT: "collections.deque[Layout]" = collections.deque(maxlen=32)


def offsets_key(ns: ModuleType, offsets: Any, total: int, max_length: int | None) -> tuple | None:
    """_BY_OFFSETS's key, None where the backend counts no writes (nothing may be cached by identity)."""
    version = ns.version(offsets)
    return None if version is None else (id(offsets), version, total, max_length)


class DeviceCheck:
    """The check of one Layout's device offsets, in flight: a Readback of their summary."""

    __slots__ = ("layout", "ns", "readback", "name", "claimed", "shape")

    def __init__(self, layout: Layout, name: str):
        ns = layout.ns
        self.layout = weakref.ref(layout)
        self.ns = ns
        self.name = name  # how the caller called the max length it gave (for the message)
        self.claimed = layout.max_length
        self.shape = (ns.shape(layout.offsets)[0], layout.total)
        self.readback: Readback | None = None
        if ns.is_capturing(layout.offsets):  # inside CUDA graph capture nothing can be read back:
            return                           # unchecked, as with validate=False (kernels clamp)
        self.readback = ns.offsets_summary(layout.offsets)
        layout.device_summary = getattr(self.readback, "device_copy", None)
        _PENDING.append(self)

    def cancel(self) -> None:
        self.readback = None
        layout = self.layout()
        if layout is not None and layout.check is self:
            layout.check = None

    def verdict(self, summary: np.ndarray) -> None:
        """Settle the check: record max_length on the Layout, or raise what the host check would."""
        first, last, lo, hi = (int(x) for x in summary)
        count, total = self.shape
        layout = self.layout()
        self.cancel()
        where = f"offsets (n+1 = {count}, checked on the device after the Array was built)"
        try:
            if first != 0:
                raise RaggedError(f"{where}: offsets[0] must be 0, got {first}")
            if lo < 0:
                raise RaggedError(f"{where} must be non-decreasing: a sequence has length {lo}")
            if last != total:
                raise RaggedError(f"{where}: offsets[-1] = {last} must equal values.shape[0] = {total}")
            check_max_length(self.claimed, hi, self.name)
        except (RaggedError, ArgumentError):
            if layout is not None:
                layout.forget()  # every later Array over these offsets is checked (and raises) again
            raise
        if layout is not None:
            if layout.max_length is None:
                layout.max_length = hi
                layout.plans.clear()  # plans sized from the token count can now use the exact max


# Checks in flight: anything with `ns`, `readback` (None once settled or cancelled) and
# `verdict(summary)`: the device checks of offsets, and of paged KV tables (scree._paged).
_PENDING: list[Any] = []


def defer_check(check: Any) -> None:
    """Settle `check` at a later poll, once its readback has landed (never waits)."""
    if check.readback is not None:
        _PENDING.append(check)


def poll() -> None:
    """Settle every device check whose summary has reached the host (never waits); raises the first
    bad verdict (the others stay in flight). Cheap when nothing is in flight: every scree entry
    point calls it."""
    if not _PENDING:
        return
    for c in list(_PENDING):
        if c.readback is None:
            _PENDING.remove(c)
        elif c.ns.is_tracing():  # torch.compile traces this call: an event query cannot be traced
            continue
        elif c.readback.ready():
            _PENDING.remove(c)
            c.verdict(c.readback.value())

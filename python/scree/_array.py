"""The scree.Array type: `values` `(total, *feature)` plus a Layout (its offsets (n+1) and everything
derived from them, scree._layout), both native arrays of one backend and device. Invariants are
checked once per Layout, in C++ (RaggedLayout), when data enters, without synchronising a device;
Arrays made with with_values share their Layout, so the host offsets, max_length, int32
cu_seqlens and kernel plans are computed once for every layer that maps a batch's values. Array
is immutable: every operation returns a new Array or native array.

This module sits below the kernels: the per-sequence operations its methods expose (positions,
segment_ids, gather, to_padded, sum/mean/max) are provided by scree.kernels.layout through
`provide_layout_ops` when that module loads (`import scree` loads it), so nothing here imports
upwards."""

from __future__ import annotations

from itertools import accumulate
from types import ModuleType
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from scree import _backends, _elementwise
from scree._backends import dtypes
from scree._errors import ArgumentError, BackendError, ShapeError
from scree._layout import Layout, checked_length, offsets_key

__all__ = ["Array", "LayoutOps", "provide_layout_ops", "checked_values"]


class LayoutOps(Protocol):
    """The per-sequence operations behind Array's methods (scree.kernels.layout provides them)."""

    def positions(self, arr: "Array", dtype: str) -> Any: ...

    def segment_ids(self, arr: "Array", dtype: str) -> Any: ...

    def gather(self, arr: "Array", index: Any) -> "Array": ...

    def to_padded(self, arr: "Array", pad_value: Any, padding_side: str, max_length: int | None) -> tuple[Any, Any]: ...

    def reduce(self, arr: "Array", op: str, ddof: int = 0) -> Any: ...

    def softmax(self, arr: "Array", log: bool) -> "Array": ...

    def cumsum(self, arr: "Array") -> "Array": ...

    def slice_tokens(self, arr: "Array", start: int | None, stop: int | None) -> "Array": ...

    def truncate(self, arr: "Array", max_length: int, side: str) -> "Array": ...

    def filter_tokens(self, arr: "Array", mask: Any) -> "Array": ...


_OPS: Any = None


def provide_layout_ops(ops: LayoutOps) -> None:
    """Install the implementation of Array's per-sequence methods (called once, by scree.kernels.layout)."""
    global _OPS
    _OPS = ops


def checked_values(ns: ModuleType, values: Any, what: str = "values") -> None:
    """What every Array needs of its values (checked once, where they enter): at least one
    dimension `(total, *feature)` and a dtype scree serves (ShapeError / DTypeError naming `what`)."""
    if len(ns.shape(values)) < 1:
        raise ShapeError(f"{what} must have at least one dimension (total, *feature), got a 0-D array")
    dtypes.checked_dtype(ns, values, what)


def _kept_layout(values: Any, offsets: Any, max_length: Any) -> Layout | None:
    """The Layout already made over these very device offsets (same array, not written since, same
    token count and max_length), when `values` may go over it: every layer of a model written the
    FlashAttention way builds its q, k and v Arrays from one cu_seqlens tensor, and only the first
    needs the full checks (3.2 -> 1.5 us a call on a 2-core VM; 8 us before on an H100 host). None sends
    the call down the full path, which raises the typed error wherever one is due."""
    if max_length is not None and type(max_length) is not int:  # floats, bools, NumPy ints: judged there
        return None
    try:
        ns = _backends.of(values)
    except BackendError:
        return None
    if type(offsets) is not type(values) or ns.host_readable(offsets) or ns.is_tracing():
        return None
    shape = values.shape
    if len(shape) < 1:
        return None
    layout = Layout.kept(offsets_key(ns, offsets, shape[0], max_length), offsets)
    if layout is None or ns.device(values) != layout.device():
        return None
    dtypes.checked_dtype(ns, values, "values")
    return layout


def _as_native_offsets(ns: ModuleType, offsets: Any, like: Any) -> Any:
    """Offsets given as a Python list or tuple, as an array of the values' backend and device."""
    if isinstance(offsets, (list, tuple)):
        return ns.asarray(offsets, dtype="int64" if len(offsets) == 0 else None, like=like)
    return offsets


def _operator(name: str, reflected: bool = False) -> Callable[["Array", Any], "Array"]:
    """Array's method for the binary operator `name` (scree._elementwise.OPERATORS)."""
    def method(self: "Array", other: Any) -> "Array":
        return _elementwise.binary(self, other, name, reflected)
    method.__name__ = f"__{'r' if reflected else ''}{name.rstrip('_')}__"
    method.__doc__ = f"Elementwise {name} on values, the layout kept (operands: scree._elementwise)."
    return method


def _unary(fn: Callable[[Any], Any], name: str) -> Callable[["Array"], "Array"]:
    def method(self: "Array") -> "Array":
        return _elementwise.unary(self, fn, name)
    method.__name__ = f"__{name}__"
    return method


def _ddof(ddof: Any) -> int:
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ArgumentError(f"ddof must be an integer >= 0, got {ddof!r}")
    return int(ddof)


class Array:
    """A batch of variable-length sequences stored packed.

    ``values`` has shape ``(total, *feature)``; ``offsets`` has length ``n + 1`` with
    ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == total``: sequence ``i`` is
    ``values[offsets[i]:offsets[i+1]]``. Both are native arrays (NumPy, torch, JAX or MLX) of one
    device.

    Validation never synchronises a device: host offsets are checked at once; offsets on a GPU are
    checked on the GPU and a bad layout raises scree.RaggedError at the next scree call after the
    check has finished (see scree._layout). ``validate=False`` skips the check and is meant for
    trusted callers that produced the offsets themselves. The compiled host kernels still re-check
    host offsets (O(n), cheap) before touching memory, so bad offsets raise rather than crash
    there; the GPU kernels clamp every sequence into the buffers. ``max_length``, when known, is
    kept (and on a GPU spares the wait for the device check); like FlashAttention's
    ``max_seqlen`` it may be an upper bound: padding then uses that length.
    """

    __slots__ = ("_values", "_layout")

    def __init__(self, values: Any, offsets: Any, *, validate: bool = True, max_length: int | None = None):
        kept = _kept_layout(values, offsets, max_length) if validate else None
        if kept is not None:
            self._values, self._layout = values, kept
            return
        ns = _backends.of(values)
        offsets = _as_native_offsets(ns, offsets, values)
        _backends.common(values=values, offsets=offsets)
        checked_values(ns, values)
        total = ns.shape(values)[0]
        if validate:
            self._layout = Layout.validated(ns, offsets, total, max_length)
        else:
            self._layout = Layout.unvalidated(ns, offsets, total, max_length)
        self._values = values

    @classmethod
    def _over(cls, values: Any, layout: Layout) -> "Array":
        """values over an existing Layout (same rows; checked by the caller)."""
        arr = cls.__new__(cls)
        arr._values, arr._layout = values, layout
        return arr

    @classmethod
    def _trusted(cls, values: Any, offsets: Any, host: np.ndarray | None = None,
                 max_length: int | None = None) -> "Array":
        """Build without validation from parts scree computed itself."""
        ns = _backends.of(values)
        return cls._over(values, Layout(ns, offsets, ns.shape(values)[0], host, max_length))

    @classmethod
    def _checked(cls, values: Any, offsets: Any, max_length: int | None, name: str) -> "Array":
        """Validated as Array(values, offsets) does, a too-small max_length named `name` in the error."""
        kept = _kept_layout(values, offsets, max_length)
        if kept is not None:
            return cls._over(values, kept)
        ns = _backends.common(values=values, offsets=offsets)
        checked_values(ns, values)
        return cls._over(values, Layout.validated(ns, offsets, ns.shape(values)[0], max_length, name))

    @classmethod
    def _unchecked(cls, values: Any, offsets: Any, max_length: int | None, name: str) -> "Array":
        """As Array(values, offsets, validate=False), a bad max_length named `name` in the error."""
        offsets = _as_native_offsets(_backends.of(values), offsets, values)
        ns = _backends.common(values=values, offsets=offsets)
        checked_values(ns, values)
        return cls._over(values, Layout.unvalidated(ns, offsets, ns.shape(values)[0], max_length, name))

    @classmethod
    def _unflattened(cls, values: Any, offsets: Any) -> "Array":
        """Rebuild from pytree leaves (JAX's unflatten; see scree._connect.jax_pytree): no
        validation and no host bookkeeping, which is recomputed lazily where the offsets are
        concrete. JAX's tree utilities also unflatten placeholders (None, object()), so the leaves
        are not checked."""
        try:
            ns = _backends.of(values)
        except BackendError:
            ns = _backends.get("jax")
        total = values.shape[0] if hasattr(values, "shape") and len(values.shape) else 0
        return cls._over(values, Layout(ns, offsets, total))

    @property
    def _ns(self) -> ModuleType:
        return self._layout.ns

    @property
    def _offsets(self) -> Any:
        return self._layout.offsets

    # ---- layout ----------------------------------------------------------------------------
    @property
    def values(self) -> Any:
        """The packed values, shape `(total, *feature)`."""
        return self._values

    @property
    def offsets(self) -> Any:
        """The offsets (n+1), as given (int32 or int64), on the values' device."""
        lay = self._layout
        if lay.unchecked:  # validate=False host offsets: checked before anything computes with them
            lay.host_offsets()
        return lay.offsets

    @property
    def host_offsets(self) -> np.ndarray:
        """Offsets as host int64 NumPy, kept with the Layout (computed once; for device offsets the
        first access copies them: a synchronisation)."""
        return self._layout.host_offsets()

    @property
    def lengths(self) -> Any:
        """Per-sequence lengths (n,), int64, native, on the values' device (no host sync)."""
        if self._ns.is_host(self._offsets):
            return self._ns.from_numpy(np.diff(self.host_offsets), like=self._offsets)
        off = self._ns.astype(self._offsets, "int64")
        return off[1:] - off[:-1]

    def _known_host_offsets(self) -> np.ndarray | None:
        """host_offsets, or None where the host cannot know them (offsets traced under jax.jit)."""
        lay = self._layout
        if lay.host is None and lay.ns.is_traced(lay.offsets):
            return None
        return lay.host_offsets()

    def _host_offsets_without_sync(self) -> np.ndarray | None:
        """host_offsets when the host has them or can read them without a device sync (cached, or
        the offsets live in host memory); None for device offsets never copied and traced ones."""
        lay = self._layout
        if lay.host is None and not lay.ns.host_readable(lay.offsets):
            return None
        return lay.host_offsets()

    def _known_max_length(self) -> int | None:
        """max_length, or None where it cannot be known (offsets traced under jax.jit)."""
        if self._layout.max_length is None and self._known_host_offsets() is None:
            return None
        return self.max_length

    def _padded_length(self, max_length: int | None) -> int:
        """L of to_padded: max_length, else the Array's max_length. An explicit max_length shorter
        than the longest sequence is a ShapeError; the Array's max_length may be a bound its maker
        gave (like max_seqlen), so below it the host offsets decide (read only then). Traced offsets
        (jax.jit) trust the caller's max_length, as FlashAttention trusts max_seqlen."""
        if max_length is None:
            return self.max_length
        bound = self._known_max_length()
        if bound is not None and max_length < bound:
            h = self._known_host_offsets()
            longest = bound if h is None else int(np.max(np.diff(h))) if len(h) > 1 else 0
            if max_length < longest:
                raise ShapeError(f"max_length={max_length} is shorter than the longest sequence ({longest})")
        return max_length

    @property
    def max_length(self) -> int:
        """Length of the longest sequence (0 for an empty batch); host int, cached. Known without a
        sync when given, when the host has the offsets, or once the device check has landed; else
        reading it copies the offsets (a synchronisation). Unknown inside jax.jit, where the offsets
        are traced (scree.UnsupportedError): pass sizes explicitly there."""
        lay = self._layout
        if lay.known_max_length() is None:
            h = lay.host_offsets()
            if lay.max_length is None:
                lay.max_length = int(np.max(np.diff(h))) if len(h) > 1 else 0
        return lay.max_length

    @property
    def num_sequences(self) -> int:
        return self._ns.shape(self._offsets)[0] - 1

    def __len__(self) -> int:
        return self.num_sequences

    @property
    def total(self) -> int:
        """Number of tokens (rows of values)."""
        return self._ns.shape(self._values)[0]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self._ns.shape(self._values)[1:]

    @property
    def dtype(self) -> Any:
        """The native dtype of values."""
        return self._values.dtype

    @property
    def backend(self) -> str:
        """'numpy', 'torch', 'jax' or 'mlx'."""
        return self._ns.name

    @property
    def device(self) -> str | None:
        """'cpu', 'cuda:0', ... (MLX: the default device, 'cpu' or 'gpu'); None for values traced
        under jax.jit, whose placement XLA decides."""
        return self._ns.device(self._values)

    def cu_seqlens(self) -> Any:
        """Offsets as int32 on the values' device (FlashAttention's cu_seqlens); zero-copy when the
        offsets already are int32."""
        lay = self._layout
        if lay.cu32 is None:
            if lay.ns.dtype_name(lay.offsets) == "int32":
                lay.cu32 = lay.offsets
            else:
                if self.total > np.iinfo(np.int32).max:
                    raise ArgumentError(f"total = {self.total} tokens does not fit int32 cu_seqlens")
                lay.cu32 = lay.ns.astype(lay.offsets, "int32")
        return lay.cu32

    # ---- derived per-token arrays --------------------------------------------------------------
    def positions(self, dtype: str = "int64") -> Any:
        """Index of each token within its own sequence, shape (total,) — what RoPE needs."""
        return _OPS.positions(self, dtype)

    def segment_ids(self, dtype: str = "int64") -> Any:
        """Index of the sequence each token belongs to, shape (total,)."""
        return _OPS.segment_ids(self, dtype)

    # ---- sequences -----------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> Any:
        """arr[i] -> sequence i (a native view); arr[a:b] -> Array view (zero-copy);
        arr[[i, j, ...]] or arr[index_array] -> Array of those sequences (a copy);
        arr[seqs, a:b] -> the sequences `seqs` (any of the above but an integer: arr[i, a:b] is
        arr[i][a:b]) with each one's tokens sliced as a Python list is, seq[a:b] (negative bounds
        count from that sequence's own end), a new Array (a copy)."""
        n = self.num_sequences
        if isinstance(index, tuple) and len(index) == 2 and isinstance(index[1], slice) \
                and not isinstance(index[0], tuple) and index[0] is not Ellipsis and index[0] is not None:
            seqs, tokens = index
            if tokens.step not in (None, 1):
                raise ArgumentError(f"a token slice takes no step, got {tokens!r} (arr[:, a:b] slices each sequence)")
            for b in (tokens.start, tokens.stop):
                if b is not None and not isinstance(b, (int, np.integer)) or isinstance(b, bool):
                    raise ArgumentError(f"token slice bounds must be integers or None, got {tokens!r}")
            picked = self[seqs]
            if not isinstance(picked, Array):  # arr[i, a:b]: one sequence's tokens
                return picked[tokens]
            start = None if tokens.start is None else int(tokens.start)
            stop = None if tokens.stop is None else int(tokens.stop)
            return _OPS.slice_tokens(picked, start, stop)
        if isinstance(index, tuple) and any(isinstance(i, slice) or i is Ellipsis or i is None for i in index):
            # (a tuple of integers stays a list of sequences to gather, as it always was)
            raise ArgumentError(
                f"arr[{', '.join(type(i).__name__ for i in index)}]: an Array is indexed by sequence, then optionally "
                "by a token slice: arr[i], arr[a:b], arr[[i, j]], arr[mask], arr[:, a:b] (each sequence's tokens "
                "a:b); feature axes are indexed on values (arr.map(lambda v: v[..., 0]))")
        if not isinstance(index, (int, np.integer, slice)) and getattr(index, "ndim", None) == 0 \
                and self._is_integer_scalar(index):
            index = int(index)  # a 0-d integer array/tensor indexes like an int (as in NumPy/torch)
        if isinstance(index, (int, np.integer)):
            if isinstance(index, (bool, np.bool_)):
                raise ArgumentError("a bool is not a sequence index (use a boolean mask array to select)")
            i = int(index)
            if i < -n or i >= n:
                raise IndexError(f"sequence index {i} out of range for {n} sequences")
            i %= n
            h = self.host_offsets
            return self._values[int(h[i]):int(h[i + 1])]
        if isinstance(index, slice):
            try:
                start, stop, step = index.indices(n)
            except (TypeError, ValueError) as e:  # a zero step, non-integer bounds
                raise ArgumentError(f"bad sequence slice {index!r}: {e}") from None
            if step == 1 and not self._ns.is_tracing():  # (a view needs the host offsets)
                stop = max(stop, start)
                h = self.host_offsets
                lo, hi = int(h[start]), int(h[stop])
                host = h[start:stop + 1] - lo
                off = self._ns.from_numpy(host, like=self._offsets)
                lens = np.diff(host)
                return Array._trusted(self._values[lo:hi], off, host, int(lens.max()) if len(lens) else 0)
            # (under torch.compile a copy, as every gather: its values are a trace's constants)
            index = range(start, stop, step) if self._ns.is_tracing() else np.arange(start, stop, step, dtype=np.int64)
        return _OPS.gather(self, index)

    @staticmethod
    def _is_integer_scalar(x: Any) -> bool:
        try:
            return _backends.of(x).is_integer(x)
        except Exception:  # not a NumPy array or torch tensor: leave it to gather's checks
            return False

    def __iter__(self) -> Iterator[Any]:
        h = self.host_offsets
        for i in range(self.num_sequences):
            yield self._values[int(h[i]):int(h[i + 1])]

    def truncate(self, max_length: int, side: str = "right") -> "Array":
        """At most max_length tokens per sequence, a new Array: side='right' keeps each sequence's
        first max_length tokens, side='left' its last ones (as tokenizers' truncation_side)."""
        return _OPS.truncate(self, checked_length(max_length, "max_length"), side)

    def filter(self, mask: Any) -> "Array":
        """The tokens where mask (total,) is true, each kept in its own sequence (sequences may
        become empty), a new Array. The mask is read on the host (the result's size depends on it:
        a device sync for a GPU mask)."""
        return _OPS.filter_tokens(self, mask)

    def split(self, sizes: Any) -> list["Array"]:
        """Consecutive groups of sizes[0], sizes[1], ... sequences (summing to len(arr)), each an
        Array view (zero-copy), as torch.split along the sequence axis."""
        try:
            counts = [int(s) for s in sizes]
        except (TypeError, ValueError):
            raise ArgumentError(f"split takes a list of sequence counts, got {sizes!r}") from None
        if any(c < 0 for c in counts) or sum(counts) != self.num_sequences:
            raise ArgumentError(f"split sizes {counts} must be >= 0 and sum to the {self.num_sequences} sequences")
        ends = list(accumulate(counts, initial=0))
        return [self[a:b] for a, b in zip(ends[:-1], ends[1:])]

    def unpack(self) -> list[Any]:
        """The sequences as a list of native views (zero-copy)."""
        return list(self)

    # ---- conversions ---------------------------------------------------------------------------
    def to_padded(self, pad_value: Any = 0, padding_side: str = "right",
                  max_length: int | None = None) -> tuple[Any, Any]:
        """(padded, mask): padded `(n, L, *feature)` with L = max_length or the longest sequence,
        mask (n, L) bool, True at tokens. padding_side='left' right-aligns each sequence.

        pad_value must be exactly representable in the values' dtype (scree.ArgumentError
        otherwise: 300 or -1 into uint8, NaN into int32, None); floating dtypes round it as they
        round any value, but never overflow it to infinity. Before anything is allocated, a padded
        array that cannot exist (an axis past the framework's index type, e.g. int32 for MLX and for
        JAX without jax_enable_x64) raises scree.ArgumentError, one that does not fit the host
        memory left an OutOfMemoryError (a scree.ScreeError and a MemoryError)."""
        ns = self._ns
        max_length = checked_length(max_length, "max_length", negative_ok=True)
        dt = dtypes.checked_dtype(ns, self._values)
        if not (ns.owns(pad_value) and ns.is_traced(pad_value)):  # (a traced pad fills as jnp.full takes it)
            pad_value = dtypes.scalar(pad_value, dt, "pad_value")
        length = self._layout.max_length if max_length is None else max_length
        if length is not None and length >= 0:  # (unknown under jax.jit; negative: too short, said below)
            n = self.num_sequences
            # XLA aborts the process on a shape whose element count overflows int64, MLX dies with
            # SIGSEGV evaluating an allocation that fails, Linux kills the process touching an
            # overcommitted NumPy or torch buffer: all checked before allocating.
            what = f"max_length={length}" if max_length is not None else f"the Array's max_length {length}"
            dtypes.checked_size(ns, self._values, [((n, length, *self.feature_shape), dtypes.ITEMSIZE[dt]),
                                                   ((n, length), 1)], what)
        return _OPS.to_padded(self, pad_value, padding_side, max_length)

    def with_values(self, values: Any) -> "Array":
        """The same layout over new values with the same number of rows (offsets shared). Values
        of another framework raise scree.BackendError, except where this Array's framework takes
        them itself: a JAX Array takes NumPy values (as jnp functions do)."""
        lay = self._layout
        ns = lay.ns
        if ns.owns(values):
            dv, do = ns.device(values), lay.device()
            if dv != do and dv is not None and do is not None:
                _backends.common(values=values, offsets=lay.offsets)  # raises, naming both devices
        else:
            adopted = ns.adopt(values)
            values = values if adopted is None else adopted
            _backends.common(values=values, offsets=lay.offsets)  # raises for another framework
        shape = ns.shape(values)
        if len(shape) < 1 or shape[0] != lay.total:
            raise ShapeError(f"with_values needs {lay.total} rows, got shape {tuple(shape)}")
        dtypes.checked_dtype(ns, values)
        return Array._over(values, lay)

    def map(self, fn: Callable[[Any], Any]) -> "Array":
        """Apply a token-wise function to values: ``arr.with_values(fn(arr.values))``."""
        return self.with_values(fn(self._values))

    def to(self, backend: str | None = None, device: str | None = None) -> "Array":
        """The same Array on another backend ('numpy', 'torch', 'jax', 'mlx') and/or device,
        through DLPack. On the CPU:

        * zero-copy: NumPy <-> torch; JAX -> NumPy and JAX -> torch; MLX -> NumPy and MLX -> torch.
        * NumPy / torch -> JAX shares memory when the buffer is 64-byte aligned (XLA's rule; torch's
          own allocations are, most NumPy arrays are not), else XLA copies; JAX also copies to
          canonicalise int64/float64 to 32 bits when jax_enable_x64 is off (int64 offsets become
          int32 there).
        * anything -> MLX copies: MLX imports host memory only by copying (its own rule).
        * NumPy views of JAX / MLX buffers are read-only (those arrays are immutable), and a torch
          tensor over one must not be written to. bfloat16 cannot go to NumPy (scree.DTypeError).

        Moving between devices copies. The host bookkeeping (host offsets, max_length) travels
        along, so no device sync follows. Converting away from torch detaches: autograd graphs do
        not cross frameworks."""
        target = self._ns if backend is None else _backends.get(backend)
        # host offsets travel as trusted bookkeeping: those of validate=False are checked first
        host = self._layout.host_offsets() if self._layout.unchecked else self._layout.host
        if target is self._ns:
            if device is None or device == self.device:
                return self
            values, offsets = target.to_backend(self._values, device), target.to_backend(self._offsets, device)
        else:
            src = self
            if target.name == "numpy" and self.device not in ("cpu", None):
                src = self.to(device="cpu")  # NumPy takes host memory only
            values = target.to_backend(src._ns.exportable(src._values), device)
            offsets = target.to_backend(src._ns.exportable(src._offsets), device)
        return Array._trusted(values, offsets, host, self._layout.max_length)

    # ---- pickle and copy -----------------------------------------------------------------------
    def __getstate__(self) -> tuple:
        """Pickled as its values and offsets, each by its own framework's pickling (so torch's
        DataLoader workers and torch.save / torch.load carry Arrays, CUDA tensors included), and
        the max_length the Layout knows. Unpickling runs Array(values, offsets, max_length=...)
        again (__setstate__): the offsets are validated where they arrive, as any data entering
        scree is (an Array made with validate=False over bad offsets raises scree.RaggedError
        there). `copy.copy` shares the values, `copy.deepcopy` copies them. For
        `torch.load(weights_only=True)`: `torch.serialization.add_safe_globals([scree.Array])`."""
        return (self._values, self._layout.offsets, self._layout.max_length)

    def __setstate__(self, state: tuple) -> None:
        values, offsets, max_length = state
        Array.__init__(self, values, offsets, max_length=max_length)

    # ---- elementwise math (scree._elementwise has the operand rules) ---------------------------
    __add__, __radd__ = _operator("add"), _operator("add", True)
    __sub__, __rsub__ = _operator("sub"), _operator("sub", True)
    __mul__, __rmul__ = _operator("mul"), _operator("mul", True)
    __truediv__, __rtruediv__ = _operator("truediv"), _operator("truediv", True)
    __floordiv__, __rfloordiv__ = _operator("floordiv"), _operator("floordiv", True)
    __mod__, __rmod__ = _operator("mod"), _operator("mod", True)
    __pow__, __rpow__ = _operator("pow"), _operator("pow", True)
    __and__, __rand__ = _operator("and"), _operator("and", True)
    __or__, __ror__ = _operator("or"), _operator("or", True)
    __xor__, __rxor__ = _operator("xor"), _operator("xor", True)
    __matmul__, __rmatmul__ = _operator("matmul"), _operator("matmul", True)
    __lt__, __le__, __gt__, __ge__ = _operator("lt"), _operator("le"), _operator("gt"), _operator("ge")
    __eq__, __ne__ = _operator("eq"), _operator("ne")  # type: ignore[assignment]
    __hash__ = object.__hash__  # (by identity, as torch tensors: == compares elementwise)
    __neg__, __pos__ = _unary(lambda v: -v, "neg"), _unary(lambda v: +v, "pos")
    __abs__, __invert__ = _unary(abs, "abs"), _unary(lambda v: ~v, "invert")

    def __bool__(self) -> bool:
        raise ArgumentError("the truth value of a scree.Array is ambiguous (== and the comparisons are "
                            "elementwise): use len(arr) for its number of sequences, or reduce the values")

    def expand(self, per_sequence: Any) -> Any:
        """A per-sequence array `(n, *f)` repeated over each sequence's tokens: `(total, ..., *f)`, ones
        inserted after the token axis so f broadcasts against the feature axes as NumPy aligns
        them. Operators do this by themselves for an operand of the values' rank with n rows;
        expand says it explicitly (e.g. where n == total). Differentiable; no device sync."""
        return _elementwise.expand(self, per_sequence)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """np.exp(a), np.add(a, x), np_x * a: NumPy ufuncs on the values (scree._elementwise)."""
        return _elementwise.array_ufunc(self, ufunc, method, inputs, kwargs)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        """torch.exp(a), F.gelu(a), F.linear(a, W): torch functions on the values (scree._elementwise)."""
        return _elementwise.torch_function(cls, func, args, kwargs)

    # ---- reductions ----------------------------------------------------------------------------
    def sum(self) -> Any:
        """Per-sequence sum over tokens -> `(n, *feature)`; bool and integers sum to int64 (int32 on
        JAX without x64), wrapping on overflow as NumPy and torch do; empty -> 0. Complex values
        raise scree.DTypeError (as mean and max do)."""
        return _OPS.reduce(self, "sum")

    def mean(self) -> Any:
        """Per-sequence mean over tokens -> `(n, *feature)`; floating dtypes only; empty -> NaN."""
        return _OPS.reduce(self, "mean")

    def max(self) -> Any:
        """Per-sequence max over tokens -> `(n, *feature)`; empty -> -inf (lowest int for integers,
        False for bool); NaN propagates; complex values have no order: scree.DTypeError."""
        return _OPS.reduce(self, "max")

    def min(self) -> Any:
        """Per-sequence min over tokens -> `(n, *feature)`; empty -> +inf (highest int for integers,
        True for bool); NaN propagates."""
        return _OPS.reduce(self, "min")

    def prod(self) -> Any:
        """Per-sequence product over tokens -> `(n, *feature)`; bool and integers multiply in int64
        (wrapping, as NumPy and torch); empty -> 1."""
        return _OPS.reduce(self, "prod")

    def any(self) -> Any:
        """Per-sequence: is any token nonzero -> `(n, *feature)` bool; empty -> False."""
        return _OPS.reduce(self, "any")

    def all(self) -> Any:
        """Per-sequence: are all tokens nonzero -> `(n, *feature)` bool; empty -> True."""
        return _OPS.reduce(self, "all")

    def argmax(self) -> Any:
        """Per-sequence position (within the sequence) of the first largest token -> `(n, *feature)`
        int64; a NaN counts as the largest (as np.argmax); empty -> -1."""
        return _OPS.reduce(self, "argmax")

    def argmin(self) -> Any:
        """Per-sequence position of the first smallest token -> `(n, *feature)` int64; NaN counts
        as the smallest (as np.argmin); empty -> -1."""
        return _OPS.reduce(self, "argmin")

    def logsumexp(self) -> Any:
        """Per-sequence log(sum(exp(x))) over tokens -> `(n, *feature)`, computed stably (shifted by
        the largest finite value); floats only; empty -> -inf."""
        return _OPS.reduce(self, "logsumexp")

    def var(self, ddof: int = 0) -> Any:
        """Per-sequence variance over tokens -> `(n, *feature)`: the mean squared deviation from the
        sequence's mean, divided by length - ddof (ddof=0 as NumPy; torch's default is 1); floats
        only; NaN where length <= ddof (an empty sequence included)."""
        return _OPS.reduce(self, "var", _ddof(ddof))

    def std(self, ddof: int = 0) -> Any:
        """Per-sequence standard deviation, the square root of var(ddof)."""
        return _OPS.reduce(self, "std", _ddof(ddof))

    def softmax(self) -> "Array":
        """Softmax over each sequence's tokens (per feature column), the same layout; computed
        stably; floats only. A column of -inf gives NaN (as torch)."""
        return _OPS.softmax(self, False)

    def cumsum(self) -> "Array":
        """Running sum over each sequence's tokens, the same layout (each sequence starts from
        0); bool and integers sum into int64, wrapping (as torch.cumsum)."""
        return _OPS.cumsum(self)

    def log_softmax(self) -> "Array":
        """log(softmax) over each sequence's tokens, computed as x - logsumexp (no log of 0)."""
        return _OPS.softmax(self, True)

    def __repr__(self) -> str:
        n = self.num_sequences
        if self._host_offsets_without_sync() is not None:
            lens = np.diff(self.host_offsets).tolist()
            shown = ", ".join(map(str, lens[:8])) + (", ..." if n > 8 else "")
            lengths = f"lengths=[{shown}], "
        else:
            lengths = ""
        return (f"scree.Array(backend={self.backend}, device={self.device}, n={n}, total={self.total}, "
                f"{lengths}feature_shape={self.feature_shape}, dtype={self._ns.dtype_name(self._values)})")

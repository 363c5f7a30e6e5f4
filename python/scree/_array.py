"""The scree.Array type: `values` (total, *feature) plus `offsets` (n+1), both native arrays of one
backend and device. Invariants are checked once, in C++ (RaggedLayout), when data enters; the
host-side offsets, lengths and max_length are kept with the object so no kernel call has to sync
a device to learn them. Array is immutable: every operation returns a new Array or native array."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from scree import _backends, _C
from scree._errors import ArgumentError, BackendError, DTypeError, ShapeError

__all__ = ["Array"]


def _host_index(ns: ModuleType, x: Any) -> np.ndarray:
    """A host int64 NumPy copy/view of int32/int64 offsets; DTypeError for any other dtype."""
    if ns.dtype_name(x) not in ("int32", "int64"):
        raise DTypeError(f"offsets must be int32 or int64, got {ns.dtype_name(x)}")
    host = ns.to_numpy(x)
    return np.ascontiguousarray(host, dtype=np.int64)


class Array:
    """A batch of variable-length sequences stored packed.

    ``values`` has shape ``(total, *feature)``; ``offsets`` has length ``n + 1`` with
    ``offsets[0] == 0``, non-decreasing, ``offsets[-1] == total``: sequence ``i`` is
    ``values[offsets[i]:offsets[i+1]]``. Both are native arrays (NumPy, torch, JAX or MLX) of one
    device.

    ``validate=False`` skips the check here and is meant for trusted callers that produced the
    offsets themselves (and for device offsets, where checking costs one host transfer). The
    compiled host kernels still re-check the host offsets (O(n), cheap) before touching memory,
    so bad offsets raise rather than crash there; device paths trust them.
    ``max_length``, when known, spares a device sync for offsets living on a GPU. Like
    FlashAttention's ``max_seqlen`` it may be an upper bound: padding then uses that length.
    """

    __slots__ = ("_values", "_offsets", "_ns", "_host", "_max_length", "_cu")

    def __init__(self, values: Any, offsets: Any, *, validate: bool = True, max_length: int | None = None):
        ns = _backends.of(values)
        if isinstance(offsets, (list, tuple)):
            offsets = ns.asarray(offsets, dtype="int64" if len(offsets) == 0 else None, like=values)
        _backends.common(values=values, offsets=offsets)
        if len(ns.shape(values)) < 1:
            raise ShapeError("values must have at least one dimension (total, *feature), got a 0-D array")
        host = None
        if validate or ns.is_host(offsets):
            host = _host_index(ns, offsets)
        if validate:
            _, _, max_len = _C.validate_offsets(host, ns.shape(values)[0])
            if max_length is not None and max_length < max_len:
                raise ArgumentError(f"max_length={max_length} is smaller than the longest sequence ({max_len})")
            max_length = max_len if max_length is None else max_length
        self._init(ns, values, offsets, host, max_length)

    def _init(self, ns: ModuleType, values: Any, offsets: Any, host: np.ndarray | None, max_length: int | None) -> None:
        self._ns = ns
        self._values = values
        self._offsets = offsets
        self._host = host
        self._max_length = max_length
        self._cu = None

    @classmethod
    def _trusted(cls, values: Any, offsets: Any, host: np.ndarray | None = None,
                 max_length: int | None = None) -> "Array":
        """Build without validation from parts scree computed itself."""
        arr = cls.__new__(cls)
        arr._init(_backends.of(values), values, offsets, host, max_length)
        return arr

    @classmethod
    def _unflattened(cls, values: Any, offsets: Any) -> "Array":
        """Rebuild from pytree leaves (JAX's unflatten; see _backends/jax.py): no validation and no
        host bookkeeping, which is recomputed lazily where the offsets are concrete. JAX's tree
        utilities also unflatten placeholders (None, object()), so the leaves are not checked."""
        arr = cls.__new__(cls)
        try:
            ns = _backends.of(values)
        except BackendError:
            ns = _backends.get("jax")
        arr._init(ns, values, offsets, None, None)
        return arr

    # ---- layout ----------------------------------------------------------------------------
    @property
    def values(self) -> Any:
        """The packed values, shape (total, *feature)."""
        return self._values

    @property
    def offsets(self) -> Any:
        """The offsets (n+1), as given (int32 or int64), on the values' device."""
        return self._offsets

    @property
    def host_offsets(self) -> np.ndarray:
        """Offsets as host int64 NumPy, kept with the Array (computed once; for device offsets the
        first access is the only synchronisation)."""
        if self._host is None:
            self._host = _host_index(self._ns, self._offsets)
        return self._host

    @property
    def lengths(self) -> Any:
        """Per-sequence lengths (n,), int64, native, on the values' device (no host sync)."""
        if self._ns.is_host(self._offsets):
            return self._ns.from_numpy(np.diff(self.host_offsets), like=self._offsets)
        off = self._ns.astype(self._offsets, "int64")
        return off[1:] - off[:-1]

    def _known_host_offsets(self) -> np.ndarray | None:
        """host_offsets, or None where the host cannot know them (offsets traced under jax.jit)."""
        if self._host is None and self._ns.is_traced(self._offsets):
            return None
        return self.host_offsets

    def _host_offsets_without_sync(self) -> np.ndarray | None:
        """host_offsets when the host has them or can read them without a device sync (cached, or
        the offsets live in host memory); None for device offsets never copied and traced ones."""
        if self._host is None and (self._ns.is_traced(self._offsets) or not self._ns.is_host(self._offsets)):
            return None
        return self.host_offsets

    def _known_max_length(self) -> int | None:
        """max_length, or None where it cannot be known (offsets traced under jax.jit)."""
        if self._max_length is None and self._known_host_offsets() is None:
            return None
        return self.max_length

    @property
    def max_length(self) -> int:
        """Length of the longest sequence (0 for an empty batch); host int, cached. Unknown inside
        jax.jit, where the offsets are traced (scree.UnsupportedError): pass sizes explicitly there."""
        if self._max_length is None:
            h = self.host_offsets
            self._max_length = int(np.max(np.diff(h))) if len(h) > 1 else 0
        return self._max_length

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
        if self._cu is None:
            if self._ns.dtype_name(self._offsets) == "int32":
                self._cu = self._offsets
            else:
                if self.total > np.iinfo(np.int32).max:
                    raise ArgumentError(f"total = {self.total} tokens does not fit int32 cu_seqlens")
                self._cu = self._ns.astype(self._offsets, "int32")
        return self._cu

    # ---- derived per-token arrays --------------------------------------------------------------
    def positions(self, dtype: str = "int64") -> Any:
        """Index of each token within its own sequence, shape (total,) — what RoPE needs."""
        from scree.kernels import layout
        return layout.positions(self, dtype)

    def segment_ids(self, dtype: str = "int64") -> Any:
        """Index of the sequence each token belongs to, shape (total,)."""
        from scree.kernels import layout
        return layout.segment_ids(self, dtype)

    # ---- sequences -----------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> Any:
        """arr[i] -> sequence i (a native view); arr[a:b] -> Array view (zero-copy);
        arr[[i, j, ...]] or arr[index_array] -> Array of those sequences (a copy)."""
        n = self.num_sequences
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
            start, stop, step = index.indices(n)
            if step == 1:
                stop = max(stop, start)
                h = self.host_offsets
                lo, hi = int(h[start]), int(h[stop])
                host = h[start:stop + 1] - lo
                off = self._ns.from_numpy(host, like=self._offsets)
                lens = np.diff(host)
                return Array._trusted(self._values[lo:hi], off, host, int(lens.max()) if len(lens) else 0)
            index = np.arange(start, stop, step, dtype=np.int64)
        from scree.kernels import layout
        return layout.gather(self, index)

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

    def unpack(self) -> list[Any]:
        """The sequences as a list of native views (zero-copy)."""
        return list(self)

    # ---- conversions ---------------------------------------------------------------------------
    def to_padded(self, pad_value: Any = 0, padding_side: str = "right",
                  max_length: int | None = None) -> tuple[Any, Any]:
        """(padded, mask): padded (n, L, *feature) with L = max_length or the longest sequence,
        mask (n, L) bool, True at tokens. padding_side='left' right-aligns each sequence."""
        from scree.kernels import layout
        return layout.to_padded(self, pad_value, padding_side, max_length)

    def with_values(self, values: Any) -> "Array":
        """The same layout over new values with the same number of rows (offsets shared). Values
        of another framework raise scree.BackendError, except where this Array's framework takes
        them itself: a JAX Array takes NumPy values (as jnp functions do)."""
        if not self._ns.owns(values):
            adopted = self._ns.adopt(values)
            values = values if adopted is None else adopted
        ns = _backends.common(values=values, offsets=self._offsets)
        if len(ns.shape(values)) < 1 or ns.shape(values)[0] != self.total:
            raise ShapeError(f"with_values needs {self.total} rows, got shape {tuple(ns.shape(values))}")
        arr = Array._trusted(values, self._offsets, self._host, self._max_length)
        arr._cu = self._cu
        return arr

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
        return Array._trusted(values, offsets, self._host, self._max_length)

    # ---- reductions ----------------------------------------------------------------------------
    def sum(self) -> Any:
        """Per-sequence sum over tokens -> (n, *feature); integers sum to int64; empty -> 0."""
        from scree.kernels import layout
        return layout.reduce(self, "sum")

    def mean(self) -> Any:
        """Per-sequence mean over tokens -> (n, *feature); floating dtypes only; empty -> NaN."""
        from scree.kernels import layout
        return layout.reduce(self, "mean")

    def max(self) -> Any:
        """Per-sequence max over tokens -> (n, *feature); empty -> -inf (lowest int for integers)."""
        from scree.kernels import layout
        return layout.reduce(self, "max")

    def __repr__(self) -> str:
        n = self.num_sequences
        if self._host is not None or self._ns.is_host(self._offsets):
            lens = np.diff(self.host_offsets).tolist()
            shown = ", ".join(map(str, lens[:8])) + (", ..." if n > 8 else "")
            lengths = f"lengths=[{shown}], "
        else:
            lengths = ""
        return (f"scree.Array(backend={self.backend}, device={self.device}, n={n}, total={self.total}, "
                f"{lengths}feature_shape={self.feature_shape}, dtype={self._ns.dtype_name(self._values)})")

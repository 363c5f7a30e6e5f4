"""JAX backend namespace: the same names as _backends/numpy.py over `jax.Array` values (concrete or
traced). Imported only after the user imported jax (detection goes through sys.modules).

Loading this namespace (scree._backends.get("jax")) also makes `scree.Array` a JAX pytree: the
registration lives in scree._connect.jax_pytree and runs through scree._backends.on_load.

Two JAX habits shape this module:

* JAX arrays are immutable and may live on an accelerator, so the C++ host kernels never write into
  them: `is_host` is False and every layout op runs `scree.kernels.reference` with `jax.numpy` ops
  (jit-able, differentiable, vmap-able).
* With `jax_enable_x64` off (JAX's default), 64-bit dtypes do not exist: a request for "int64" or
  "float64" gives int32 / float32, silently, exactly as `jnp.asarray` does with NumPy int64 input.
  Offsets, lengths, positions and segment ids are then int32, and float64 values become float32.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scree._backends import numpy as _NP
from scree._backends.protocol import Landed
from scree._errors import ArgumentError, BackendError, DTypeError, UnsupportedError

name = "jax"
Array = jax.Array
safe_indexing = True  # (XLA clamps)

_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "bfloat16",
          "float32", "float64", "complex64", "complex128")


def _dt(name_: str) -> Any:
    """The JAX dtype for a scree dtype name, canonicalised (int64 -> int32 without x64)."""
    if name_ not in _NAMES:
        raise DTypeError(f"JAX has no dtype {name_!r}")
    return jax.dtypes.canonicalize_dtype(jnp.dtype(name_))


def _x64() -> bool:
    return bool(jax.config.jax_enable_x64)


def max_extent() -> int:
    """The largest extent of an axis (and index) scree's JAX ops take: without jax_enable_x64 its
    positions, segment ids and offsets are int32, so 2**31 - 1."""
    return sys.maxsize if _x64() else np.iinfo(np.int32).max


def _fits_32_bits(x: Any) -> None:
    """Without jax_enable_x64 JAX narrows 64-bit integers to 32 bits by wrapping them (2**40 -> 0,
    silently); ArgumentError where x's values would wrap. x: any framework's array (its minimum
    and maximum read on the host, device arrays copied there)."""
    name = str(getattr(x, "dtype", "")).rpartition(".")[2]
    if _x64() or name not in ("int64", "uint64") or not int(np.prod(getattr(x, "shape", ()))):
        return
    try:
        h = np.from_dlpack(x) if not isinstance(x, np.ndarray) else x
    except (BufferError, RuntimeError, TypeError, ValueError):  # device memory: a copy
        h = np.asarray(x.cpu() if hasattr(x, "cpu") else x)
    lo, hi = int(h.min()), int(h.max())
    info = np.iinfo(np.uint32 if name == "uint64" else np.int32)
    if lo < info.min or hi > info.max:
        raise ArgumentError(f"{name} values in [{lo}, {hi}] do not fit {info.dtype}, JAX's integer type without "
                            "jax_enable_x64 (they would wrap): jax.config.update('jax_enable_x64', True) keeps them")


def owns(x: Any) -> bool:
    return isinstance(x, jax.Array)


def adopt(x: Any) -> Any:
    """x as a JAX array where JAX itself takes it as one: NumPy arrays, which every jnp function
    accepts (and which JAX's own tools feed back in: jax.test_util.check_grads perturbs inputs in
    NumPy), else None."""
    return jnp.asarray(x) if isinstance(x, np.ndarray) else None


def is_traced(x: Any) -> bool:
    """Whether x is an abstract tracer (inside jax.jit / vmap / a staged grad) whose value the host
    cannot read. Tracers of eager jax.grad / jvp carry a concrete value and count as not traced."""
    return isinstance(x, jax.core.Tracer) and _concrete(x) is None


def _concrete(x: Any) -> Any:
    try:  # private but stable since jax 0.4.36; without it every tracer counts as abstract
        from jax._src.core import to_concrete_value
    except ImportError:  # pragma: no cover - older/newer jax
        return None
    try:
        return to_concrete_value(x)
    except Exception:  # pragma: no cover - defensive: treat as abstract
        return None


def _device_of(x: Any) -> Any:
    """The jax.Device holding x, or None for a tracer (its placement is not known yet)."""
    if isinstance(x, jax.core.Tracer):
        return None
    devices = x.devices()
    return next(iter(devices)) if len(devices) == 1 else None


def _device_name(d: Any) -> str:
    # torch's naming: "cpu" for the host, "<platform>:<id>" for accelerators ("cuda:0").
    return "cpu" if d.platform == "cpu" and d.id == 0 else f"{'cuda' if d.platform == 'gpu' else d.platform}:{d.id}"


def device(x: Any) -> str | None:
    """'cpu', 'cuda:0', ...; None for a traced array (inside jit its placement is decided by XLA),
    and for an array sharded over several devices, a sorted comma-separated list."""
    if isinstance(x, jax.core.Tracer):
        return None
    devices = x.devices()
    return ",".join(sorted(_device_name(d) for d in devices))


def is_host(x: Any) -> bool:
    """Always False: JAX buffers are immutable, so the C++ kernels (which write their outputs in
    place) never serve JAX arrays; the jnp reference does."""
    return False


def host_readable(x: Any) -> bool:
    """A concrete array whose buffers are all in host memory (JAX's CPU devices)."""
    if isinstance(x, jax.core.Tracer):
        return False
    return all(d.platform == "cpu" for d in x.devices())


def is_capturing(x: Any) -> bool:
    """Never: no graph capture here."""
    return False


class _AsyncCopy:
    """A JAX array whose host copy was started (copy_to_host_async); ready once it has been computed."""

    __slots__ = ("_x",)

    def __init__(self, x: Any):
        self._x = x
        x.copy_to_host_async()

    def ready(self) -> bool:
        return bool(self._x.is_ready())

    def value(self) -> np.ndarray:
        # An explicit transfer (jax.device_get): jax.transfer_guard("disallow") allows it.
        return np.asarray(jax.device_get(self._x))


def readback(x: Any) -> Any:
    """Host copy of x, started without waiting (JAX dispatches asynchronously)."""
    if host_readable(x):
        return Landed(to_numpy(x))
    return _AsyncCopy(x)


@jax.jit
def _summary(off: Any) -> Any:
    if off.shape[0] < 2:
        zero = jnp.zeros((1,), off.dtype)
        return jnp.concatenate([off, off, zero, zero])
    steps = off[1:] - off[:-1]
    return jnp.stack([off[0], off[-1], jnp.min(steps), jnp.max(steps)])


def offsets_summary(offsets: Any) -> Any:
    """[offsets[0], offsets[-1], smallest step, largest step] on offsets' device, one jitted call
    (compiled once per number of offsets), dispatched asynchronously, its host copy started behind
    it (readback)."""
    return readback(_summary(offsets))


def version(x: Any) -> int | None:
    """JAX arrays are immutable."""
    return 0


def needs_autograd(x: Any) -> bool:
    return False


def dtype(name_: str) -> Any:
    return _dt(name_)


# dtype -> name: every Array construction asks, and dtype.name costs ~2 us where a hit costs ~50 ns
_NAME_OF: dict[Any, str] = {}


def dtype_name(x: Any) -> str:
    dt = x.dtype
    name = _NAME_OF.get(dt)
    if name is None:
        name = _NAME_OF[dt] = np.dtype(dt).name
    return name


def is_floating(x: Any) -> bool:
    return bool(jnp.issubdtype(x.dtype, jnp.floating))


def is_integer(x: Any) -> bool:
    return bool(jnp.issubdtype(x.dtype, jnp.integer))


def shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy view (CPU, read-only: JAX buffers are immutable) or copy (accelerator).
    UnsupportedError for an abstract tracer: under jax.jit the host cannot see values."""
    if isinstance(x, jax.core.Tracer):
        c = _concrete(x)
        if c is None:
            raise UnsupportedError(
                "this needs the host offsets of an Array whose offsets are traced (inside jax.jit or "
                "jax.vmap), which the host cannot read: build the Array outside the jitted function and "
                "pass it in (scree.Array is a pytree), construct traced Arrays with validate=False, and "
                "give static sizes explicitly (e.g. to_padded(max_length=...))")
        x = c
    return np.asarray(x)


def from_numpy(a: np.ndarray, like: Any = None) -> Any:
    _fits_32_bits(a)
    d = None if like is None else _device_of(like)
    out = jnp.asarray(a)
    return out if d is None else jax.device_put(out, d)


def asarray(obj: Any, dtype: str | None = None, like: Any = None) -> Any:
    if isinstance(obj, (list, tuple)) and all(type(v) is int for v in obj):  # (jnp.asarray: OverflowError)
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray):
        _fits_32_bits(obj)
    out = jnp.asarray(obj, dtype=None if dtype is None else _dt(dtype))
    d = None if like is None else _device_of(like)
    return out if d is None else jax.device_put(out, d)


def data_ptr(x: Any) -> int:
    return int(x.unsafe_buffer_pointer())


def by_address(x: Any) -> bool:
    return False  # XLA owns the buffer: read through host_view


def _place(x: Any, like: Any) -> Any:
    d = None if like is None else _device_of(like)
    return x if d is None else jax.device_put(x, d)


def itemsize(x: Any) -> int:
    """Bytes per element."""
    return int(np.dtype(x.dtype).itemsize)


def host_view(x: Any) -> np.ndarray:
    """A read-only host NumPy view of x (CPU) for C++ kernels that only read it."""
    return np.asarray(to_numpy(x))


def empty(shape_: Sequence[int], dtype: str, like: Any = None) -> Any:
    return _place(jnp.zeros(tuple(shape_), dtype=_dt(dtype)), like)  # XLA has no uninitialised buffers


def empty_like(x: Any) -> Any:
    return _place(jnp.zeros(tuple(x.shape), dtype=x.dtype), x)  # XLA has no uninitialised buffers


def zeros(shape_: Sequence[int], dtype: str, like: Any = None) -> Any:
    return _place(jnp.zeros(tuple(shape_), dtype=_dt(dtype)), like)


def full(shape_: Sequence[int], value: Any, dtype: str, like: Any = None) -> Any:
    return _place(jnp.full(tuple(shape_), value, dtype=_dt(dtype)), like)


def arange(n: int, dtype: str = "int64", like: Any = None) -> Any:
    return _place(jnp.arange(n, dtype=_dt(dtype)), like)


def astype(x: Any, dtype: str) -> Any:
    return x.astype(_dt(dtype))


def contiguous(x: Any) -> Any:
    return x


def is_contiguous(x: Any) -> bool:
    return True


def reshape(x: Any, shape_: Sequence[int]) -> Any:
    return jnp.reshape(x, tuple(shape_))


def concat(xs: Sequence[Any], axis: int = 0) -> Any:
    return jnp.concatenate(list(xs), axis=axis)


def stack(xs: Sequence[Any], axis: int = 0) -> Any:
    return jnp.stack(list(xs), axis=axis)


def repeat(x: Any, repeats: Any, total: int) -> Any:
    """x[i] repeated repeats[i] times, as a search over the running ends (static output length
    `total`: jit- and vmap-friendly, no host sync)."""
    ends = jnp.cumsum(repeats)
    return x[jnp.searchsorted(ends, jnp.arange(total, dtype=ends.dtype), side="right")]


def index_put(dst: Any, index: Any, values: Any) -> Any:
    """dst with dst[index] = values (functional: a new array)."""
    return dst.at[tuple(index)].set(values)


def rows_of_ranges(starts: Any, lengths: Any) -> Any:
    """(the sizes are read on the host: the result's length depends on them)"""
    return from_numpy(_NP.rows_of_ranges(to_numpy(starts), to_numpy(lengths)), like=starts)


def true_rows(mask: Any) -> Any:
    return from_numpy(_NP.true_rows(to_numpy(mask)), like=mask)


def masked_rows(padded: Any, mask: Any) -> Any:
    """padded[mask] for a boolean (n, L) mask: the rows where mask is true, in order (eager only:
    the result's length depends on the mask's values)."""
    return padded[mask]


def segment_reduce(values: Any, segment_ids: Any, n: int, op: str, offsets: Any = None) -> Any:
    """Rows of `values` reduced into n rows by (sorted) segment id, with jax.ops segment ops:
    sums accumulate in the widest float (float64 with x64, else float32); integers sum to int64
    (int32 without x64); empty segments give 0 (sum), 1 (prod), NaN (mean), -inf / lowest int (max)."""
    feat = values.shape[1:]
    floating = is_floating(values)
    if op == "sum":
        acc = _dt("float64") if floating else _dt("int64")
        out = jax.ops.segment_sum(values.astype(acc), segment_ids, num_segments=n, indices_are_sorted=True)
        return out.astype(values.dtype) if floating else out
    if op == "mean":
        acc = _dt("float64")
        total = jax.ops.segment_sum(values.astype(acc), segment_ids, num_segments=n, indices_are_sorted=True)
        counts = jax.ops.segment_sum(jnp.ones(segment_ids.shape, acc), segment_ids, num_segments=n,
                                     indices_are_sorted=True)
        return (total / counts.reshape((n,) + (1,) * len(feat))).astype(values.dtype)
    if op == "max":
        return jax.ops.segment_max(values, segment_ids, num_segments=n, indices_are_sorted=True)
    if op == "prod":
        acc = _dt("float64") if floating else _dt("int64")
        out = jax.ops.segment_prod(values.astype(acc), segment_ids, num_segments=n, indices_are_sorted=True)
        return out.astype(values.dtype) if floating else out
    raise ValueError(f"unknown reduction {op!r}")


def cumsum(x: Any) -> Any:
    return jnp.cumsum(x, axis=0)


# ---- math used by the reference kernels ------------------------------------------------------
def einsum(subscripts: str, *operands: Any) -> Any:
    # HIGHEST: no TF32/bf16 passes on accelerators, the reference must be the reference.
    return jnp.einsum(subscripts, *operands, precision=jax.lax.Precision.HIGHEST)


exp = jnp.exp
log = jnp.log
tanh = jnp.tanh
where = jnp.where
maximum = jnp.maximum
isfinite = jnp.isfinite


def sum(x: Any, axis: int, keepdims: bool = False) -> Any:  # noqa: A001 - namespace name
    return jnp.sum(x, axis=axis, keepdims=keepdims)


def amax(x: Any, axis: int, keepdims: bool = False) -> Any:
    return jnp.max(x, axis=axis, keepdims=keepdims)


def swapaxes(x: Any, a: int, b: int) -> Any:
    return jnp.swapaxes(x, a, b)


# ---- moving between frameworks ----------------------------------------------------------------
def exportable(x: Any) -> Any:
    """x as a DLPack producer for another framework (JAX arrays already are)."""
    return x


def _target_device(device_: Any) -> Any:
    """A jax.Device from 'cpu', 'cuda', 'cuda:1', 'gpu:0', a jax.Device, or None (no move)."""
    if device_ is None or isinstance(device_, jax.Device):
        return device_
    text = str(device_)
    platform, _, index = text.partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    try:
        devices = jax.devices(platform)
        return devices[int(index) if index else 0]
    except (RuntimeError, ValueError, IndexError):
        raise BackendError(f"JAX has no device {text!r}; it has {', '.join(map(str, jax.devices()))}") from None


def to_backend(x: Any, device_: Any = None) -> Any:
    """Bring a native array of another framework (or a JAX array to another device) here.

    Zero-copy through DLPack where XLA allows it: torch CPU tensors (64-byte aligned) and
    accelerator buffers are shared. XLA copies on import when a host buffer is not 64-byte aligned
    (most NumPy arrays; MLX arrays) or when the dtype must be canonicalised (int64/float64 without
    jax_enable_x64); the values are the same either way. The resulting JAX array must not be
    mutated through the source framework (JAX assumes immutable buffers)."""
    if isinstance(x, jax.Array):
        out = x
    elif hasattr(x, "__dlpack__"):
        _fits_32_bits(x)
        try:
            out = jnp.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            out = jnp.asarray(np.asarray(x))  # e.g. a read-only NumPy array that refuses DLPack export
    else:
        out = asarray(x)
    target = _target_device(device_)
    if target is not None and _device_of(out) != target:
        out = jax.device_put(out, target)
    return out


def kernel_arg(x: Any) -> Any:
    """scree._C reads x as it is."""
    return x


def stream(x: Any) -> int:
    """XLA hands its stream to the FFI handlers itself; nothing calls scree._C with JAX arrays."""
    return 0


def deterministic_algorithms() -> bool:
    """XLA's own switch for reproducible GPU results (XLA_FLAGS=--xla_gpu_deterministic_ops=true)
    asks the attention backward for the same."""
    return "--xla_gpu_deterministic_ops=true" in os.environ.get("XLA_FLAGS", "")


def is_tracing() -> bool:
    """Whether a tracing compiler is running. JAX tracing is seen per array instead (is_traced:
    under jax.jit the offsets themselves are tracers), so this is False."""
    return False

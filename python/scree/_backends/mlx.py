"""MLX backend namespace: the same names as _backends/numpy.py over `mlx.core.array`. Imported only
after the user imported mlx (detection goes through sys.modules).

MLX arrays are lazy and live in unified memory; an array has no device of its own (each op runs on
the default device or a given stream), so `device` reports the default device ('cpu' or 'gpu').
The C++ host kernels never write into MLX buffers (`is_host` is False): every layout op runs
`scree.kernels.reference` with `mlx.core` ops, which are differentiable with `mx.grad` and run
on Metal on Apple machines. float64 exists on the CPU only (MLX's rule), so the float64 reference
of varlen attention (upcast=True) needs the CPU device.
"""

from __future__ import annotations

from typing import Any, Sequence

import mlx.core as mx
import numpy as np

from scree._backends import numpy as _NP
from scree._backends.protocol import Landed
from scree._errors import BackendError, DTypeError

name = "mlx"
Array = mx.array
safe_indexing = False  # (no bounds checks: out-of-range scatter indices segfaulted (MLX 0.32))

_DTYPES = {
    "bool": mx.bool_, "int8": mx.int8, "int16": mx.int16, "int32": mx.int32, "int64": mx.int64,
    "uint8": mx.uint8, "uint16": mx.uint16, "uint32": mx.uint32, "uint64": mx.uint64,
    "float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32, "float64": mx.float64,
    "complex64": mx.complex64,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def _dt(name_: str) -> Any:
    try:
        return _DTYPES[name_]
    except KeyError:
        raise DTypeError(f"MLX has no dtype {name_!r}") from None


def owns(x: Any) -> bool:
    return isinstance(x, mx.array)


def adopt(x: Any) -> Any:
    """x as this backend's array where the framework itself takes it as one (MLX: never; other
    frameworks' arrays are converted explicitly with Array.to), else None."""
    return None


def is_traced(x: Any) -> bool:
    return False


def device(x: Any) -> str:
    """'cpu' or 'gpu': the default device MLX runs ops on (arrays live in unified memory)."""
    return "cpu" if mx.default_device().type == mx.DeviceType.cpu else "gpu"


def is_host(x: Any) -> bool:
    """Always False: the C++ kernels write outputs in place, which MLX buffers do not allow; the
    mlx.core reference serves MLX arrays."""
    return False


def host_readable(x: Any) -> bool:
    """MLX arrays live in unified memory: the host reads them (after evaluating them) directly."""
    return True


def is_capturing(x: Any) -> bool:
    """Never: no graph capture here."""
    return False


def readback(x: Any) -> Landed:
    return Landed(to_numpy(x))


def offsets_summary(offsets: Any) -> Landed:
    """[offsets[0], offsets[-1], smallest step, largest step] (steps 0 for a single offset), landed:
    MLX arrays live in unified memory, so the host reads the result as soon as it is evaluated."""
    if offsets.shape[0] < 2:
        zero = mx.zeros((1,), dtype=offsets.dtype)
        return Landed(to_numpy(mx.concatenate([offsets, offsets, zero, zero])))
    steps = offsets[1:] - offsets[:-1]
    return Landed(to_numpy(mx.stack([offsets[0], offsets[-1], mx.min(steps), mx.max(steps)])))


def version(x: Any) -> int | None:
    """MLX keeps no write counter."""
    return None


def needs_autograd(x: Any) -> bool:
    return False


def dtype(name_: str) -> Any:
    return _dt(name_)


def dtype_name(x: Any) -> str:
    return _NAMES.get(x.dtype, str(x.dtype).removeprefix("mlx.core."))


def is_floating(x: Any) -> bool:
    return bool(mx.issubdtype(x.dtype, mx.floating))


def is_integer(x: Any) -> bool:
    return bool(mx.issubdtype(x.dtype, mx.integer))


def shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy copy (evaluates x); bfloat16, which NumPy lacks, is widened to float32."""
    if x.dtype == mx.bfloat16:
        x = x.astype(mx.float32)
    return np.array(x)


def from_numpy(a: np.ndarray, like: Any = None) -> Any:
    # The dtype must be named: mx.array(float64 NumPy) would otherwise give float32. mx.array
    # refuses negative strides (a view such as x[::-1]: "Cannot convert DLPack arrays with negative
    # strides", tools/fuzz); it copies anyway, so such a view is made contiguous first.
    if any(st < 0 for st in a.strides):
        a = a.copy(order="C")  # (ascontiguousarray keeps a 1-element view's stride: "contiguous")
    return mx.array(a, dtype=_dt(np.dtype(a.dtype).name))


def asarray(obj: Any, dtype: str | None = None, like: Any = None) -> Any:
    if isinstance(obj, mx.array):
        return obj if dtype is None else obj.astype(_dt(dtype))
    if dtype is None:
        return from_numpy(np.asarray(obj))
    return mx.array(obj, dtype=_dt(dtype))


def data_ptr(x: Any) -> int:
    """Address of x's buffer (evaluates x; read through a zero-copy NumPy view)."""
    if x.dtype == mx.bfloat16:
        x = x.view(mx.int16)
    return int(np.from_dlpack(x).ctypes.data) if x.size else 0


def itemsize(x: Any) -> int:
    """Bytes per element."""
    return int(x.itemsize)


def by_address(x: Any) -> bool:
    return False  # lazy arrays: read through host_view, which evaluates


def host_view(x: Any) -> np.ndarray:
    """A host NumPy view of x (evaluates it) for C++ kernels that only read it; bfloat16, which
    NumPy lacks, as a copy widened to float32."""
    return to_numpy(x) if x.dtype == mx.bfloat16 else np.from_dlpack(x)


def empty(shape_: Sequence[int], dtype: str, like: Any = None) -> Any:
    return mx.zeros(tuple(shape_), dtype=_dt(dtype))


def empty_like(x: Any) -> Any:
    return mx.zeros(x.shape, dtype=x.dtype)


def zeros(shape_: Sequence[int], dtype: str, like: Any = None) -> Any:
    return mx.zeros(tuple(shape_), dtype=_dt(dtype))


def full(shape_: Sequence[int], value: Any, dtype: str, like: Any = None) -> Any:
    # The fill as a 0-d array of the dtype: mx.full(shape, 0, dtype=mx.bool_) gives int32, and a
    # Python int past int64 (a uint64 value) raises std::bad_cast (MLX 0.32) unless it is NumPy's.
    if isinstance(value, int) and value > np.iinfo(np.int64).max:
        value = np.uint64(value)
    return mx.full(tuple(shape_), mx.array(value, dtype=_dt(dtype)))


def arange(n: int, dtype: str = "int64", like: Any = None) -> Any:
    return mx.arange(n, dtype=_dt(dtype))


def astype(x: Any, dtype: str) -> Any:
    return x.astype(_dt(dtype))


def max_extent() -> int:
    """The largest extent of an axis MLX arrays take: their shapes are int32."""
    return np.iinfo(np.int32).max


def contiguous(x: Any) -> Any:
    return x


def is_contiguous(x: Any) -> bool:
    return True


def reshape(x: Any, shape_: Sequence[int]) -> Any:
    return mx.reshape(x, tuple(shape_))


def concat(xs: Sequence[Any], axis: int = 0) -> Any:
    return mx.concatenate(list(xs), axis=axis)


def stack(xs: Sequence[Any], axis: int = 0) -> Any:
    return mx.stack(list(xs), axis=axis)


def repeat(x: Any, repeats: Any, total: int) -> Any:
    """x[i] repeated repeats[i] times (mx.repeat takes one int only): a search over the running
    ends, output length `total`."""
    ends = mx.cumsum(repeats.astype(mx.int64))
    return x[mx.searchsorted(ends, mx.arange(total, dtype=mx.int64), side="right")]


def index_put(dst: Any, index: Any, values: Any) -> Any:
    """dst[index] = values; returns dst (an MLX scatter, differentiable by mx.grad)."""
    index = tuple(index)
    # Nothing to write: MLX's scatter rejects empty updates into an empty array, and with a zero-size
    # feature dimension the evaluated scatter dies with SIGFPE (MLX 0.32) instead of doing nothing.
    if index[0].size == 0 or values.size == 0:
        return dst
    dst[index] = values
    return dst


def rows_of_ranges(starts: Any, lengths: Any) -> Any:
    """(the sizes are read on the host: the result's length depends on them)"""
    return from_numpy(_NP.rows_of_ranges(to_numpy(starts), to_numpy(lengths)), like=starts)


def true_rows(mask: Any) -> Any:
    return from_numpy(_NP.true_rows(to_numpy(mask)), like=mask)


def masked_rows(padded: Any, mask: Any) -> Any:
    """padded[mask] for a boolean (n, L) mask (MLX has no boolean indexing: the mask is read on the
    host, as the result's length depends on it, and the rows are gathered by index)."""
    n, length = mask.shape
    rows = np.flatnonzero(to_numpy(mask).reshape(-1))
    flat = mx.reshape(padded, (n * length, *padded.shape[2:]))
    return flat[mx.array(rows.astype(np.int64))]


def segment_reduce(values: Any, segment_ids: Any, n: int, op: str, offsets: Any = None) -> Any:
    """Rows of `values` reduced into n rows by segment id with scatter-add / scatter-max
    (`array.at[...]`). Floats accumulate in float32 (float64 stays float64), integers sum to int64;
    empty segments give 0 (sum), NaN (mean), -inf / lowest int (max); max propagates NaN as NumPy
    does (MLX's scatter-max would drop it)."""
    feat = tuple(values.shape[1:])
    floating = is_floating(values)
    acc = (mx.float64 if values.dtype == mx.float64 else mx.float32) if floating else mx.int64

    def scatter(base: Any, how: str, updates: Any) -> Any:
        # MLX's scatter rejects empty updates (no tokens), and dies with SIGFPE on zero-size rows (a
        # zero-size feature dimension; MLX 0.32): nothing to scatter, the base is the answer then.
        return base if segment_ids.size == 0 or updates.size == 0 else getattr(base.at[segment_ids], how)(updates)

    if op == "sum":
        out = scatter(mx.zeros((n, *feat), dtype=acc), "add", values.astype(acc))
        return out.astype(values.dtype) if floating else out
    if op == "mean":
        total = scatter(mx.zeros((n, *feat), dtype=acc), "add", values.astype(acc))
        counts = scatter(mx.zeros((n,), dtype=acc), "add", mx.ones(segment_ids.shape, dtype=acc))
        return (total / counts.reshape((n,) + (1,) * len(feat))).astype(values.dtype)
    if op == "max":
        low = -float("inf") if floating else int(np.iinfo(dtype_name(values)).min)
        out = scatter(mx.full((n, *feat), low, dtype=values.dtype), "maximum", values)
        if floating:
            nans = scatter(mx.zeros((n, *feat), dtype=mx.int32), "add", mx.isnan(values).astype(mx.int32))
            out = mx.where(nans > 0, mx.array(float("nan"), dtype=values.dtype), out)
        return out
    if op == "prod":
        out = scatter(mx.ones((n, *feat), dtype=acc), "multiply", values.astype(acc))
        return out.astype(values.dtype) if floating else out
    raise ValueError(f"unknown reduction {op!r}")


def cumsum(x: Any) -> Any:
    return mx.cumsum(x, axis=0)


# ---- math used by the reference kernels ------------------------------------------------------
einsum = mx.einsum
exp = mx.exp
log = mx.log
tanh = mx.tanh
where = mx.where
maximum = mx.maximum
isfinite = mx.isfinite


def sum(x: Any, axis: int, keepdims: bool = False) -> Any:  # noqa: A001 - namespace name
    return mx.sum(x, axis=axis, keepdims=keepdims)


def amax(x: Any, axis: int, keepdims: bool = False) -> Any:
    return mx.max(x, axis=axis, keepdims=keepdims)


def swapaxes(x: Any, a: int, b: int) -> Any:
    return mx.swapaxes(x, a, b)


# ---- moving between frameworks ----------------------------------------------------------------
def exportable(x: Any) -> Any:
    """x as a DLPack producer for another framework (evaluated on export), made contiguous: a view
    such as x[::-1] exports negative strides, on which torch's DLPack import aborts the process."""
    return mx.contiguous(x)


def to_backend(x: Any, device_: str | None = None) -> Any:
    """Bring a native array of another framework here. Always a copy on the CPU: MLX imports
    DLPack only by copying host memory (`mx.from_dlpack(..., copy=False)` refuses CPU buffers);
    the values and dtype are kept. `device` may be None or the default device's name ('cpu' /
    'gpu'): MLX arrays have no placement of their own (use mx.set_default_device)."""
    here = "cpu" if mx.default_device().type == mx.DeviceType.cpu else "gpu"
    if device_ is not None and str(device_) != here:
        raise BackendError(f"MLX arrays follow the default device ({here!r}); cannot place them on "
                           f"{device_!r}: call mx.set_default_device first")
    if isinstance(x, mx.array):
        return x
    kind = str(getattr(x, "dtype", "")).rpartition(".")[2]  # 'float64' in every framework's spelling
    if kind == "complex128":  # (mx.from_dlpack would narrow it to complex64, silently)
        raise DTypeError("MLX has no complex128: cast the values to complex64 first")
    if kind == "bfloat16" and isinstance(x, np.ndarray):  # ml_dtypes' type exports no DLPack
        return mx.array(x.view(np.uint16)).view(mx.bfloat16)
    if hasattr(x, "__dlpack__") and kind != "float64":
        try:
            return mx.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass  # e.g. a read-only NumPy array that refuses DLPack export: go through NumPy
    # mx.from_dlpack narrows float64 to float32; NumPy (a host view) + an explicit dtype keeps it.
    return from_numpy(np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x))


def kernel_arg(x: Any) -> Any:
    """scree._C reads x as it is."""
    return x


def stream(x: Any) -> int:
    """The compiled kernels see MLX arrays as host memory (NumPy views): no stream."""
    return 0


def deterministic_algorithms() -> bool:
    """MLX has no determinism switch (and the CPU kernels are deterministic)."""
    return False


def is_tracing() -> bool:
    """Whether a tracing compiler is running (mx.compile gives no such signal): False."""
    return False

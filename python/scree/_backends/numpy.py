"""NumPy backend namespace: the small set of array functions scree's generic code needs.
Every backend module defines the same names with the same meaning (see _backends/torch.py)."""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import numpy as np

from scree import _C
from scree._backends.protocol import Landed
from scree._errors import BackendError, DTypeError, OutOfMemoryError

name = "numpy"
Array = np.ndarray
safe_indexing = True  # (IndexError)

_DTYPES = {
    "bool": np.bool_, "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "float16": np.float16, "float32": np.float32, "float64": np.float64,
    "complex64": np.complex64, "complex128": np.complex128,
}


def _dt(name_: str) -> Any:
    """The NumPy type called name_; bfloat16 is ml_dtypes' (JAX's dependency, which gives NumPy
    one), looked up where it is loaded (an array of it exists only then)."""
    try:
        return _DTYPES[name_]
    except KeyError:
        ml = sys.modules.get("ml_dtypes")
        if name_ == "bfloat16" and ml is not None:
            return ml.bfloat16
        raise DTypeError(f"NumPy has no dtype {name_!r}" +
                         (" (ml_dtypes gives it one: import ml_dtypes)" if name_ == "bfloat16" else "")) from None


def _foreign(x: Any) -> bool:
    """Whether x's dtype is ml_dtypes' bfloat16 (kind 'V'; the only such dtype an Array takes):
    NumPy ufuncs serve it, the compiled kernels cannot read it (nanobind knows NumPy's own types)."""
    return x.dtype.kind == "V"


def owns(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def adopt(x: Any) -> Any:
    """x as this backend's array where the framework itself takes it as one (NumPy: never, other
    frameworks' arrays are converted explicitly with Array.to), else None."""
    return None


def is_traced(x: Any) -> bool:
    """Whether x's values are unknown to the host (a JAX tracer under jit); never for NumPy."""
    return False


def device(x: Any) -> str:
    return "cpu"


def is_host(x: Any) -> bool:
    """Whether the C++ CPU kernels can read x's memory directly: not ml_dtypes' bfloat16, which
    the reference serves with NumPy's own ops."""
    return not _foreign(x)


def host_readable(x: Any) -> bool:
    return True


def is_capturing(x: Any) -> bool:
    """Never: no graph capture here."""
    return False


def readback(x: Any) -> Landed:
    return Landed(x)


def _host_summary(offsets: np.ndarray) -> np.ndarray:
    """[offsets[0], offsets[-1], smallest step, largest step] of host offsets, int64 (steps 0 for a
    single offset), steps taken in int64 so int32 offsets cannot wrap; the torch backend uses it
    for CPU tensors too."""
    steps = np.diff(offsets.astype(np.int64, copy=False))
    lo, hi = (int(steps.min()), int(steps.max())) if steps.size else (0, 0)
    return np.array([offsets[0], offsets[-1], lo, hi], dtype=np.int64)


def offsets_summary(offsets: Any) -> Landed:
    """The four numbers of the device check, landed at once: NumPy arrays are host memory."""
    return Landed(_host_summary(offsets))


def version(x: Any) -> int | None:
    """NumPy keeps no write counter."""
    return None


def needs_autograd(x: Any) -> bool:
    return False


def dtype(name_: str) -> Any:
    return np.dtype(_dt(name_))


# dtype -> name: every Array construction asks, and dtype.name costs ~2 us where a hit costs ~50 ns
_NAME_OF: dict[Any, str] = {}


def dtype_name(x: Any) -> str:
    dt = x.dtype
    name = _NAME_OF.get(dt)
    if name is None:
        name = _NAME_OF[dt] = np.dtype(dt).name
    return name


def is_floating(x: Any) -> bool:
    return x.dtype.kind == "f" or (_foreign(x) and x.dtype.name == "bfloat16")


def is_integer(x: Any) -> bool:
    return np.issubdtype(x.dtype, np.integer)


def shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def to_numpy(x: Any) -> np.ndarray:
    return x


def from_numpy(a: np.ndarray, like: Any = None) -> np.ndarray:
    return a


def asarray(obj: Any, dtype: str | None = None, like: Any = None) -> np.ndarray:
    return np.asarray(obj, dtype=None if dtype is None else _dt(dtype))


def data_ptr(x: Any) -> int:
    return int(x.__array_interface__["data"][0])


def by_address(x: Any) -> bool:
    return False  # the array itself crosses for ~0.15 us, its __array_interface__ costs more


# Outputs of at least this many bytes come from scree's host block cache (include/scree/host_blocks.h):
# a fresh allocation's pages fault in on first write (~1.5 us a 4 KiB page on the 2-core VM; NumPy
# takes blocks above 32 MiB as fresh huge pages: a 16k-token short d128 forward 29.4-30.2 ms, 20.4-21.2
# with written memory), while a cached block was written by an earlier call. 256 KiB is 64 pages
# (~100 us of faults) against ~2 us for a cached block. torch's backend takes its CPU tensors here too.
HOST_CACHE_MIN_BYTES = 1 << 18


def host_block(nbytes: int, what: str = "an array") -> np.ndarray:
    """A 1-D uint8 array of nbytes over a cached host block (returned to the cache when the last
    array or tensor over it is freed); OutOfMemoryError naming `what` where there is no memory."""
    try:
        return _C.host_block(nbytes)
    except MemoryError:
        raise OutOfMemoryError(f"no host memory for {what} ({nbytes} bytes)") from None


def _cached(shape_: tuple[int, ...], dt: np.dtype, nbytes: int) -> np.ndarray:
    return host_block(nbytes, f"a {shape_} {dt} array").view(dt).reshape(shape_)


def empty(shape_: Sequence[int], dtype: str, like: Any = None) -> np.ndarray:
    dt = np.dtype(_dt(dtype))
    shape_ = tuple(shape_)
    nbytes = math.prod(shape_) * dt.itemsize
    if nbytes >= HOST_CACHE_MIN_BYTES:
        return _cached(shape_, dt, nbytes)
    return np.empty(shape_, dtype=dt)


def empty_like(x: Any) -> np.ndarray:
    if x.nbytes >= HOST_CACHE_MIN_BYTES:
        return _cached(x.shape, x.dtype, x.nbytes)
    return np.empty_like(x, order="C", subok=False)  # a plain ndarray, as empty gives, for memmap or masked x


def zeros(shape_: Sequence[int], dtype: str, like: Any = None) -> np.ndarray:
    return np.zeros(tuple(shape_), dtype=_dt(dtype))


def full(shape_: Sequence[int], value: Any, dtype: str, like: Any = None) -> np.ndarray:
    return np.full(tuple(shape_), value, dtype=_dt(dtype))


def arange(n: int, dtype: str = "int64", like: Any = None) -> np.ndarray:
    return np.arange(n, dtype=_dt(dtype))


def astype(x: Any, dtype: str) -> np.ndarray:
    return x.astype(_dt(dtype), copy=False)


def max_extent() -> int:
    """The largest extent of an axis (and index) NumPy arrays take: the platform's."""
    return sys.maxsize


def contiguous(x: Any) -> np.ndarray:
    return np.ascontiguousarray(x)


def itemsize(x: Any) -> int:
    """Bytes per element."""
    return int(x.itemsize)


def host_view(x: Any) -> np.ndarray:
    """The cheapest contiguous host object the C++ kernels accept for x (for per-sequence calls)."""
    return contiguous(x)


def is_contiguous(x: Any) -> bool:
    return bool(x.flags.c_contiguous)


def reshape(x: Any, shape_: Sequence[int]) -> np.ndarray:
    return x.reshape(tuple(shape_))


def concat(xs: Sequence[Any], axis: int = 0) -> np.ndarray:
    return np.concatenate(list(xs), axis=axis)


def stack(xs: Sequence[Any], axis: int = 0) -> np.ndarray:
    return np.stack(list(xs), axis=axis)


def repeat(x: Any, repeats: Any, total: int) -> np.ndarray:
    """x[i] repeated repeats[i] times; `total` == sum(repeats) (lets device backends avoid a sync)."""
    return np.repeat(x, repeats)


def index_put(dst: Any, index: Any, values: Any) -> np.ndarray:
    """dst[index] = values; returns dst (functional backends return a new array)."""
    dst[index] = values
    return dst


def rows_of_ranges(starts: Any, lengths: Any) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths) + np.arange(
        int(ends[-1]) if ends.size else 0, dtype=np.int64)


def true_rows(mask: Any) -> np.ndarray:
    return np.flatnonzero(mask).astype(np.int64)


def masked_rows(padded: Any, mask: Any) -> np.ndarray:
    """padded[mask] for a boolean (n, L) mask: the rows where mask is true, in order."""
    return padded[mask]


def segment_reduce(values: Any, segment_ids: Any, n: int, op: str, offsets: Any = None) -> np.ndarray:
    """Reduce rows of `values` into n rows by segment id: 'sum', 'mean', 'max' or 'prod'."""
    feat = values.shape[1:]
    if op == "sum":
        acc = np.float64 if is_floating(values) else np.int64
        out = np.zeros((n, *feat), dtype=acc)
        np.add.at(out, segment_ids, values.astype(acc))
        return out.astype(values.dtype if is_floating(values) else np.int64)
    if op == "mean":
        total = np.zeros((n, *feat), dtype=np.float64)
        np.add.at(total, segment_ids, values.astype(np.float64))
        counts = np.bincount(segment_ids, minlength=n).astype(np.float64).reshape((n,) + (1,) * len(feat))
        with np.errstate(invalid="ignore", divide="ignore"):
            return (total / counts).astype(values.dtype)
    if op == "max":
        low = -np.inf if is_floating(values) else np.iinfo(values.dtype).min
        out = np.full((n, *feat), low, dtype=values.dtype)
        np.maximum.at(out, segment_ids, values)
        return out
    if op == "prod":
        acc = np.float64 if is_floating(values) else np.int64
        out = np.ones((n, *feat), dtype=acc)
        np.multiply.at(out, segment_ids, values.astype(acc))
        return out.astype(values.dtype if is_floating(values) else np.int64)
    raise ValueError(f"unknown reduction {op!r}")


def cumsum(x: Any) -> np.ndarray:
    return np.cumsum(x, axis=0)


# ---- math used by the reference kernels ------------------------------------------------------
def einsum(subscripts: str, *operands: Any) -> np.ndarray:
    # optimize=True lets NumPy route contractions through BLAS (orders of magnitude on long rows).
    return np.einsum(subscripts, *operands, optimize=True)


exp = np.exp
log = np.log
tanh = np.tanh
where = np.where
maximum = np.maximum
isfinite = np.isfinite


def sum(x: Any, axis: int, keepdims: bool = False) -> np.ndarray:  # noqa: A001 - namespace name
    return np.sum(x, axis=axis, keepdims=keepdims)


def amax(x: Any, axis: int, keepdims: bool = False) -> np.ndarray:
    return np.max(x, axis=axis, keepdims=keepdims)


def swapaxes(x: Any, a: int, b: int) -> np.ndarray:
    return np.swapaxes(x, a, b)


def exportable(x: Any) -> np.ndarray:
    """x as a DLPack producer for another framework: x itself, or a contiguous copy where x has a
    negative stride (a reversed view: DLPack carries it, but torch aborts the process importing
    one and other consumers refuse it)."""
    return x if all(s >= 0 for s in x.strides) else np.ascontiguousarray(x)


def to_backend(x: Any, device_: str | None = None) -> np.ndarray:
    """Bring a native array of another framework here, zero-copy through DLPack for host memory
    (torch CPU, JAX CPU, MLX). Views of JAX and MLX buffers are read-only: those frameworks'
    arrays are immutable. bfloat16 has no NumPy dtype and raises scree.DTypeError."""
    if device_ is not None and str(device_) != "cpu":
        raise BackendError(f"NumPy arrays live on the host; device must be None or 'cpu', got {device_!r}")
    if not hasattr(x, "__dlpack__"):
        return np.asarray(x)
    try:
        return np.from_dlpack(x)
    except (RuntimeError, TypeError, BufferError) as e:
        if "bfloat16" in str(getattr(x, "dtype", "")):
            raise DTypeError("NumPy has no bfloat16: cast the values first, e.g. arr.map(lambda v: v.astype(...))") from e
        raise


def kernel_arg(x: Any) -> Any:
    """scree._C reads x as it is; DTypeError for ml_dtypes' bfloat16, which it cannot read."""
    if _foreign(x):
        raise DTypeError(f"scree's compiled kernels cannot read NumPy arrays of {x.dtype.name} (ml_dtypes): "
                         "cast them to float32, or use torch, JAX or MLX for bfloat16")
    return x


def stream(x: Any) -> int:
    """Host arrays have no stream: the CPU kernels run on the calling thread."""
    return 0


def deterministic_algorithms() -> bool:
    """NumPy has no determinism switch (and the CPU kernels are deterministic)."""
    return False


def is_tracing() -> bool:
    """Whether a tracing compiler is running (host-side checks on traced data must be skipped)."""
    return False

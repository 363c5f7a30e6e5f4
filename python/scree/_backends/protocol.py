"""The backend contract, written down: what every backend namespace (numpy.py, torch.py, jax.py,
mlx.py) provides, with one meaning, as a typed Protocol. Everything above scree._backends is
written once against it; tests/python/test_backend_protocol.py checks that every installed backend
meets it (every name present, same parameters and defaults). Backends hold array primitives and
framework queries only: no attention glue, no autograd, no pytree (those live in scree._connect).

"Native array" below means the backend's own array type; dtypes are named by strings ('float32',
'int64', 'bfloat16', ..., the names in scree._backends.dtypes.NAMES; a name the framework lacks
raises scree.DTypeError); `like` places a new array on the device of an existing one."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Backend", "Readback", "Landed"]


@runtime_checkable
class Readback(Protocol):
    """A device-to-host copy in flight (backend.readback, backend.offsets_summary): polled without
    blocking."""

    def ready(self) -> bool:
        """Whether the copy has landed (never blocks, never synchronises the device)."""

    def value(self) -> np.ndarray:
        """The host copy; waits for it when not ready() (a synchronisation only then)."""


@runtime_checkable
class Backend(Protocol):
    name: str
    Array: type
    # Whether the framework's gather and scatter keep out-of-range indices inside the arrays (raise
    # or clamp): where not (MLX), Arrays made with validate=False over host-readable offsets are
    # still checked, since the framework ops would read or write out of bounds (a segfault).
    safe_indexing: bool

    # ---- what an array is and where it lives ---------------------------------------------------
    def owns(self, x: Any) -> bool:
        """Whether x is this backend's native array type."""

    def adopt(self, x: Any) -> Any:
        """x as a native array where the framework itself takes it as one (JAX: NumPy), else None."""

    def is_traced(self, x: Any) -> bool:
        """Whether x's values are unknown to the host (a JAX tracer under jit)."""

    def device(self, x: Any) -> str | None:
        """'cpu', 'cuda:0', ...; None where the framework places it later (a JAX tracer)."""

    def is_host(self, x: Any) -> bool:
        """Whether the compiled C++ kernels may read and write x in place (NumPy, torch CPU)."""

    def host_readable(self, x: Any) -> bool:
        """Whether the host can read x without a device transfer (host memory: NumPy, torch CPU,
        JAX CPU, MLX); False for GPU memory and for traced arrays."""

    def version(self, x: Any) -> int | None:
        """A counter that changes whenever x is written in place (torch's _version; 0 for JAX's
        immutable arrays), or None where the framework keeps none: then nothing derived from x's
        values may be cached by x's identity."""

    def needs_autograd(self, x: Any) -> bool:
        """Whether writing x's result through raw pointers would cut an autograd graph."""

    def is_tracing(self) -> bool:
        """Whether a tracing compiler (torch.compile) is running, so host-side checks cannot run."""

    # ---- dtypes and shapes ----------------------------------------------------------------------
    def dtype(self, name_: str) -> Any:
        """The native dtype called `name_`."""

    def dtype_name(self, x: Any) -> str:
        """x's dtype as a name ('float32', 'bfloat16', ...)."""

    def is_floating(self, x: Any) -> bool: ...

    def is_integer(self, x: Any) -> bool: ...

    def shape(self, x: Any) -> tuple[int, ...]: ...

    def itemsize(self, x: Any) -> int:
        """Bytes per element."""

    def is_contiguous(self, x: Any) -> bool: ...

    def max_extent(self) -> int:
        """The largest extent of one axis, and index, the framework's arrays and scree's index
        arithmetic over them take (int64's, or int32's: MLX shapes, JAX without jax_enable_x64)."""

    def data_ptr(self, x: Any) -> int: ...

    def by_address(self, x: Any) -> bool:
        """Whether C++ should read x through data_ptr(x) rather than host_view(x): x's elements, as
        x means them, lie in host memory from there on, row-major, and handing the array itself
        costs more than its address (scree.pack of many short sequences). torch: ~1.3 us a NumPy
        view against ~0.2 for the address; NumPy arrays cross as they are (~0.15 us), JAX and MLX
        own their buffers: False."""

    # ---- host transfers ----------------------------------------------------------------------------
    def to_numpy(self, x: Any) -> np.ndarray:
        """A host NumPy view (host memory) or copy (device: one synchronisation)."""

    def from_numpy(self, a: np.ndarray, like: Any = None) -> Any:
        """a as a native array, on like's device."""

    def asarray(self, obj: Any, dtype: str | None = None, like: Any = None) -> Any: ...

    def host_view(self, x: Any) -> Any:
        """The cheapest contiguous host object the C++ kernels accept for x (read only)."""

    def is_capturing(self, x: Any) -> bool:
        """Whether x's device stream is capturing a graph (CUDA graphs), so nothing may be read back."""

    def readback(self, x: Any) -> Readback:
        """Start copying x to the host without synchronising (device arrays: a copy into pinned
        memory behind an event, or JAX's own asynchronous dispatch); poll it with ready()."""

    def offsets_summary(self, offsets: Any) -> Readback:
        """The four numbers the device check of a Layout reads, already on their way to the host:
        offsets[0], offsets[-1], the smallest and the largest step offsets[i+1] - offsets[i] (0 and 0
        for one offset), computed where the offsets live without a host sync, polled with ready()
        and read with value() (a (4,) integer NumPy array). The ragged invariants and max_length
        follow from these four numbers. Host-readable offsets: Landed; torch CUDA: one scree kernel
        writing into pinned host memory behind an event (scree._C.offsets_summary_cuda); JAX: a
        jitted reduction and its asynchronous copy. A Readback may also carry `device_copy`, the
        four numbers as an int64 array on the offsets' device, which kernels later on the stream can
        read (torch CUDA; the Layout keeps it: kernels.attention.plan)."""

    # ---- creation and layout -----------------------------------------------------------------------
    def empty(self, shape_: Sequence[int], dtype: str, like: Any = None) -> Any: ...

    def empty_like(self, x: Any) -> Any:
        """An array of x's shape, dtype and device, row-major, its values unspecified (the kernels'
        outputs shaped like an input: cheaper than `empty`, which parses a shape and a device)."""

    def zeros(self, shape_: Sequence[int], dtype: str, like: Any = None) -> Any: ...

    def full(self, shape_: Sequence[int], value: Any, dtype: str, like: Any = None) -> Any: ...

    def arange(self, n: int, dtype: str = "int64", like: Any = None) -> Any: ...

    def astype(self, x: Any, dtype: str) -> Any: ...

    def contiguous(self, x: Any) -> Any: ...

    def reshape(self, x: Any, shape_: Sequence[int]) -> Any: ...

    def concat(self, xs: Sequence[Any], axis: int = 0) -> Any: ...

    def stack(self, xs: Sequence[Any], axis: int = 0) -> Any: ...

    def repeat(self, x: Any, repeats: Any, total: int) -> Any:
        """x[i] repeated repeats[i] times; total == sum(repeats), so no device sync is needed."""

    def index_put(self, dst: Any, index: Any, values: Any) -> Any:
        """dst[index] = values, returned (out of place where the framework is functional)."""

    def rows_of_ranges(self, starts: Any, lengths: Any) -> Any:
        """Row indices starts[j], ..., starts[j] + lengths[j] - 1 for every j in order (int64, on
        starts' device; lengths >= 0). Its size, sum(lengths), is known only from the values: NumPy
        and MLX read them, torch reads them eagerly (a sync on a GPU) and leaves an unbacked size
        under torch.compile (a custom op), JAX needs them concrete (not under jax.jit)."""

    def true_rows(self, mask: Any) -> Any:
        """The indices where the 1-D boolean mask is true, in order (int64); the same size rule."""

    def masked_rows(self, padded: Any, mask: Any) -> Any:
        """padded[mask] for a boolean (n, L) mask, rows in order."""

    def segment_reduce(self, values: Any, segment_ids: Any, n: int, op: str, offsets: Any = None) -> Any:
        """Rows of values reduced into n rows by segment id: 'sum', 'mean', 'max' or 'prod'
        (sums and products of integers in int64; empty segments: 0, NaN, the lowest value, 1).
        `offsets` (n + 1, int64, on the values' device), where the caller has them, lets a backend
        use a segment kernel over offsets instead of a scatter by id (torch on CUDA)."""

    def cumsum(self, x: Any) -> Any:
        """The running sum along the first axis."""

    # ---- math of the reference kernels ---------------------------------------------------------
    def einsum(self, subscripts: str, *operands: Any) -> Any: ...

    def exp(self, x: Any) -> Any: ...

    def log(self, x: Any) -> Any: ...

    def tanh(self, x: Any) -> Any: ...

    def where(self, condition: Any, x: Any, y: Any) -> Any: ...

    def maximum(self, x: Any, y: Any) -> Any: ...

    def isfinite(self, x: Any) -> Any: ...

    def sum(self, x: Any, axis: int, keepdims: bool = False) -> Any: ...

    def amax(self, x: Any, axis: int, keepdims: bool = False) -> Any: ...

    def swapaxes(self, x: Any, a: int, b: int) -> Any: ...

    # ---- between frameworks --------------------------------------------------------------------
    def exportable(self, x: Any) -> Any:
        """x as a DLPack producer for another framework (torch: detached)."""

    def to_backend(self, x: Any, device_: str | None = None) -> Any:
        """A native array of another framework brought here (zero-copy through DLPack where allowed)."""

    # ---- what the compiled kernels need from the framework ----------------------------------------
    def kernel_arg(self, x: Any) -> Any:
        """x as scree._C takes it most cheaply (zero-copy): torch a DLPack capsule made in C++
        (torch.utils.dlpack.to_dlpack), the others x itself."""

    def stream(self, x: Any) -> int:
        """The stream kernels on x's device must run on (a cudaStream_t as an int); 0 on the host."""

    def deterministic_algorithms(self) -> bool:
        """The framework's own switch for reproducible results (torch.use_deterministic_algorithms,
        XLA's deterministic-ops flag); False where there is none."""


class Landed:
    """A Readback whose copy is already on the host (host-readable arrays need no transfer)."""

    __slots__ = ("_value",)

    def __init__(self, value: np.ndarray):
        self._value = value

    def ready(self) -> bool:
        return True

    def value(self) -> np.ndarray:
        return self._value

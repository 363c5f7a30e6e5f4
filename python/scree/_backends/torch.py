"""PyTorch backend namespace: the same names as _backends/numpy.py over torch tensors. Imported
only after the user imported torch (detection goes through sys.modules)."""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.dlpack import to_dlpack as _to_dlpack

from scree import _C
from scree._backends.numpy import HOST_CACHE_MIN_BYTES, _host_summary
from scree._backends.numpy import host_block as _np_host_block
from scree._backends.protocol import Landed
from scree._errors import BackendError, DTypeError

name = "torch"
Array = torch.Tensor
safe_indexing = True  # (IndexError; device-side asserts on CUDA)

_DTYPES = {
    "bool": torch.bool, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32,
    "int64": torch.int64, "uint8": torch.uint8, "uint16": torch.uint16, "uint32": torch.uint32,
    "uint64": torch.uint64, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "float64": torch.float64, "complex64": torch.complex64, "complex128": torch.complex128,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
# torch's unsigned types past uint8 are "barebones" (torch 2.13: no index_put, no scatter-max):
# those ops run on the signed type of the same width, over the same bits.
_SIGNED = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


def owns(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def adopt(x: Any) -> Any:
    """x as this backend's array where the framework itself takes it as one (torch: never; other
    frameworks' arrays are converted explicitly with Array.to), else None."""
    return None


def is_traced(x: Any) -> bool:
    """Whether x's values are unknown to the host (a JAX tracer under jit); torch tensors are
    always readable (a device tensor costs one sync)."""
    return False


_DEVICE_NAMES: dict[Any, str] = {}


def device(x: Any) -> str:
    # Memoised: str(torch.device) is ~3x a dict hit, and attention checks three devices a call.
    d = x.device
    name = _DEVICE_NAMES.get(d)
    if name is None:
        name = _DEVICE_NAMES[d] = str(d)
    return name


# x.is_cpu / x.is_cuda, not x.device.type: the device object costs ~0.4 us, the flag ~0.08 (the
# Ice Lake VM), and a small attention call asks five times.
def is_host(x: Any) -> bool:
    return x.is_cpu


def host_readable(x: Any) -> bool:
    return x.is_cpu


# torch.cuda.is_current_stream_capturing without its Python frame (every device check asks).
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None) or torch.cuda.is_current_stream_capturing


def is_capturing(x: Any) -> bool:
    """Whether x's device stream is capturing a CUDA graph."""
    return x.is_cuda and _capturing()


class _CudaReadback:
    """A copy into pinned host memory on x's current stream, with an event behind it."""

    __slots__ = ("_host", "_event")

    def __init__(self, host: torch.Tensor, event: Any):
        self._host, self._event = host, event

    def ready(self) -> bool:
        # Querying an event is not allowed while a CUDA graph is being captured: not ready then.
        return not torch.cuda.is_current_stream_capturing() and bool(self._event.query())

    def value(self) -> np.ndarray:
        self._event.synchronize()
        return self._host.numpy()


def readback(x: Any) -> Any:
    """Host copy of x; for a CUDA tensor started asynchronously (non_blocking into pinned memory,
    an event recorded after it), so nothing waits for the device until value() is asked early."""
    if x.device.type != "cuda":
        return Landed(to_numpy(x))
    host = torch.empty(tuple(x.shape), dtype=x.dtype, pin_memory=True)
    host.copy_(x.detach(), non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(x.device))
    return _CudaReadback(host, event)


# scree's own device check (CUDA builds of scree only): one kernel writing the four numbers into
# pinned host memory behind one event, ~5x less host time than torch ops + readback.
_summary_cuda = getattr(_C, "offsets_summary_cuda", None)


def _summary_ops(offsets: Any) -> torch.Tensor:
    """The four numbers on offsets' device with torch ops (subtract, aminmax, stack; no host sync):
    for devices scree has no kernel for, or a CPU-only build of scree with a CUDA torch."""
    off = offsets.detach()
    if off.shape[0] < 2:
        zero = off - off
        return torch.cat((off, off, zero, zero))
    lo, hi = torch.aminmax(off[1:] - off[:-1])
    return torch.stack((off[0], off[-1], lo, hi))


def offsets_summary(offsets: Any) -> Any:
    """[offsets[0], offsets[-1], smallest step, largest step] on their way to the host: a CUDA
    tensor gets one scree kernel and one event on torch's current stream (scree._C.OffsetsSummary,
    a Readback); a CPU tensor is summarised on the host at once (Landed)."""
    kind = offsets.device.type
    if kind == "cpu":
        return Landed(_host_summary(to_numpy(offsets)))
    if kind == "cuda" and _summary_cuda is not None:
        if not offsets.is_contiguous():  # a strided view (cu[::2]): one copy kernel, still no sync
            offsets = offsets.contiguous()
        copy = torch.empty(4, dtype=torch.int64, device=offsets.device)
        check = _summary_cuda(_to_dlpack(offsets), stream(offsets), _to_dlpack(copy))
        check.device_copy = copy  # the four numbers on the device too, for kernels (kernels.attention.plan)
        return check
    return readback(_summary_ops(offsets))


def version(x: Any) -> int | None:
    """torch's counter of in-place writes; None for inference tensors (torch.inference_mode), which
    keep none (asking raised RuntimeError, so their device offsets could build no Array)."""
    return None if x.is_inference() else x._version


def needs_autograd(x: Any) -> bool:
    """Kernels writing through raw pointers would cut the graph: use torch ops instead."""
    return bool(x.requires_grad) and torch.is_grad_enabled()


def _dt(name_: str) -> torch.dtype:
    try:
        return _DTYPES[name_]
    except KeyError:
        raise DTypeError(f"torch has no dtype {name_!r}") from None


def dtype(name_: str) -> torch.dtype:
    return _dt(name_)


def dtype_name(x: Any) -> str:
    # (Not _NAMES.get(d, str(d)...): a default argument is built on every call, ~0.1 us, and an
    # attention call asks several times.)
    d = x.dtype
    name = _NAMES.get(d)
    return name if name is not None else str(d).removeprefix("torch.")


def is_floating(x: Any) -> bool:
    return x.is_floating_point()


def is_integer(x: Any) -> bool:
    return not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool


def shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)


def to_numpy(x: Any) -> np.ndarray:
    """Host NumPy view (CPU) or copy (device: one synchronisation). bfloat16 has no NumPy type."""
    x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    return x.numpy()


def from_numpy(a: np.ndarray, like: Any = None) -> torch.Tensor:
    """a as a tensor on like's device. To a GPU through pinned memory, non_blocking: a copy from
    pageable memory would synchronise the stream (torch's sync debug mode flags it)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if like is not None and like.device.type != "cpu":
        t = t.pin_memory().to(like.device, non_blocking=True) if like.device.type == "cuda" else t.to(like.device)
    return t


def asarray(obj: Any, dtype: str | None = None, like: Any = None) -> torch.Tensor:
    return torch.as_tensor(obj, dtype=None if dtype is None else _dt(dtype),
                           device=None if like is None else like.device)


def data_ptr(x: Any) -> int:
    return int(x.data_ptr())


def by_address(x: Any) -> bool:
    """CPU, contiguous, and no lazy conjugate / negative bit (the bits in memory are the values)."""
    return x.device.type == "cpu" and x.is_contiguous() and not x.is_conj() and not x.is_neg()


def _dev(like: Any) -> Any:
    return None if like is None else like.device


# CPU tensors of at least HOST_CACHE_MIN_BYTES come from scree's host block cache, as the NumPy
# backend's arrays do (its comment says why): torch serves every CPU tensor above 128 KiB from fresh
# pages, each faulted in on first write (32 MiB: 12-15 ms first written, 2.3-3.4 ms rewritten, on
# the 2-core VM). A cached block costs ~3 us, torch.empty ~10 us at 32 MiB.
def _host_block(shape_: Sequence[int], dt: torch.dtype, nbytes: int) -> torch.Tensor:
    block = _np_host_block(nbytes, f"a {tuple(shape_)} {dt} tensor")
    return torch.from_numpy(block).view(dt).view(shape_)


def empty(shape_: Sequence[int], dtype: str, like: Any = None) -> torch.Tensor:
    # (no _dev call: every kernel call allocates 3 to 5 outputs through here)
    dt = _dt(dtype)
    if like is not None and type(like) is torch.Tensor and like.is_cpu:  # (not fake / traced tensors)
        nbytes = math.prod(shape_) * dt.itemsize
        if nbytes >= HOST_CACHE_MIN_BYTES:
            return _host_block(shape_, dt, nbytes)
    return torch.empty(shape_, dtype=dt, device=None if like is None else like.device)


def empty_like(x: Any) -> torch.Tensor:
    # 0.8 us against torch.empty's 2.0 on a 2-core VM; every backward allocates three this way.
    if type(x) is torch.Tensor and x.is_cpu:
        nbytes = x.nbytes
        if nbytes >= HOST_CACHE_MIN_BYTES:
            return _host_block(x.shape, x.dtype, nbytes)
    # A contiguous x's preserved format is the contiguous one: without the keyword 0.73 against
    # 0.90 us (2-core VM, session 51).
    if x.is_contiguous():
        return torch.empty_like(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def zeros(shape_: Sequence[int], dtype: str, like: Any = None) -> torch.Tensor:
    return torch.zeros(tuple(shape_), dtype=_dt(dtype), device=_dev(like))


def full(shape_: Sequence[int], value: Any, dtype: str, like: Any = None) -> torch.Tensor:
    return torch.full(tuple(shape_), value, dtype=_dt(dtype), device=_dev(like))


def arange(n: int, dtype: str = "int64", like: Any = None) -> torch.Tensor:
    return torch.arange(n, dtype=_dt(dtype), device=_dev(like))


def astype(x: Any, dtype: str) -> torch.Tensor:
    return x.to(_dt(dtype))


def max_extent() -> int:
    """The largest extent of an axis (and index) torch tensors take: int64."""
    return sys.maxsize


def contiguous(x: Any) -> torch.Tensor:
    return x.contiguous()


def itemsize(x: Any) -> int:
    """Bytes per element."""
    return int(x.element_size())


def host_view(x: Any) -> Any:
    """The cheapest contiguous host object the C++ kernels accept for x: a NumPy view of a CPU
    tensor (~3 us) instead of a DLPack export (~10 us per tensor, which dominated short packs);
    bfloat16, which NumPy lacks, goes through DLPack."""
    x = x.detach().contiguous()
    return x if x.dtype == torch.bfloat16 else x.numpy()


def is_contiguous(x: Any) -> bool:
    return bool(x.is_contiguous())


def reshape(x: Any, shape_: Sequence[int]) -> torch.Tensor:
    return x.reshape(tuple(shape_))


def concat(xs: Sequence[Any], axis: int = 0) -> torch.Tensor:
    return torch.cat(list(xs), dim=axis)


def stack(xs: Sequence[Any], axis: int = 0) -> torch.Tensor:
    return torch.stack(list(xs), dim=axis)


def repeat(x: Any, repeats: Any, total: int) -> torch.Tensor:
    # output_size avoids a device->host sync on CUDA.
    return torch.repeat_interleave(x, repeats, output_size=total)


def index_put(dst: Any, index: Any, values: Any) -> torch.Tensor:
    # index_put (not the in-place form) so autograd flows from `values` when it requires grad.
    signed = _SIGNED.get(dst.dtype)
    if signed is not None:
        return dst.view(signed).index_put(tuple(index), values.view(signed)).view(dst.dtype)
    return dst.index_put(tuple(index), values)


# Selections whose size is data-dependent: eagerly they read the total on the host (a sync on a
# GPU, as any such selection needs). While torch.compile traces, the torch custom ops of
# scree._connect.torch_selections stand in (installed there with provide_traced_selections):
# their fake implementations give the result an unbacked size.
_TRACED_SELECTIONS: Any = None


def provide_traced_selections(ops: Any) -> None:
    """Install what rows_of_ranges / true_rows call while torch.compile traces (the glue's ops)."""
    global _TRACED_SELECTIONS
    _TRACED_SELECTIONS = ops


def rows_of_ranges(starts: Any, lengths: Any) -> torch.Tensor:
    starts, lengths = starts.to(torch.int64), lengths.to(torch.int64)
    if _TRACED_SELECTIONS is not None and torch.compiler.is_compiling():
        return _TRACED_SELECTIONS.rows_of_ranges(starts, lengths)
    return eager_rows_of_ranges(starts, lengths)


def eager_rows_of_ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    ends = torch.cumsum(lengths, 0)
    total = int(ends[-1]) if ends.numel() else 0
    return torch.repeat_interleave(starts - (ends - lengths), lengths, output_size=total) + torch.arange(
        total, dtype=torch.int64, device=starts.device)


def true_rows(mask: Any) -> torch.Tensor:
    if _TRACED_SELECTIONS is not None and torch.compiler.is_compiling():
        return _TRACED_SELECTIONS.true_rows(mask)
    return eager_true_rows(mask)


def eager_true_rows(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask).reshape(-1)


def masked_rows(padded: Any, mask: Any) -> torch.Tensor:
    """padded[mask] for a boolean (n, L) mask: the rows where mask is true, in order."""
    return padded[mask]


def segment_reduce(values: Any, segment_ids: Any, n: int, op: str, offsets: Any = None) -> torch.Tensor:
    if offsets is not None and values.is_cuda and values.is_floating_point() and op in ("sum", "mean", "max"):
        # torch's segment kernel over offsets: one pass, where scatter_add / scatter_reduce go through
        # atomics (and sums through float64): 5-15x faster on an H200 (benchmarks/NOTES.md); same
        # empty-segment values (0, NaN, -inf), NaN propagates, differentiable. It sums 16-bit floats
        # in their own type (a bf16 sum of 300 values was off by more than 1%), so those sum in float32.
        narrow = op != "max" and values.dtype in (torch.float16, torch.bfloat16)
        out = torch.segment_reduce(values.float() if narrow else values, op, offsets=offsets, axis=0, unsafe=True)
        return out.to(values.dtype) if narrow else out
    feat = values.shape[1:]
    idx = segment_ids.reshape((-1,) + (1,) * len(feat)).expand_as(values)
    if op == "sum":
        acc = torch.float64 if values.is_floating_point() else torch.int64
        out = torch.zeros((n, *feat), dtype=acc, device=values.device)
        out = out.scatter_add(0, idx, values.to(acc))
        return out.to(values.dtype) if values.is_floating_point() else out
    if op == "mean":
        out = torch.zeros((n, *feat), dtype=torch.float64, device=values.device)
        out = out.scatter_add(0, idx, values.to(torch.float64))
        # (not bincount: on CUDA it reads the largest id back to size its output, a sync)
        counts = torch.zeros(n, dtype=torch.float64, device=values.device).scatter_add(
            0, segment_ids, torch.ones(segment_ids.shape, dtype=torch.float64, device=values.device))
        return (out / counts.reshape((n,) + (1,) * len(feat))).to(values.dtype)
    if op == "max":
        signed = _SIGNED.get(values.dtype)
        if signed is not None:  # flipping the sign bit maps the unsigned order onto the signed one
            flip = torch.iinfo(signed).min
            return (segment_reduce(values.view(signed) ^ flip, segment_ids, n, op) ^ flip).view(values.dtype)
        low = float("-inf") if values.is_floating_point() else torch.iinfo(values.dtype).min
        out = torch.full((n, *feat), low, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, idx, values, reduce="amax", include_self=True)
    if op == "prod":
        acc = torch.float64 if values.is_floating_point() else torch.int64
        out = torch.ones((n, *feat), dtype=acc, device=values.device)
        out = out.scatter_reduce(0, idx, values.to(acc), reduce="prod", include_self=True)
        return out.to(values.dtype) if values.is_floating_point() else out
    raise ValueError(f"unknown reduction {op!r}")


def cumsum(x: Any) -> torch.Tensor:
    return torch.cumsum(x, dim=0)


# ---- math used by the reference kernels ------------------------------------------------------
einsum = torch.einsum
exp = torch.exp
log = torch.log
tanh = torch.tanh
where = torch.where
maximum = torch.maximum
isfinite = torch.isfinite


def sum(x: Any, axis: int, keepdims: bool = False) -> torch.Tensor:  # noqa: A001 - namespace name
    return torch.sum(x, dim=axis, keepdim=keepdims)


def amax(x: Any, axis: int, keepdims: bool = False) -> torch.Tensor:
    return torch.amax(x, dim=axis, keepdim=keepdims)


def swapaxes(x: Any, a: int, b: int) -> torch.Tensor:
    return torch.swapaxes(x, a, b)


def exportable(x: Any) -> torch.Tensor:
    """x as a DLPack producer for another framework: detached (DLPack carries no autograd graph,
    so Array.to() to another framework is where the torch graph ends) and dense (a strided or
    broadcast view is copied: JAX refuses to import one, and NumPy cannot take bfloat16 as a
    fallback)."""
    x = x.detach()
    return x if x.is_contiguous() else x.contiguous()


def _target_device(device_: Any) -> torch.device:
    """torch.device(device_) where this process can place tensors; BackendError otherwise (torch
    itself raises AssertionError for CUDA in a build without it, RuntimeError for unknown names)."""
    try:
        dev = torch.device(device_)
    except (RuntimeError, TypeError, ValueError) as e:  # (torch.device(0) asks for an accelerator)
        raise BackendError(f"torch cannot place tensors on {device_!r}: {e}") from None
    if dev.type in ("cpu", "meta"):
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if (dev.index or 0) < count:
            return dev
        raise BackendError(f"torch cannot place tensors on {device_!r}: {count} CUDA device(s) visible"
                           + ("" if torch.backends.cuda.is_built() else " (this torch was built without CUDA)"))
    available = torch.backends.mps.is_available if dev.type == "mps" else \
        getattr(getattr(torch, dev.type, None), "is_available", None)
    if available is None or not available():
        raise BackendError(f"torch cannot place tensors on {device_!r}: no {dev.type} device here")
    return dev


def to_backend(x: Any, device_: str | None = None) -> torch.Tensor:
    """Bring a native array of another framework here, zero-copy through DLPack: NumPy, JAX and
    MLX host buffers are shared (a tensor over a JAX or MLX buffer must not be written to: those
    frameworks assume their arrays never change). Moving to another device copies; a device this
    process does not have raises scree.BackendError."""
    dev = None if device_ is None else _target_device(device_)
    if isinstance(x, np.ndarray) and x.dtype.name == "bfloat16":  # ml_dtypes' type exports no DLPack
        t = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_dlpack(x) if hasattr(x, "__dlpack__") else torch.as_tensor(x)
    return t if dev is None else t.to(dev)


# kernel_arg(x): a DLPack capsule of x made in C++ (torch.utils.dlpack.to_dlpack itself, no Python
# frame around it: a call passes 8 (forward) to 13 (backward) tensors). torch's Tensor.__dlpack__
# adds ~1.6 us of Python checks per tensor (torch 2.13) and refuses tensors that require grad,
# which the kernels only read or write raw.
kernel_arg = _to_dlpack


# torch's current raw stream by device index, a plain int: torch.cuda.current_stream(device)
# builds a Python Stream object on every call, and this is on every kernel call's path.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def stream(x: Any) -> int:
    """The stream kernels on x's device must run on, as scree._C takes it: torch's current stream
    of that device (a cudaStream_t as an int), 0 for CPU tensors."""
    if not x.is_cuda:
        return 0
    if _raw_stream is not None:
        return int(_raw_stream(x.get_device()))
    return torch.cuda.current_stream(x.device).cuda_stream


def deterministic_algorithms() -> bool:
    """torch.use_deterministic_algorithms(True) asks every kernel for reproducible results."""
    return torch.are_deterministic_algorithms_enabled()


def is_tracing() -> bool:
    """Whether torch.compile (dynamo) is tracing: host-side NumPy checks cannot run then."""
    return torch.compiler.is_compiling()

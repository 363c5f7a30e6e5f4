"""scree.varlen_attention: checks the arguments once (attention_spec), then runs the compiled
kernel for the arrays' backend and device. Each backend namespace provides
`has_attention_kernel(q, v)` and `varlen_attention(q, k, v, args)` (its autograd glue: a torch
custom op, a jax.custom_vjp over XLA FFI, an mx.custom_function, a plain call for NumPy) on top of
`forward` / `backward` below, which call scree._C with outputs (and the CUDA backward's workspace)
allocated in the caller's framework, on the framework's current stream. Inputs no compiled kernel
serves (MLX bfloat16, CUDA float32 or head dims this build did not compile) run the reference."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from scree import _C
from scree._array import Array
from scree.kernels import attention_reference
from scree.kernels.attention_spec import AttentionSpec, attention_spec, drop_head_axis, with_head_axis

__all__ = ["varlen_attention", "varlen_attention_backward", "forward", "backward", "cuda_kernel_serves",
           "deterministic"]

# What this build's CUDA kernels serve, read once at import: torch.compile (dynamo) cannot trace a
# call into scree._C while it traces has_attention_kernel, but it reads module constants.
_CUDA_COMPILED = _C.cuda_compiled()
_CUDA_HEAD_DIMS = frozenset(_C.cuda_head_dims())
_CUDA_DTYPES = ("float16", "bfloat16")


def cuda_kernel_serves(dtype: str, head_dim: int, head_dim_v: int) -> bool:
    """Whether this build's CUDA kernels serve inputs of this dtype and head dims (D == Dv, one of
    scree._C.cuda_head_dims()); the backends ask it for arrays on a CUDA device."""
    return _CUDA_COMPILED and dtype in _CUDA_DTYPES and head_dim == head_dim_v and head_dim in _CUDA_HEAD_DIMS


def deterministic(ns: ModuleType) -> bool:
    """Whether the backward must give the same bits on every run: SCREE_DETERMINISTIC=1 (read at
    each call, so it can be switched inside a process) or the framework's own switch
    (torch.use_deterministic_algorithms). Only the CUDA backward has a choice; the CPU one always is."""
    return os.environ.get("SCREE_DETERMINISTIC", "") == "1" or ns.deterministic_algorithms()


def varlen_attention(q: Array, k: Array, v: Array, causal: bool = False, scale: float | None = None,
                     window: tuple[int | None, int | None] | None = None, softcap: float | None = None,
                     return_lse: bool = False) -> Array | tuple[Array, Any]:
    """Attention of each query sequence of q over the matching sequence of k, v (DESIGN §3).

    q (Tq, Hq, D), k (Tk, Hk, D), v (Tk, Hk, Dv) Arrays with the same number of sequences,
    Hq % Hk == 0 (GQA/MQA). Causal is bottom-right aligned when a sequence's q and k lengths
    differ; window=(left, right) is a sliding window (None/-1: unbounded side); softcap applies
    softcap*tanh(s/softcap). A query row that sees no key outputs 0 with lse = -inf. Returns an
    Array with q's offsets and values (Tq, Hq, Dv), and lse (Hq, Tq) float32 when return_lse.
    Gradients flow through the framework's autograd (torch) to q, k, v.
    """
    B, spec = attention_spec(q, k, v, causal, scale, window, softcap)
    if spec.single_head:
        out, lse = varlen_attention(*(with_head_axis(B, a) for a in (q, k, v)), causal=causal, scale=scale,
                                    window=window, softcap=softcap, return_lse=True)
        out, lse = drop_head_axis(B, q, out, lse)
        return (out, lse) if return_lse else out
    if not B.has_attention_kernel(q.values, v.values):
        return attention_reference.varlen_attention(q, k, v, causal=causal, scale=scale, window=window,
                                                    softcap=softcap, return_lse=return_lse, upcast=False)
    out_values, lse = B.varlen_attention(q, k, v, kernel_args(q, k, spec))
    out = q.with_values(out_values)
    return (out, lse) if return_lse else out


def varlen_attention_backward(dout: Any, q: Array, k: Array, v: Array, out: Array, lse: Any, causal: bool = False,
                              scale: float | None = None, window: tuple[int | None, int | None] | None = None,
                              softcap: float | None = None) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv) as Arrays, for frameworks without autograd (NumPy): `dout` is the
    gradient of the output (an Array or values (Tq, Hq, Dv)), `out` and `lse` what the forward
    returned with the same options."""
    B, spec = attention_spec(q, k, v, causal, scale, window, softcap)
    d = dout.values if isinstance(dout, Array) else dout
    if spec.single_head:  # (T, D) inputs: run with a head axis, drop it from the gradients
        grads = varlen_attention_backward(
            B.reshape(d, (d.shape[0], 1, d.shape[1])), *(with_head_axis(B, a) for a in (q, k, v, out)),
            B.reshape(lse, (1, lse.shape[0])), causal=causal, scale=scale, window=window, softcap=softcap)
        return tuple(a.with_values(B.reshape(g.values, (g.values.shape[0], g.values.shape[2])))
                     for a, g in zip((q, k, v), grads))
    args = kernel_args(q, k, spec)
    dq, dk, dv = backward(B, d, q.values, k.values, v.values, out.values, lse, kernel_offsets(B, q),
                          kernel_offsets(B, k), args)
    return q.with_values(dq), k.with_values(dk), v.with_values(dv)


def kernel_args(q: Array, k: Array, spec: AttentionSpec) -> tuple[int, int, float, bool, int, int, float]:
    """The scalar arguments of scree._C.varlen_fwd/bwd after the offsets:
    (max_seqlen_q, max_seqlen_k, scale, causal, window_left, window_right, softcap)."""
    left, right = spec.window_args
    return (_max_seqlen(q), _max_seqlen(k), spec.scale, spec.causal, left, right, spec.softcap or 0.0)


def _max_seqlen(a: Array) -> int:
    """The longest sequence where the host knows it without a device sync, else the token count
    (a valid upper bound, which the kernels accept): offsets traced under jax.jit, or device
    offsets whose host copy was never made (reading them would synchronise the GPU)."""
    if a._max_length is None and a._host is None and not a._ns.is_host(a._offsets):
        return a.total
    known = a._known_max_length()
    return a.total if known is None else known


def kernel_offsets(ns: ModuleType, a: Array) -> Any:
    """The offsets as the kernel for a's device reads them: the cached host int64 copy for the CPU
    kernels (host arrays), the Array's own offsets (int32 or int64, on the device: no copy, no
    sync) for device kernels."""
    return a.host_offsets if ns.is_host(a.values) else a.offsets


def forward(ns: ModuleType, q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, args: tuple) -> tuple[Any, Any]:
    """(out (Tq, Hq, Dv), lse (Hq, Tq) float32) from the compiled kernel; outputs allocated by `ns`
    like q. cu_q / cu_k are int32/int64 offsets on q's device (kernel_offsets); args as kernel_args
    returns them. GPU kernels run on the framework's current stream (ns.stream)."""
    tq, hq = q.shape[0], q.shape[1]
    out = ns.empty((tq, hq, v.shape[2]), ns.dtype_name(q), like=q)
    lse = ns.empty((hq, tq), "float32", like=q)
    _C.varlen_fwd(q, k, v, cu_q, cu_k, out, lse, *args, stream=ns.stream(q))
    return out, lse


def backward(ns: ModuleType, dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, cu_q: Any, cu_k: Any,
             args: tuple) -> tuple[Any, Any, Any]:
    """(dq, dk, dv) from the compiled kernel; outputs, and the workspace the CUDA backward needs
    (sized by scree._C.cuda_bwd_workspace_bytes, none on the CPU), allocated by `ns` like q."""
    dt = ns.dtype_name(q)
    dq, dk, dv = (ns.empty(tuple(x.shape), dt, like=x) for x in (q, k, v))
    det = deterministic(ns)
    # Sized from the shapes (the C++ formula, as JAX sizes it): the arguments are checked once,
    # by varlen_bwd below, not a second time on every backward.
    nbytes = 0 if ns.is_host(q) else _C.cuda_bwd_workspace_bytes(q.shape[0], q.shape[1], q.shape[2], det)
    workspace = ns.empty((nbytes,), "uint8", like=q) if nbytes else None
    _C.varlen_bwd(ns.contiguous(dout), q, k, v, out, lse, cu_q, cu_k, dq, dk, dv, *args, deterministic=det,
                  workspace=workspace, stream=ns.stream(q))
    return dq, dk, dv

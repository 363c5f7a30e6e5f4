"""torch glue of the compiled varlen attention, with two roads to the same kernels:

* eager (the usual call): a torch.autograd.Function when a gradient is needed, else a direct call.
  No trip through torch's dispatcher: on the CPU here, torch.library's Python custom-op path
  (argument normalisation, the autograd wrapper, the redispatch) cost more than everything else of
  a tiny call put together (docs/design.md, "The call path").
* traced (torch.compile / dynamo, export, torch function or dispatch modes, tensor subclasses,
  functorch transforms): the `scree::varlen_fwd` / `scree::varlen_bwd` custom ops (torch.library),
  their fake implementations and their autograd formula, so fullgraph compilation works.

Both roads call scree.kernels.attention.forward / backward, which allocate with torch's caching
allocator and launch on torch's current stream (so both capture into CUDA graphs), and take the
Arrays' own offsets: a host int64 view on the CPU, the device offsets on a GPU (no copy, no sync).
The gradient through lse is not propagated (as FlashAttention); lse is a by-product."""

from __future__ import annotations

from threading import get_ident
from typing import Any, Optional

import torch

from scree import _backends, _C
from scree._array import Array
from scree.kernels import attention as K
from scree.kernels.attention_spec import AttentionSpec

_NS = _backends.get("torch")
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None) or torch.cuda.is_current_stream_capturing


def serves(q: torch.Tensor, v: torch.Tensor) -> bool:
    """CPU tensors: the C++ kernels (every float dtype); CUDA tensors: the CUDA kernels where this
    build compiled them for the dtype and head dim; anything else (meta, other devices): no."""
    if q.is_cpu:
        return True
    if q.is_cuda:
        return K.cuda_kernel_serves(_NS.dtype_name(q), q.shape[-1], v.shape[-1])
    return False


def _eager(q: Any, k: Any, v: Any) -> bool:
    """Whether the call may skip torch's dispatcher: nothing traces it and nothing intercepts ops."""
    return (not torch.compiler.is_compiling() and type(q) is torch.Tensor and type(k) is torch.Tensor
            and type(v) is torch.Tensor and not torch._C._is_torch_function_mode_enabled()
            and torch._C._len_torch_dispatch_stack() == 0 and not _functorch_active())


def varlen_attention(q: Array, k: Array, v: Array, spec: AttentionSpec,
                     with_lse: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(out values, lse) for scree.Arrays on the CPU or one CUDA device; lse may be None where
    `with_lse` is False and no gradient is recorded (the eager, no-grad call skips allocating it)."""
    pq, pk = K.plan(q), K.plan(k)
    qv, kv, vv = q.values, k.values, v.values
    if not _eager(qv, kv, vv):
        left, right = spec.window_args
        return varlen_fwd(qv, kv, vv, pq.offsets, pk.offsets, pq.max_seqlen, pk.max_seqlen, spec.scale, spec.causal,
                          left, right, spec.softcap or 0.0, spec.deterministic)
    args = K.kernel_args(spec, pq.max_seqlen, pk.max_seqlen)
    grad = torch.is_grad_enabled() and (qv.requires_grad or kv.requires_grad or vv.requires_grad)
    # The stream and the capture state, asked once a call: the kept workspace and schedules serve
    # CUDA calls outside graph capture (a graph replays its own pack kernel and keeps its own
    # workspace). Each capture query is a cudaStreamIsCapturing, ~2.3 us on an H200 host; a call
    # with a gradient asked three times before (NOTES.md).
    stream = _NS.stream(qv)
    kept = qv.is_cuda and not _capturing()
    workspace = _fwd_workspace(qv, pq.offsets, stream) if kept else None
    schedule = K.tile_schedule(_NS, q, k, qv, False, stream) if kept else None
    if grad:
        bwd_schedule = K.tile_schedule(_NS, q, k, qv, True, stream) if kept else None
        lse: list[torch.Tensor] = []
        out = _apply_attention(qv, kv, vv, pq.offsets, pk.offsets, args, spec.deterministic, pq.summary,
                               schedule, bwd_schedule, workspace, stream, lse)
        return out, lse[0]
    return K.forward(_NS, qv, kv, vv, pq.offsets, pk.offsets, args, pq.summary, with_lse, workspace, stream, schedule,
                     workspace is not None)


# The CUDA forward's workspace (its tile counter, and room for the packed-tile schedule of short
# sequences), one per (device, stream, Python thread), grown when a call needs more: the call writes
# it on its stream before the kernel, so calls in one stream's order share it, and
# the thread in the key keeps two threads (which launch with the GIL released) from interleaving
# their schedules and kernels on one stream. A fresh allocation cost ~6 us of host time a call on an
# H200 host (benchmarks/NOTES.md). Zeroed when allocated: each forward leaves its tile counter zero
# again, so no call launches a memset before its kernel (workspace_zeroed). Inside CUDA graph capture
# each call gets its own (None here: K.forward allocates it from the graph's pool), so a graph
# never shares one with eager calls.
_WORKSPACES: dict[tuple[int, int, int], torch.Tensor] = {}
_WORKSPACES_KEPT = 1024  # (threads x streams x devices); past it the dict starts over


def _fwd_workspace(q: torch.Tensor, cu_q: torch.Tensor, stream: int) -> torch.Tensor:
    """The kept workspace for a CUDA call on `stream` outside graph capture (the caller checks)."""
    key = (q.get_device(), stream, get_ident())
    ws = _WORKSPACES.get(key)
    need = K.fwd_workspace_bytes(q.shape[0], cu_q.shape[0] - 1)
    if ws is None or ws.shape[0] < need:
        if len(_WORKSPACES) >= _WORKSPACES_KEPT:
            _WORKSPACES.clear()  # a dropped workspace may be reused by the allocator only in its stream's order
        # Grown to a power of two: a training loop's varying batch sizes reallocate it a few times.
        ws = _WORKSPACES[key] = torch.zeros((1 << (need - 1).bit_length(),), dtype=torch.uint8, device=q.device)
    return ws


# ---- eager --------------------------------------------------------------------------------------
class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                args: Any, deterministic: bool | None, q_summary: Any, schedule: K.TileSchedule | None,
                bwd_schedule: K.TileSchedule | None, workspace: torch.Tensor | None,
                stream: int, lse_out: list) -> torch.Tensor:
        out, lse = K.forward(_NS, q, k, v, cu_q, cu_k, args, q_summary, True, workspace, stream, schedule,
                             workspace is not None)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        # The backward's schedule is keyed by the forward's thread and stream (the autograd engine
        # runs the backward on the forward's stream); only backward calls use it.
        ctx.args, ctx.deterministic, ctx.bwd_schedule = args, deterministic, bwd_schedule
        # lse leaves through `lse_out`, not as a second output: it has no gradient, and a second
        # output (marked non-differentiable, its gradient never materialised: a fill kernel on
        # autograd's device thread once cost ~20% of a small call on an H200 host) cost the engine
        # ~3-6 us a forward+backward more (NOTES.md). Saved as an intermediate, it keeps the
        # in-place check an output had.
        ctx.set_materialize_grads(False)
        lse_out.append(lse)
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor | None) -> tuple:
        # The engine runs a backward with grad mode off unless a second derivative is asked for
        # (create_graph=True); only then does once_differentiable's wrapper run, which makes that
        # second derivative raise. Its `with torch.no_grad()` on every call cost ~2 us.
        if torch.is_grad_enabled():
            return _once_differentiable_backward(ctx, dout)
        return _eager_backward(ctx, dout)


def _eager_backward(ctx: Any, dout: torch.Tensor | None) -> tuple:
    if dout is None:  # out did not reach the loss: no gradient flows back through this call
        return (None,) * 13
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    args = ctx.args.with_deterministic(K.resolve_deterministic(ctx.deterministic, _NS))
    dq, dk, dv = K.backward(_NS, dout.contiguous(), q, k, v, out, lse, cu_q, cu_k, args, ctx.bwd_schedule)
    return (dq, dk, dv) + (None,) * 10


_once_differentiable_backward = torch.autograd.function.once_differentiable(_eager_backward)
# The autograd Function's C entry point bound to _Attention: torch's Python `Function.apply` first
# binds default arguments and unwraps dead functorch wrappers (a generator over the 13 arguments),
# ~3 us of a small call; the eager road runs only where no functorch transform is active (_eager).
_apply_attention = super(torch.autograd.Function, _Attention).apply


# ---- traced: torch.library custom ops ---------------------------------------------------------------
@torch.library.custom_op("scree::varlen_fwd", mutates_args=())
def varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, scale: float, causal: bool,
               window_left: int, window_right: int, softcap: float,
               deterministic: Optional[bool] = None) -> tuple[torch.Tensor, torch.Tensor]:
    # deterministic is carried to the backward (setup_context); the forward does not read it.
    args = _C.AttentionArgs(max_seqlen_q, max_seqlen_k, scale, causal, window_left, window_right, softcap, False)
    return K.forward(_NS, q, k, v, cu_seqlens_q, cu_seqlens_k, args)


@varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal, window_left,
      window_right, softcap, deterministic=None):
    return (q.new_empty((q.shape[0], q.shape[1], v.shape[2])),
            q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float64 if q.dtype == torch.float64 else torch.float32))


@torch.library.custom_op("scree::varlen_bwd", mutates_args=())
def varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               lse: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
               max_seqlen_k: int, scale: float, causal: bool, window_left: int, window_right: int,
               softcap: float, deterministic: Optional[bool] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # None: the rule is read here, when the backward kernel runs (not while tracing).
    det = K.resolve_deterministic(deterministic, _NS)
    args = _C.AttentionArgs(max_seqlen_q, max_seqlen_k, scale, causal, window_left, window_right, softcap, det)
    return K.backward(_NS, dout.contiguous(), q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, args)


@varlen_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
      window_left, window_right, softcap, deterministic=None):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, cu_q, cu_k, *scalars = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.scalars = tuple(scalars)


def _backward(ctx: Any, dout: torch.Tensor, dlse: torch.Tensor) -> tuple:
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    dq, dk, dv = varlen_bwd(dout.contiguous(), q, k, v, out, lse, cu_q, cu_k, *ctx.scalars)
    return (dq, dk, dv) + (None,) * (2 + len(ctx.scalars))


varlen_fwd.register_autograd(_backward, setup_context=_setup_context)

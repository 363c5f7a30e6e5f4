"""torch glue of the compiled varlen attention: `scree::varlen_fwd` / `scree::varlen_bwd` custom ops
(torch.library), their fake (meta) implementations for torch.compile, and the autograd formula
that calls the backward kernel. Tensors reach scree._C zero-copy through DLPack, on the CPU or a
CUDA device: CUDA calls get the Arrays' device offsets, torch's current stream and a workspace from
torch's caching allocator (all decided inside the ops' real implementations, at call time, so
nothing here is traced by torch.compile)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from scree.kernels import attention as _attention

_NS = sys.modules["scree._backends.torch"]


def _host(x: torch.Tensor) -> torch.Tensor:
    # DLPack refuses tensors that require grad; inside the op autograd is already handled.
    return x.detach()


@torch.library.custom_op("scree::varlen_fwd", mutates_args=())
def varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, scale: float, causal: bool,
               window_left: int, window_right: int, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    args = (max_seqlen_q, max_seqlen_k, scale, causal, window_left, window_right, softcap)
    return _attention.forward(_NS, _host(q), _host(k), _host(v), cu_seqlens_q, cu_seqlens_k, args)


@varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal, window_left,
      window_right, softcap):
    return (q.new_empty((q.shape[0], q.shape[1], v.shape[2])),
            q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32))


@torch.library.custom_op("scree::varlen_bwd", mutates_args=())
def varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               lse: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
               max_seqlen_k: int, scale: float, causal: bool, window_left: int, window_right: int,
               softcap: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (max_seqlen_q, max_seqlen_k, scale, causal, window_left, window_right, softcap)
    return _attention.backward(_NS, _host(dout), _host(q), _host(k), _host(v), _host(out), _host(lse),
                               cu_seqlens_q, cu_seqlens_k, args)


@varlen_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal,
      window_left, window_right, softcap):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, cu_q, cu_k, *args = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.args = tuple(args)


def _backward(ctx: Any, dout: torch.Tensor, dlse: torch.Tensor) -> tuple:
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    # The gradient through lse is not propagated (as FlashAttention); lse is a by-product here.
    dq, dk, dv = varlen_bwd(dout.contiguous(), q, k, v, out, lse, cu_q, cu_k, *ctx.args)
    return (dq, dk, dv) + (None,) * (2 + len(ctx.args))


varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


def _offsets(a: Any) -> torch.Tensor:
    # CPU: int64 CPU tensors viewing the Array's cached host offsets (zero-copy); CUDA: the
    # Array's own device offsets, int32 or int64 as they are (no copy, no device sync).
    off = _attention.kernel_offsets(_NS, a)
    return torch.from_numpy(off) if isinstance(off, np.ndarray) else off


def varlen_attention(q: Any, k: Any, v: Any, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend entry point scree.varlen_attention calls with scree.Arrays (on the CPU or one
    CUDA device); args as scree.kernels.attention.kernel_args (max_seqlen never costs a sync)."""
    return varlen_fwd(q.values, k.values, v.values, _offsets(q), _offsets(k), *args)

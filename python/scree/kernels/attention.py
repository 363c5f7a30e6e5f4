"""The compiled varlen attention kernels as the framework glue (scree._connect) runs them:

* `plan(a)`: what a kernel needs from an Array's layout alone (the offsets as scree._C reads them
  for the arrays' device, and max_seqlen), computed once per Layout and shared by every layer
  that maps the same batch and by the backward (FlashInfer's plan/run split). Never a device sync:
  max_seqlen is the known maximum (given, computed on the host, or delivered by the device check
  of scree._layout), else the token count, an upper bound the kernels accept.
* `kernel_args`: the typed record of a call's scalars, scree._C.AttentionArgs, the one thing that
  carries them from here to the C++ function that fills the kernel parameters.
* `forward` / `backward`: outputs (and the CUDA backward's workspace) allocated with the caller's
  framework, scree._C called on the framework's current stream.
* `tile_schedule`: the Hopper kernels' packed-tile schedules of a (q, k) layout pair, kept with
  the q Layout so that every layer's call after the first reads them instead of packing again.
* `cuda_kernel_serves` and `resolve_deterministic`: which inputs the CUDA kernels take, and the
  deterministic rule."""

from __future__ import annotations

import os
from threading import get_ident
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from scree import _C
from scree._array import Array
from scree._layout import Layout
from scree.kernels.attention_spec import AttentionSpec

__all__ = ["Plan", "plan", "kernel_args", "forward", "backward", "lse_dtype", "cuda_kernel_serves",
           "resolve_deterministic", "TileSchedule", "tile_schedule"]

# What this build's CUDA kernels serve, read once at import: torch.compile (dynamo) cannot trace a
# call into scree._C, but it reads module constants.
_CUDA_COMPILED = _C.cuda_compiled()
_CUDA_HEAD_DIMS = frozenset(_C.cuda_head_dims())
_CUDA_DTYPES = ("float16", "bfloat16")


def fwd_workspace_bytes(total_q: int, num_sequences: int) -> int:
    """Bytes of the CUDA forward's workspace for Tq query tokens in n sequences: the tile counter and
    room for the packed-tile schedule of short sequences (~16 bytes a sequence); glue that keeps one
    passes it."""
    return _C.cuda_fwd_workspace_bytes(total_q, num_sequences)


def lse_dtype(dtype: str) -> str:
    """The dtype of the lse the kernels return for inputs of `dtype`: float32, and float64 for
    float64 inputs (float32 would round an fp64 lse to whole numbers past 2^24 and overflow past
    3.4e38; docs/design.md, "lse of float64 inputs")."""
    return "float64" if dtype == "float64" else "float32"


def cuda_kernel_serves(dtype: str, head_dim: int, head_dim_v: int) -> bool:
    """Whether this build's CUDA kernels serve inputs of this dtype and head dims (D == Dv, one of
    scree._C.cuda_head_dims()); the glue asks it for arrays on a CUDA device."""
    return _CUDA_COMPILED and dtype in _CUDA_DTYPES and head_dim == head_dim_v and head_dim in _CUDA_HEAD_DIMS


def resolve_deterministic(choice: bool | None, ns: ModuleType) -> bool:
    """The backward's determinism: the caller's choice, else the rule read now: SCREE_DETERMINISTIC=1
    or the framework's own switch (torch.use_deterministic_algorithms, XLA's deterministic-ops
    flag). Only the CUDA backward has a choice; the CPU one always is deterministic."""
    if choice is not None:
        return bool(choice)
    return os.environ.get("SCREE_DETERMINISTIC", "") == "1" or ns.deterministic_algorithms()


class Plan(NamedTuple):
    offsets: Any     # host int64 (native array over the host copy) for host kernels; the Array's own offsets on a GPU
    max_seqlen: int  # exact where known without a sync, else the token count (an upper bound)
    # Where the host knows no exact maximum: the device check's four numbers on the device (its
    # largest step is the exact maximum, which the CUDA forward reads there), else None.
    summary: Any = None


def plan(a: Array) -> Plan:
    """The attention plan of a's Layout, made on first use and kept with it (Layout.plans; cleared
    when a device check delivers the exact max_length)."""
    lay = a._layout
    p = lay.plans.get("attention")
    if p is None:
        p = lay.plans["attention"] = _make_plan(lay)
    return p


def _make_plan(lay: Layout) -> Plan:
    ns = lay.ns
    if ns.is_host(lay.offsets):  # the C++ CPU kernels read host int64 offsets (a view for int64 host offsets)
        offsets = ns.from_numpy(lay.host_offsets())
    else:  # device offsets as they are, int32 or int64: no copy, no sync
        offsets = lay.offsets
    # The device summary wherever the host holds no copy of the offsets (its max_seqlen may be the
    # token count, a caller's bound, or exact once the check landed): the kernel takes the smaller
    # of the two, at the cost of one 8-byte load per thread.
    return Plan(offsets, _max_seqlen(lay), lay.device_summary if lay.host is None else None)


def _max_seqlen(lay: Layout) -> int:
    if lay.max_length is not None:
        return lay.max_length
    if lay.host is not None:
        lay.max_length = int(np.diff(lay.host).max(initial=0))
        return lay.max_length
    return lay.total  # device offsets never read, or traced ones: the token count bounds every length


class TileSchedule:
    """A packed-tile schedule kept between calls over the same offsets (scree._C's `schedule`): its
    device buffer, and whether a call wrote it (`ready`, set from what the call returns). The pack
    kernel it saves took 19 us of a 0.2 ms forward over 1..64-token sequences on an H200."""

    __slots__ = ("k_layout", "buffer", "ready")

    def __init__(self, k_layout: Layout, buffer: Any) -> None:
        self.k_layout, self.buffer, self.ready = k_layout, buffer, False


def tile_schedule(ns: ModuleType, q: Array, k: Array, like: Any, backward: bool, stream: int) -> TileSchedule:
    """The schedule of the forward's query tiles (or the backward's key tiles) over q's and k's
    offsets, kept in q's Layout per (direction, stream, thread): a call reads it in its stream's
    order after the call that wrote it, and threads never share one (both, like the forward's tile
    counter, keep two launch sequences from interleaving over one buffer). Empty-handed (a fresh,
    not ready buffer) when k's Layout is another one than the kept schedule's."""
    kept = q._layout.plans.setdefault("tile_schedules", {})
    key = (backward, stream, get_ident())
    s = kept.get(key)
    if s is None or s.k_layout is not k._layout:
        rows = (k if backward else q).values.shape[0]
        nbytes = _C.cuda_tile_schedule_bytes(rows, q.num_sequences)
        s = kept[key] = TileSchedule(k._layout, ns.empty((nbytes,), "uint8", like=like))
    return s


def _schedule_args(a: Any, schedule: TileSchedule | None) -> tuple[Any, bool]:
    """scree._C's `schedule` and `schedule_ready` arguments for a kept schedule (or none)."""
    return (None, False) if schedule is None else (a(schedule.buffer), schedule.ready)


def _mark_written(schedule: TileSchedule | None, kept: bool) -> None:
    """A call that returned True wrote (or read) the schedule: later calls read it."""
    if schedule is not None and kept:
        schedule.ready = True


def kernel_args(spec: AttentionSpec, max_seqlen_q: int, max_seqlen_k: int, deterministic: bool = False) -> Any:
    """The scalars of one kernel call as scree._C.AttentionArgs."""
    left, right = spec.window_args
    return _C.AttentionArgs(max_seqlen_q, max_seqlen_k, spec.scale, spec.causal, left, right, spec.softcap or 0.0,
                            deterministic)


def forward(ns: ModuleType, q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, args: Any,
            q_summary: Any = None, with_lse: bool = True, workspace: Any = None,
            stream: int | None = None, schedule: TileSchedule | None = None,
            workspace_zeroed: bool = False) -> tuple[Any, Any]:
    """(out (Tq, Hq, Dv), lse (Hq, Tq)) from the compiled kernel, lse in `lse_dtype(q's dtype)`
    (float32; float64 for float64 inputs), or None when not `with_lse` (a call that neither returns
    lse nor keeps it for a backward: one allocation less). Outputs, and the CUDA forward's
    workspace (fwd_workspace_bytes) unless the caller passes one (cudaMallocAsync'ing it in C++ cost ~12 us a call and
    ~100 us after each device sync on an H200 host), are allocated by `ns` like q. cu_q / cu_k as
    plan() gives them; args a scree._C.AttentionArgs; q_summary the plan's device summary of q's
    offsets (or None). GPU kernels run on `stream`, by default the framework's current one;
    `schedule` (tile_schedule) keeps the packed tiles between calls. `workspace_zeroed`: the
    caller's workspace was zeroed when allocated and only CUDA forwards on `stream` used it since
    (each leaves its tile counter zero), so no memset runs before the kernel."""
    # (The dtype's name and the sizes only where used, and every _C argument positional: a call with
    # *args and a keyword goes through a built tuple and dict: this wrapper 6.4 -> 5.1 us of a ~13 us
    # one-token call on the 2-core VM, NOTES.md session 43.)
    qs = q.shape
    if v.shape[2] == qs[2]:
        out = ns.empty_like(q)
    else:
        out = ns.empty((qs[0], qs[1], v.shape[2]), ns.dtype_name(q), like=q)
    lse = ns.empty((qs[1], qs[0]), lse_dtype(ns.dtype_name(q)), like=q) if with_lse else None
    a = ns.kernel_arg
    if workspace is None and not ns.is_host(q):
        workspace = ns.empty((fwd_workspace_bytes(qs[0], cu_q.shape[0] - 1),), "uint8", like=q)
    sched, ready = _schedule_args(a, schedule)
    kept = _C.varlen_fwd(a(q), a(k), a(v), a(cu_q), a(cu_k), a(out), None if lse is None else a(lse), args,
                         None if workspace is None else a(workspace), None if q_summary is None else a(q_summary),
                         ns.stream(q) if stream is None else stream, sched, ready, workspace_zeroed)
    _mark_written(schedule, kept)
    return out, lse


def backward(ns: ModuleType, dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, cu_q: Any, cu_k: Any,
             args: Any, schedule: TileSchedule | None = None) -> tuple[Any, Any, Any]:
    """(dq, dk, dv) from the compiled kernel; outputs, and the workspace the CUDA backward needs
    (sized by scree._C.cuda_bwd_workspace_bytes, none on the CPU), allocated by `ns` like q;
    `schedule` (tile_schedule(..., backward=True)) keeps the packed key tiles between calls."""
    dq, dk, dv = ns.empty_like(q), ns.empty_like(k), ns.empty_like(v)
    # Sized from the shapes (the C++ formula, as JAX sizes it): the arguments are checked once,
    # by varlen_bwd below, not a second time on every backward.
    nbytes = 0 if ns.is_host(q) else _C.cuda_bwd_workspace_bytes(q.shape[0], k.shape[0], cu_q.shape[0] - 1,
                                                                  q.shape[1], q.shape[2], args.deterministic,
                                                                  ns.dtype_name(q), args.max_seqlen_k)
    workspace = ns.empty((nbytes,), "uint8", like=q) if nbytes else None
    a = ns.kernel_arg
    sched, ready = _schedule_args(a, schedule)
    kept = _C.varlen_bwd(a(dout), a(q), a(k), a(v), a(out), a(lse), a(cu_q), a(cu_k), a(dq), a(dk), a(dv), args,
                         None if workspace is None else a(workspace), ns.stream(q), sched, ready)
    _mark_written(schedule, kept)
    return dq, dk, dv

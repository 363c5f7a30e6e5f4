#!/usr/bin/env python3
"""Where the host time of a scree.varlen_attention call goes, piece by piece, on a tiny CUDA batch
(4 x 16 tokens, 16 heads of 128, bf16, causal) where the GPU work is negligible: each piece timed
in its own loop (host microseconds per call before the final sync, and wall), next to the same
pieces of PyTorch's FA-2 (the aten ops, and torch.nn.attention.varlen.varlen_attn through autograd),
then torch.profiler's table of CUDA runtime calls for one scree forward+backward (CUPTI sees the
calls scree's C++ makes too). A diagnostic for the host-overhead work (benchmarks/NOTES.md), not a
benchmark: bench_attention_gpu.py reports the numbers users see. cProfile is no use here: the
backward runs on autograd's device thread, which it does not see.

    python benchmarks/diag/host_profile.py [--calls 300] [--json PATH] [--cprofile]

--cprofile looks only at the isolated forward (three Arrays over a new cu_seqlens, the bench's
"isolated" call): cProfile's top functions by own time, then torch.profiler's table of the CUDA
runtime calls the same calls make (launches, event queries, allocations inside scree._C).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch

import scree
from scree import _C
from scree.integrations import flash_api
from scree.kernels import attention as K


def per_call(fn: Callable[[], Any], calls: int, sync_each: bool = False) -> dict:
    """Host and wall microseconds per call over a loop (median of 3 loops), GPU idle at the start."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    hosts, walls = [], []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
            if sync_each:
                torch.cuda.synchronize()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        hosts.append((t1 - t0) / calls * 1e6)
        walls.append((t2 - t0) / calls * 1e6)
    return dict(host_us=statistics.median(hosts), wall_us=statistics.median(walls))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cprofile", action="store_true",
                    help="only: cProfile of the isolated forward (3 Arrays over a new cu_seqlens), top 30 by own time")
    args = ap.parse_args()
    n, h, d, L = 4, 16, 128, 16
    dev, bf = "cuda", torch.bfloat16
    cu = torch.arange(0, (n + 1) * L, L, dtype=torch.int32, device=dev)
    q, k, v, g = (torch.randn(n * L, h, d, device=dev, dtype=bf) for _ in range(4))
    lq, lk, lv = (x.clone().requires_grad_(True) for x in (q, k, v))
    Q, Kk, V = (scree.from_cu_seqlens(x, cu, max_seqlen=L) for x in (q, k, v))
    GQ, GK, GV = (Q.with_values(lq), Kk.with_values(lk), V.with_values(lv))
    spec_args = _C.AttentionArgs(L, L, d ** -0.5, True, -1, -1, 0.0, False)
    ns = scree._backends.get("torch")
    a = ns.kernel_arg
    out = torch.empty_like(q)
    lse = torch.empty(h, n * L, device=dev, dtype=torch.float32)
    dq, dk, dv = (torch.empty_like(x) for x in (q, k, v))
    wsb = _C.cuda_bwd_workspace_bytes(n * L, n * L, n, h, d, False)
    ws = torch.empty(wsb, device=dev, dtype=torch.uint8)
    K.forward(ns, q, k, v, cu, cu, spec_args)
    out, lse = K.forward(ns, q, k, v, cu, cu, spec_args)
    caps_f = lambda: [a(x) for x in (q, k, v, cu, cu, out, lse)]  # noqa: E731 - a capsule is used once
    stream = ns.stream(q)

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y, z):
            return x.clone()

        @staticmethod
        def backward(ctx, gx):
            return gx, None, None

    class TwoOutputs(torch.autograd.Function):  # scree's shape: out and a non-differentiable lse
        @staticmethod
        def forward(ctx, x, y, z):
            lse_ = torch.empty(h, n * L, device=dev)
            ctx.mark_non_differentiable(lse_)
            ctx.set_materialize_grads(False)
            return x.clone(), lse_

        @staticmethod
        def backward(ctx, gx, _):
            return gx, gx, gx

    fa2_f, fa2_b = torch.ops.aten._flash_attention_forward, torch.ops.aten._flash_attention_backward

    def fa2_fwdbwd():
        o, s, rng, unused, _ = fa2_f(q, k, v, cu, cu, L, L, 0.0, True, False)
        return fa2_b(g, q, k, v, o, s, cu, cu, L, L, 0.0, True, rng, unused)

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    ws_f = torch.empty(_C.cuda_fwd_workspace_bytes(q.shape[0], cu.shape[0] - 1), device=dev, dtype=torch.uint8)

    if args.cprofile:
        import cProfile
        import pstats
        iso = lambda: _nograd(lambda: _iso(q, k, v, cu.clone(), L))  # noqa: E731
        for _ in range(50):
            iso()
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            iso()
        torch.cuda.synchronize()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tprof:
            for _ in range(20):
                iso()
            torch.cuda.synchronize()
        print("\n# torch.profiler, 20 isolated forwards (self CPU time)\n"
              + tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return
    pieces: dict[str, Callable[[], Any]] = {
        "torch.empty": lambda: torch.empty(64, h, d, device=dev, dtype=bf),
        "torch add (one kernel)": lambda: q.add(k),
        "autograd engine, identity Function": lambda: torch.autograd.grad(Identity.apply(lq, lk, lv), lq, g),
        "autograd engine, (out, lse) Function": lambda: torch.autograd.grad(TwoOutputs.apply(lq, lk, lv)[0],
                                                                             (lq, lk, lv), g),
        "fa2 aten fwd+bwd through autograd": lambda: torch.autograd.grad(
            fa2_f(lq, lk, lv, cu, cu, L, L, 0.0, True, False)[0], (lq, lk, lv), g),
        "fa2 aten fwd": lambda: fa2_f(q, k, v, cu, cu, L, L, 0.0, True, False),
        "fa2 aten fwd+bwd (no autograd)": fa2_fwdbwd,
        "scree _C.varlen_fwd (incl. kernel_arg x8)": lambda: _C.varlen_fwd(*caps_f(), spec_args, a(ws_f), stream=stream),
        "scree _C.varlen_fwd, no workspace (cudaMallocAsync)": lambda: _C.varlen_fwd(*caps_f(), spec_args, None, stream=stream),
        "scree kernel_arg x7": caps_f,
        "scree K.forward": lambda: K.forward(ns, q, k, v, cu, cu, spec_args),
        "scree K.forward, counter by cudaMallocAsync (as at bebac47)": lambda: _forward_malloc(ns, q, k, v, cu, spec_args),
        "scree ns.empty((16,), uint8)": lambda: ns.empty((16,), "uint8", like=q),
        "scree ns.is_host(q)": lambda: ns.is_host(q),
        "scree K.forward, kept workspace, no lse": lambda: K.forward(ns, q, k, v, cu, cu, spec_args, None, False,
                                                                    ws_f, stream),
        "scree varlen_attention no_grad": lambda: _nograd(lambda: scree.varlen_attention(Q, Kk, V, causal=True)),
        "scree varlen_attention no_grad, return_lse": lambda: _nograd(
            lambda: scree.varlen_attention(Q, Kk, V, causal=True, return_lse=True)),
        "torch.no_grad() enter+exit (in the no_grad rows)": lambda: _nograd(lambda: None),
        "scree _C.varlen_bwd": lambda: _C.varlen_bwd(a(g), a(q), a(k), a(v), a(out), a(lse), a(cu), a(cu), a(dq),
                                                     a(dk), a(dv), spec_args, a(ws), stream),
        "scree K.backward": lambda: K.backward(ns, g, q, k, v, out, lse, cu, cu, spec_args),
        "scree fwd+bwd autograd": lambda: torch.autograd.grad(
            scree.varlen_attention(GQ.with_values(lq), GK.with_values(lk), GV.with_values(lv), causal=True).values,
            (lq, lk, lv), g),
        # fwd+bwd's pieces apart: the forward that records the graph and with_values (the backward
        # inside the engine: bwd_host_timeline.py).
        "scree with_values x3": lambda: (GQ.with_values(lq), GK.with_values(lk), GV.with_values(lv)),
        "scree fwd with a gradient (graph kept, no backward)": lambda: scree.varlen_attention(
            GQ.with_values(lq), GK.with_values(lk), GV.with_values(lv), causal=True),
        "scree from_cu_seqlens (same cu)": lambda: scree.from_cu_seqlens(q, cu, max_seqlen=L),
        # FlashAttention-style code: the Arrays rebuilt from cu in every call and dropped after it
        # (the held Layouts, session 36, keep one Layout for all of them).
        "scree flash_api fwd (Arrays rebuilt each call)": lambda: _nograd(
            lambda: flash_api.flash_attn_varlen_func(q, k, v, cu, cu, L, L, causal=True)),
        "scree flash_api fwd+bwd (Arrays rebuilt each call)": lambda: torch.autograd.grad(
            flash_api.flash_attn_varlen_func(lq, lk, lv, cu, cu, L, L, causal=True), (lq, lk, lv), g),
        "cu.clone()": lambda: cu.clone(),
        "scree from_cu_seqlens (new cu)": lambda: scree.from_cu_seqlens(q, cu.clone(), max_seqlen=L),
        "scree offsets_summary (the device check)": lambda: ns.offsets_summary(cu),
        "scree isolated fwd (new cu, 3 Arrays)": lambda: _nograd(lambda: _iso(q, k, v, cu.clone(), L)),
    }
    if varlen_attn is not None:
        pieces["torch varlen_attn (FA-2) fwd+bwd autograd"] = lambda: torch.autograd.grad(
            varlen_attn(lq, lk, lv, cu, cu, L, L), (lq, lk, lv), g)
    rows = {}
    for name, fn in pieces.items():
        try:
            rows[name] = per_call(fn, args.calls)
        except Exception as e:  # noqa: BLE001 - a piece that cannot run here is reported, not fatal
            rows[name] = dict(error=f"{type(e).__name__}: {e}"[:160])
    rows["scree _C.varlen_fwd, synchronised each call"] = per_call(
        lambda: _C.varlen_fwd(*caps_f(), spec_args, a(ws_f), stream=stream), 100, sync_each=True)
    rows["scree _C.varlen_fwd, no workspace, synchronised each call"] = per_call(
        lambda: _C.varlen_fwd(*caps_f(), spec_args, None, stream=stream), 100, sync_each=True)
    rows["fa2 aten fwd, synchronised each call"] = per_call(
        lambda: fa2_f(q, k, v, cu, cu, L, L, 0.0, True, False), 100, sync_each=True)
    print(f"{'piece':48s} {'host us':>9s} {'wall us':>9s}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:48s} {r['error']}")
        else:
            print(f"{name:48s} {r['host_us']:9.1f} {r['wall_us']:9.1f}")

    from torch.profiler import ProfilerActivity, profile
    fb = pieces["scree fwd+bwd autograd"]
    for _ in range(10):
        fb()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            fb()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    print("\n# torch.profiler, 20 scree forward+backward calls (self CPU time)\n" + table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, profile=table, torch=torch.__version__,
                           gpu=torch.cuda.get_device_name()), f, indent=1)


def _forward_malloc(ns, q, k, v, cu, args):
    """K.forward without the workspace: scree._C allocates the tile counter (cudaMallocAsync)."""
    out = ns.empty((q.shape[0], q.shape[1], v.shape[2]), ns.dtype_name(q), like=q)
    lse = ns.empty((q.shape[1], q.shape[0]), "float32", like=q)
    a = ns.kernel_arg
    _C.varlen_fwd(a(q), a(k), a(v), a(cu), a(cu), a(out), a(lse), args, None, stream=ns.stream(q))
    return out, lse


def _nograd(fn: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return fn()


def _iso(q, k, v, cu, L):
    return scree.varlen_attention(*(scree.from_cu_seqlens(x, cu, max_seqlen=L) for x in (q, k, v)), causal=True)


if __name__ == "__main__":
    main()

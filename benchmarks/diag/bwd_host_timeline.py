#!/usr/bin/env python3
"""Where a forward+backward's host time goes once it is inside torch's autograd engine, on a tiny
CUDA batch (4 x 16 tokens, 16 heads of 128, bf16, causal; the GPU work is negligible). cProfile and
torch.profiler cannot answer it: the backward runs on autograd's device thread, and the profiler
shows only its total ("_AttentionBackward" self time). So the backward's Python body, K.backward and
_C.varlen_bwd are wrapped with timestamps (time.perf_counter is one clock for every thread) and a
call is split into: the forward (graph recorded), autograd.grad up to the backward's first line (the
engine starting and handing over to the device thread), the backward's body and its pieces, and the
rest (the engine's return with the gradients). The same split for a Python Function that only
clones, and FA-2's aten ops through autograd as a whole, for scale. A diagnostic for the host-time
work (benchmarks/NOTES.md), not a benchmark.

    python benchmarks/diag/bwd_host_timeline.py [--calls 300] [--device cpu]   (cpu: no FA-2 row)
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

import scree
from scree import _C
from scree._connect import torch as glue
from scree.kernels import attention as K

_marks: dict[str, float] = {}
_sync: Callable[[], None] = torch.cuda.synchronize


def _timed(name: str, fn: Callable) -> Callable:
    def wrapper(*a: Any, **kw: Any) -> Any:
        _marks[name + ">"] = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            _marks[name + "<"] = time.perf_counter()
    return wrapper


def split(step: Callable[[], Any], grad: Callable[[Any], Any], calls: int, inner: tuple[str, ...]) -> dict:
    """Median microseconds of each span over `calls` calls (the GPU synchronised every 50)."""
    spans: dict[str, list[float]] = {}
    for i in range(calls + 20):
        if i % 50 == 0:
            _sync()
        _marks.clear()
        t0 = time.perf_counter()
        out = step()
        t1 = time.perf_counter()
        grad(out)
        t2 = time.perf_counter()
        if i < 20:
            continue
        row = {"forward": t1 - t0, "autograd.grad": t2 - t1}
        if "bwd>" in _marks:
            row["grad -> backward's first line"] = _marks["bwd>"] - t1
            row["backward body"] = _marks["bwd<"] - _marks["bwd>"]
            row["backward's return -> grad returns"] = t2 - _marks["bwd<"]
        for name in inner:
            if name + ">" in _marks:
                row[f"  {name}"] = _marks[name + "<"] - _marks[name + ">"]
        for k, v in row.items():
            spans.setdefault(k, []).append(v * 1e6)
    return {k: statistics.median(v) for k, v in spans.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    n, h, d, L = 4, 16, 128, 16
    dev = args.device
    bf = torch.bfloat16 if dev == "cuda" else torch.float32
    if dev != "cuda":
        global _sync
        _sync = lambda: None  # noqa: E731
    cu = torch.arange(0, (n + 1) * L, L, dtype=torch.int32, device=dev)
    q, k, v, g = (torch.randn(n * L, h, d, device=dev, dtype=bf) for _ in range(4))
    lq, lk, lv = (x.clone().requires_grad_(True) for x in (q, k, v))
    Q, Kk, V = (scree.from_cu_seqlens(x, cu, max_seqlen=L) for x in (q, k, v))

    # The backward's pieces wrapped where the glue looks them up at call time.
    glue._eager_backward = _timed("bwd", glue._eager_backward)
    # K.backward on this (the main) thread, for the device thread's to compare with.
    ns = scree._backends.get("torch")
    spec_args = _C.AttentionArgs(L, L, d ** -0.5, True, -1, -1, 0.0, False)
    out, lse = K.forward(ns, q, k, v, cu, cu, spec_args)
    main_bwd = []
    for i in range(args.calls + 20):
        if i % 50 == 0:
            _sync()
        t0 = time.perf_counter()
        K.backward(ns, g, q, k, v, out, lse, cu, cu, spec_args)
        if i >= 20:
            main_bwd.append((time.perf_counter() - t0) * 1e6)
    K.backward = _timed("K.backward", K.backward)
    real_bwd = _C.varlen_bwd
    _C.varlen_bwd = _timed("_C.varlen_bwd", real_bwd)

    def scree_step() -> Any:
        return scree.varlen_attention(Q.with_values(lq), Kk.with_values(lk), V.with_values(lv), causal=True).values

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, y: Any, z: Any) -> Any:
            return x.clone()

        @staticmethod
        def backward(ctx: Any, gx: Any) -> Any:
            _marks["bwd>"] = time.perf_counter()
            _marks["bwd<"] = time.perf_counter()
            return gx, None, None

    fa2_f = torch.ops.aten._flash_attention_forward
    rows: dict[str, dict] = {
        "scree": split(scree_step, lambda o: torch.autograd.grad(o, (lq, lk, lv), g), args.calls,
                       ("K.backward", "_C.varlen_bwd")),
        "identity Function": split(lambda: Identity.apply(lq, lk, lv), lambda o: torch.autograd.grad(o, lq, g),
                                   args.calls, ()),
    }
    if dev == "cuda":
        rows["fa2 aten"] = split(lambda: fa2_f(lq, lk, lv, cu, cu, L, L, 0.0, True, False)[0],
                                 lambda o: torch.autograd.grad(o, (lq, lk, lv), g), args.calls, ())
    _C.varlen_bwd = real_bwd
    where = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"# {where}, torch {torch.__version__}; host us a call, median of {args.calls}")
    print(f"K.backward called on the main thread (no autograd): {statistics.median(main_bwd):.1f}")
    for name, r in rows.items():
        print(f"\n{name}: forward + autograd.grad = {r['forward'] + r['autograd.grad']:.1f}")
        for k2, v2 in r.items():
            print(f"  {k2:40s} {v2:8.1f}")


if __name__ == "__main__":
    main()

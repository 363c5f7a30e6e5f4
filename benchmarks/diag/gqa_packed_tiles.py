#!/usr/bin/env python3
"""GQA on the Hopper kernels' packed tiles, measured (issue 18 asked whether a tile should also
hold several query heads of one KV head): scree's forward (no grad) and forward+backward (autograd)
against FA-2 (torch's aten op) on the same tensors, at Hq = 16, head dim 128, bf16, --tokens tokens
of lengths uniform in the kind's range, with Hk = 16, 4, 2, 1. Kernel ms: CUDA events, L2 flushed
before each call (a 512 MiB write), median of --reps. If the time falls with Hk, the group's K/V
reuse already comes from L2 and a tile of several heads has only the per-tile K/V loads to save.
A diagnostic (benchmarks/NOTES.md, nineteenth session), not a benchmark.

    python benchmarks/diag/gqa_packed_tiles.py [tiny|short] [--tokens 32768] [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import numpy as np
import torch

import scree

RANGES = {"tiny": (1, 64), "short": (16, 512)}  # as bench_attention_gpu.py's workloads


def lengths(kind: str, tokens: int, seed: int = 0) -> list[int]:
    lo, hi = RANGES[kind]
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while sum(out) < tokens:
        out.append(min(int(rng.integers(lo, hi + 1)), tokens - sum(out)))
    return out


def kernel_ms(fn: Callable[[], object], reps: int, flush: torch.Tensor) -> float:
    fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        flush.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ms.append(a.elapsed_time(b))
    return statistics.median(ms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", nargs="?", default="tiny", choices=sorted(RANGES))
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    lens = lengths(args.kind, args.tokens)
    total, longest = sum(lens), max(lens)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device="cuda")
    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    fa_fwd, fa_bwd = torch.ops.aten._flash_attention_forward, torch.ops.aten._flash_attention_backward
    for causal in (False, True):
        for hk in (16, 4, 2, 1):
            q = torch.randn(total, 16, 128, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(total, hk, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            g = torch.randn_like(q)
            Q, K = (scree.from_cu_seqlens(x, cu, max_seqlen=longest) for x in (q, k))
            V = K.with_values(v)
            lq, lk, lv = (x.clone().requires_grad_(True) for x in (q, k, v))
            Qg, Kg, Vg = Q.with_values(lq), K.with_values(lk), V.with_values(lv)

            def scree_fwd() -> None:
                with torch.no_grad():
                    scree.varlen_attention(Q, K, V, causal=causal)

            def scree_fwdbwd() -> None:
                torch.autograd.grad(scree.varlen_attention(Qg, Kg, Vg, causal=causal).values, (lq, lk, lv), g)

            def fa2_fwd() -> None:
                fa_fwd(q, k, v, cu, cu, longest, longest, 0.0, causal, False)

            def fa2_fwdbwd() -> None:
                o, lse, seed, offset, _ = fa_fwd(q, k, v, cu, cu, longest, longest, 0.0, causal, False)
                fa_bwd(g, q, k, v, o, lse, cu, cu, longest, longest, 0.0, causal, seed, offset)

            s_f, s_fb, f_f, f_fb = (kernel_ms(f, args.reps, flush) for f in (scree_fwd, scree_fwdbwd, fa2_fwd, fa2_fwdbwd))
            print(f"{args.kind} causal={causal:d} Hq=16 Hk={hk:2d}: scree fwd {s_f:.3f} fwdbwd {s_fb:.3f} | "
                  f"fa2 fwd {f_f:.3f} fwdbwd {f_fb:.3f} | x fa2 fwd {f_f / s_f:.2f} fwdbwd {f_fb / s_fb:.2f}", flush=True)


if __name__ == "__main__":
    main()

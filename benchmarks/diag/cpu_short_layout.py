"""Why the CPU forward over short sequences scales worse with threads than over long ones (issue 20:
on the 16-core host short d64 ran 9.5x its one-thread speed on 16 threads, mixed lengths 15.9x).
Times scree's no-grad forward on the CPU bench's `short` lengths (8..128 tokens, ~4k tokens) with
the same values stored two ways, against one thread:
  token-major  (T, H, D) contiguous, as a projection gives them: a head's rows H D apart (2 KiB at
               8 x 64 fp32), a stride the hardware prefetchers do not follow;
  head-major   (H, T, D) storage seen as (T, H, D): a head's rows adjacent (D apart).
If head-major scales to many threads where token-major does not, the loss is the strided reads of
the items' rows, not the schedule. Prints GFLOP/s (useful FLOPs, as bench_attention_cpu.py counts
them) and the speed-up over one thread; a diagnostic for benchmarks/NOTES.md, not a benchmark.

    python benchmarks/diag/cpu_short_layout.py [--threads 16 1] [--dims 64 128] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_attention_cpu import flops_fwd, make_lengths  # noqa: E402


def median_ms(fn, seconds: float = 1.5) -> float:
    for _ in range(3):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 7:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads(), 1])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--kind", default="short")
    ap.add_argument("--causal", action="store_true")
    args = ap.parse_args()
    lengths = make_lengths(args.kind, args.tokens, np.random.default_rng(0))
    T, hidden = sum(lengths), 512
    print(f"# {args.kind}: {len(lengths)} sequences, {T} tokens, hidden {hidden}, causal {args.causal}; "
          f"scree isa {scree._C.cpu_isa()}; torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'dtype':9s} {'D':>4s} {'layout':12s} " + " ".join(f"{f'{n}T GF/s':>10s}" for n in args.threads)
          + f" {'x 1T':>6s}")
    gen = torch.Generator().manual_seed(0)
    for dtype in args.dtypes:
        dt = getattr(torch, dtype)
        for D in args.dims:
            H = hidden // D
            flops = flops_fwd(lengths, H, D, args.causal)
            base = [torch.randn(T, H, D, generator=gen).to(dt) for _ in range(3)]
            layouts = {
                "token-major": [x.contiguous() for x in base],
                "head-major": [x.transpose(0, 1).contiguous().transpose(0, 1) for x in base],
            }
            for name, (q, k, v) in layouts.items():
                Q = scree.from_lengths(q, lengths)
                K, V = Q.with_values(k), Q.with_values(v)
                rates = []
                for n in args.threads:
                    torch.set_num_threads(n)
                    with torch.no_grad():
                        ms = median_ms(lambda: scree.varlen_attention(Q, K, V, causal=args.causal))
                    rates.append(flops / ms / 1e6)
                torch.set_num_threads(args.threads[0])
                speedup = rates[0] / rates[-1] if args.threads[-1] == 1 else float("nan")
                print(f"{dtype:9s} {D:4d} {name:12s} " + " ".join(f"{r:10.1f}" for r in rates) + f" {speedup:6.2f}")


if __name__ == "__main__":
    main()

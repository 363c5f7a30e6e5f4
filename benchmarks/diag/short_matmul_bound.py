#!/usr/bin/env python3
"""What a matrix library reaches on the products of issue 20's `short` workloads (lengths uniform in
8..128, bench_attention_cpu.py's draw; `--lengths mix` or `eqN` for the bench's other kinds),
against the large-matmul peak the "forward >= 70% (fp32) / 50% (bf16) of the peak" targets are read
against, and scree's forward on the same lengths, in one process. For each head dim (d64: 8 heads,
d128: 4, hidden 512 as the bench) and dtype:

* `per length, any batch`: torch.bmm's rate on each length's two products, S = Q K^T (L x D x L) and
  O = P V (L x L x D), batched until a call holds ~64 MFLOP (no per-call cost left), combined over
  the workload's lengths by time: the most a library reaches on these shapes however it is called.
* `grouped bmm`: the workload as a user could run it with torch without padding: one bmm pair per
  distinct length, batch = sequences of that length x heads.
* `scree`: scree.varlen_attention's forward (no grad, prebuilt Arrays), causal and not; useful FLOPs
  (4 L^2 D per sequence and head, half when causal), as the bench counts them.

Rates in GFLOP/s; % = of the run's large-matmul peak (4096^3, the bench's, or smaller where a call
would be slow: bench_attention_cpu.peak_size). A diagnostic for benchmarks/NOTES.md, not a benchmark.

    python benchmarks/diag/short_matmul_bound.py [--tokens 4096] [--json PATH] [--dtypes float32 bfloat16]
        [--lengths short|mix|eqN] [--dims 64 128]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_attention_cpu as B  # noqa: E402

import scree  # noqa: E402

CALL_FLOPS = 64e6  # per bmm call in the `per length, any batch` bound


def median_s(fn, reps: int) -> float:
    return statistics.median(B.time_calls(fn, reps))


def products_s(batch: int, L: int, D: int, dt: torch.dtype, reps: int) -> float:
    """Seconds of one S = Q K^T and one O = P V bmm over `batch` (L, D) matrices."""
    q, k, v = (torch.randn(batch, L, D).to(dt) for _ in range(3))
    kt = k.transpose(1, 2).contiguous()
    s = torch.empty(batch, L, L, dtype=dt)
    o = torch.empty(batch, L, D, dtype=dt)
    p = torch.rand(batch, L, L).to(dt)
    return median_s(lambda: torch.bmm(q, kt, out=s), reps) + median_s(lambda: torch.bmm(p, v, out=o), reps)


def scree_s(lens: list[int], H: int, D: int, dt: torch.dtype, causal: bool, reps: int) -> float:
    T = sum(lens)
    q, k, v = (torch.randn(T, H, D).to(dt) for _ in range(3))
    Q, K = scree.from_lengths(q, lens), scree.from_lengths(k, lens)
    V = K.with_values(v)
    with torch.no_grad():
        return median_s(lambda: scree.varlen_attention(Q, K, V, causal=causal), reps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(B.DTYPES))
    ap.add_argument("--lengths", default="short", help="the bench's lengths kind: short, mix or eqN")
    ap.add_argument("--dims", nargs="+", type=int, default=[64, 128], choices=(64, 128))
    args = ap.parse_args()
    torch.set_num_threads(B.NCORES)
    lens = B.make_lengths(args.lengths, args.tokens, np.random.default_rng(0))
    count = collections.Counter(lens)
    print(f"# {B.machine_info()['cpu']} | {B.NCORES} threads | torch {torch.__version__} | scree isa "
          f"{scree._C.cpu_isa()} | {args.lengths}: {len(lens)} sequences, {sum(lens)} tokens, {len(count)} distinct "
          "lengths",
          flush=True)
    out: dict = dict(kind=args.lengths, lengths=lens, threads=B.NCORES, rows=[])
    for dtype in args.dtypes:
        dt = B.DTYPES[dtype]
        n = B.peak_size(4096, dtype)  # capped where a call would be slow (the bench's rule)
        peak = B.measure_peak(n, 5, dtype)["gflops"]
        print(f"# {dtype} matmul {n}^3: {peak:.0f} GFLOP/s", flush=True)
        for D in args.dims:
            H = 512 // D
            fl = B.flops_fwd(lens, H, D, False)
            any_batch = grouped = 0.0
            for L, n in sorted(count.items()):
                big = max(1, int(CALL_FLOPS / (4.0 * L * L * D)))
                any_batch += products_s(big, L, D, dt, args.reps) * n * H / big
                grouped += products_s(n * H, L, D, dt, args.reps)
            rates = {"per length, any batch": fl / any_batch, "grouped bmm": fl / grouped}
            for causal in (False, True):
                t = scree_s(lens, H, D, dt, causal, args.reps)
                rates[f"scree{' causal' if causal else ''}"] = fl / (2 if causal else 1) / t
            for name, r in rates.items():
                gf = r / 1e9
                print(f"{dtype:<9} d{D:<4} {name:<22} {gf:8.1f} GFLOP/s {100 * gf / peak:5.1f}% of peak", flush=True)
                out["rows"].append(dict(dtype=dtype, head_dim=D, heads=H, method=name, gflops=gf, peak=peak,
                                        pct_peak=100 * gf / peak))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

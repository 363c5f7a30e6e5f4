#!/usr/bin/env python3
"""The paged decode kernel at every split count, against the one its wave model picks
(scree._C.paged_decode_plan): kernel time with L2 flushed and KV bytes read per second as % of the
device copy rate, bench_paged.py's cases (32 query / 8 KV heads, d128, bf16, shuffled 16-token
pages). A diagnostic behind the split model (benchmarks/NOTES.md), not a benchmark.

    python benchmarks/diag/decode_splits.py [--batch 16 64] [--contexts 1024 4096] [--max-splits 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import scree
from scree import _C
from scree.kernels import paged

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_paged, Timer
from bench_attention_gpu import Timer  # noqa: E402
from bench_paged import HQ, D, copy_rate, paged_cache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="*", default=[16, 64])
    ap.add_argument("--contexts", type=int, nargs="*", default=[1024, 4096])
    ap.add_argument("--max-splits", type=int, default=16)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    timer = Timer(torch, reps=20, warmup=3, budget_s=1.0)
    copy = copy_rate(timer)
    plan = _C.paged_decode_plan
    for b in args.batch:
        for c in args.contexts:
            kv = paged_cache(b, c, 16, rng)
            q = scree.from_lengths(torch.randn((b, HQ, D), device="cuda", dtype=torch.bfloat16), [1] * b)
            scree.paged_attention(q, kv)  # the device check lands
            chosen = {}

            def record(*a):  # the arguments are DLPack capsules: one call may consume them
                chosen["splits"], nbytes = plan(*a)
                return chosen["splits"], nbytes
            paged._C.paged_decode_plan = record
            scree.paged_attention(q, kv)
            cells = []
            for s in range(1, args.max_splits + 1):
                nbytes = 0 if s == 1 else b * HQ * s * (D + 1) * 4
                paged._C.paged_decode_plan = lambda *a, s=s, nbytes=nbytes: (s, nbytes)
                ms = timer(lambda: scree.paged_attention(q, kv))["median_ms"]
                pct = 100 * 2 * b * c * 8 * D * 2 / (ms * 1e-3) / copy
                cells.append(f"{s}:{pct:.1f}")
            paged._C.paged_decode_plan = plan
            print(f"{b:3d} x {c:6d} | model {chosen['splits']} | " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()

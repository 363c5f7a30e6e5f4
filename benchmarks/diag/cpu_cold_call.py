"""What one CPU attention call costs after other work, against the same call back to back (issue 20:
bench_attention_cpu.py times every method once a round, between the other methods' calls, and on
the 16-core host its short d64 fp32 forward read 430 GFLOP/s where cpu_short_layout.py's back-to-back
calls read 673). For scree's no-grad forward and padded SDPA on the bench's lengths, the median time
of one call
  b2b      right after the previous call of the same method;
  matmul   right after a 1024^3 fp32 torch.matmul (all threads: what a layer runs between attentions);
  idle     after 20 ms of sleep (torch's OpenMP workers have stopped spinning and sleep);
  other    right after the other method's call (the bench's interleaving).
A diagnostic for benchmarks/NOTES.md, not a benchmark.

    python benchmarks/diag/cpu_cold_call.py [--calls 40] [--kinds short mix]
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
from bench_attention_cpu import Data, make_lengths  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--kinds", nargs="+", default=["short", "mix"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args()
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    print(f"# torch threads {torch.get_num_threads()}; scree isa {scree._C.cpu_isa()}; ms a call, medians of "
          f"{args.calls}")
    print(f"{'workload':22s} {'method':7s} {'b2b':>8s} {'matmul':>8s} {'idle':>8s} {'other':>8s}")
    for kind in args.kinds:
        lengths = make_lengths(kind, 4096, np.random.default_rng(0))
        for dtype in args.dtypes:
            D = 64 if kind == "short" else 128
            # The bench's own inputs and callables: scree and padded SDPA with its key mask.
            fwd = Data(lengths, 512 // D, D, False, np.random.default_rng(0), dtype).forward_fns(with_1t=False)
            fns = {"scree": fwd["scree"], "sdpa": fwd["padded"]}
            with torch.no_grad():
                for name, fn in fns.items():
                    other = fns["sdpa" if name == "scree" else "scree"]
                    fn()
                    res = {}
                    for mode in ("b2b", "matmul", "idle", "other"):
                        ts = []
                        for _ in range(args.calls):
                            if mode == "matmul":
                                torch.matmul(a, b)
                            elif mode == "idle":
                                time.sleep(0.02)
                            elif mode == "other":
                                other()
                            t0 = time.perf_counter()
                            fn()
                            ts.append(time.perf_counter() - t0)
                        res[mode] = float(np.median(ts)) * 1e3
                    print(f"{kind + ' d' + str(D) + ' ' + dtype:22s} {name:7s} "
                          + " ".join(f"{res[mo]:8.3f}" for mo in ("b2b", "matmul", "idle", "other")))


if __name__ == "__main__":
    main()

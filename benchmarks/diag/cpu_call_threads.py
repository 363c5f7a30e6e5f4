"""The CPU bench's tiny call (4 x 16 tokens, 8 heads x 64, fp32, causal; bench_attention_cpu.py's
call_overhead) by thread count, scree against padded SDPA in the same process: where more threads stop
paying for a 2 MFLOP call. Two sweeps:
  team   torch.set_num_threads(n) for both (scree runs on torch's OpenMP workers);
  scree  torch keeps all cores, scree alone is capped with SCREE_NUM_THREADS=n (what a work-based
         thread cap inside scree would do).
Prints one line per (sweep, n): host us a call, forward and forward+backward, and SDPA's.

    python benchmarks/diag/cpu_call_threads.py [--threads 16 8 4 2 1] [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_attention_cpu import call_overhead  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    cores = torch.get_num_threads()
    counts = args.threads or sorted({c for c in (cores, 8, 4, 2, 1) if c <= cores}, reverse=True)
    print(f"# cores (torch threads at start) {cores}; tiny call us (scree fwd / sdpa fwd, scree fwd+bwd / sdpa fwd+bwd)")
    for sweep in ("team", "scree"):
        for n in counts:
            if sweep == "team":
                torch.set_num_threads(n)
                os.environ.pop("SCREE_NUM_THREADS", None)
            else:
                torch.set_num_threads(cores)
                os.environ["SCREE_NUM_THREADS"] = str(n)
            r = call_overhead(calls=args.calls, repeats=3)["modes"]
            f, b = r["fwd"]["host_us"], r["fwdbwd"]["host_us"]
            print(f"{sweep:5s} n={n:2d}  fwd {f['scree']:7.1f} / {f['sdpa']:7.1f} ({f['sdpa'] / f['scree']:.2f}x)"
                  f"  fwdbwd {b['scree']:7.1f} / {b['sdpa']:7.1f} ({b['sdpa'] / b['scree']:.2f}x)", flush=True)
    os.environ.pop("SCREE_NUM_THREADS", None)
    torch.set_num_threads(cores)


if __name__ == "__main__":
    main()

"""What a large CPU call pays to fault its fresh outputs in: scree's short d128 forward and
forward+backward (bench_attention_cpu.py's `short` lengths, 8..128, hidden 512 = 4 heads x 128, fp32)
at several token counts, with the minor page faults of each call (getrusage) beside its time.
torch's CPU allocator takes blocks above glibc's mmap threshold (32 MiB at most) as fresh mappings, so
every such call faults its output (and gradients) in, 4 KiB at a time. Run the same script under
different allocator settings in separate processes to price them, e.g.
    python benchmarks/diag/cpu_output_faults.py                       # default
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/diag/cpu_output_faults.py   # torch's huge-page blocks
    MALLOC_MMAP_THRESHOLD_=4294967295 MALLOC_TRIM_THRESHOLD_=4294967295 \
        python benchmarks/diag/cpu_output_faults.py                   # glibc keeps large blocks
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import scree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_attention_cpu import make_lengths  # noqa: E402


def timed(fn, reps: int) -> tuple[float, float]:
    """Median ms of a call and the minor faults a call takes (mean), after one warm-up call."""
    fn()
    ts, faults = [], []
    for _ in range(reps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return statistics.median(ts), statistics.fmean(faults)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    args = ap.parse_args()
    env = " ".join(f"{k}={os.environ[k]}" for k in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_") if k in os.environ)
    print(f"# threads {torch.get_num_threads()}, env [{env or 'default'}]; short d{args.dim} x {args.heads} heads, fp32")
    for tokens in args.tokens:
        lens = make_lengths("short", tokens, np.random.default_rng(0))
        T = sum(lens)
        gen = torch.Generator().manual_seed(0)
        q, k, v, g = (torch.randn(T, args.heads, args.dim, generator=gen) for _ in range(4))
        Q, K = scree.from_lengths(q, lens), scree.from_lengths(k, lens)
        lq, lk, lv = (x.clone().requires_grad_(True) for x in (q, k, v))

        def fwd():
            with torch.no_grad():
                return scree.varlen_attention(Q.with_values(q), K.with_values(k), K.with_values(v))

        def fwdbwd():
            out = scree.varlen_attention(Q.with_values(lq), K.with_values(lk), K.with_values(lv))
            return torch.autograd.grad(out.values, (lq, lk, lv), g)

        mb = T * args.heads * args.dim * 4 / 2**20
        (fm, ff), (bm, bf) = timed(fwd, args.reps), timed(fwdbwd, args.reps)
        print(f"tokens {T:6d} (output {mb:6.1f} MiB): fwd {fm:8.2f} ms {ff:8.0f} faults;"
              f" fwd+bwd {bm:8.2f} ms {bf:8.0f} faults", flush=True)


if __name__ == "__main__":
    main()

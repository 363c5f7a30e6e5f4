"""The CPU bench's tiny call (4 x 16 tokens, 8 heads x 64, fp32, causal; bench_attention_cpu.py's
call_overhead) by thread count, scree against padded SDPA in the same process: where more threads stop
paying for a 2 MFLOP call. Two sweeps:
  team   torch.set_num_threads(n) for both (scree runs on torch's OpenMP workers);
  scree  torch keeps all cores, scree alone is capped with SCREE_NUM_THREADS=n (what a work-based
         thread cap inside scree would do).
Prints one line per (sweep, n): host us a call, forward and forward+backward, and SDPA's.
--split: instead, where the forward's time goes, per scree thread count (torch keeps all cores):
  call   scree.varlen_attention under no_grad (the Arrays built once; the bench remakes them with
         with_values, ~1 us each);
  C++    _C.varlen_fwd alone on prebuilt NumPy views of the same tensors, on torch's OpenMP workers
         (as the call runs it) and on scree's own pool (SCREE_SHARE_OPENMP's other road);
  1-tok  the whole call on one token, one head of 8 (the Python and dispatch around any kernel);
  sdpa   padded SDPA on the same batch.
So call - C++ is the host work around the kernel, and C++ by thread count is what the kernel's
split over the workers buys.

    python benchmarks/diag/cpu_call_threads.py [--threads 16 8 4 2 1] [--calls 2000] [--split]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import scree
from scree import _C

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_attention_cpu import call_overhead  # noqa: E402


def per_call_us(fn, calls: int, repeats: int = 5) -> float:
    """Best of `repeats` loops of `calls` back-to-back calls, us a call (after calls // 4 warm-up)."""
    for _ in range(max(1, calls // 4)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def split(counts: list[int], calls: int) -> None:
    lengths, heads, dim = [16] * 4, 8, 64
    gen = torch.Generator().manual_seed(0)
    T, B, L = sum(lengths), len(lengths), max(lengths)
    q, k, v = (torch.randn(T, heads, dim, generator=gen) for _ in range(3))
    Q = scree.from_lengths(q, lengths)
    K, V = Q.with_values(k), Q.with_values(v)
    q1, k1, v1 = (x[:1, :1].contiguous() for x in (q, k, v))
    Q1 = scree.from_lengths(q1, [1])
    K1, V1 = Q1.with_values(k1), Q1.with_values(v1)
    pq, pk, pv = (x.reshape(B, L, heads, dim).transpose(1, 2).contiguous() for x in (q, k, v))
    with torch.no_grad():
        scree.varlen_attention(Q, K, V, causal=True)  # the torch glue shares torch's OpenMP runtime from here on
    shared = _C.shared_openmp_runtime()
    cu = torch.tensor([0, 16, 32, 48, 64], dtype=torch.int32).numpy()
    out = torch.empty_like(q).numpy()
    qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
    args = _C.AttentionArgs(L, L, dim ** -0.5, True, -1, -1, 0.0, False)

    def cpp() -> None:
        _C.varlen_fwd(qn, kn, vn, cu, cu, out, None, args, None, None, 0, None, False)

    print(f"# tiny forward split, us a call (torch threads {torch.get_num_threads()}; shared runtime: {shared or 'none'})")
    print(f"{'scree n':>8s} {'call':>8s} {'C++ omp':>8s} {'C++ pool':>9s} {'1-tok':>7s} {'sdpa':>7s}")
    with torch.no_grad():
        for n in counts:
            os.environ["SCREE_NUM_THREADS"] = str(n)
            call = per_call_us(lambda: scree.varlen_attention(Q, K, V, causal=True), calls)
            c_omp = per_call_us(cpp, calls)
            _C.stop_sharing_openmp_runtime()
            c_pool = per_call_us(cpp, calls)
            if shared:
                _C.share_openmp_runtime(shared)
            one = per_call_us(lambda: scree.varlen_attention(Q1, K1, V1, causal=True), calls)
            sdpa = per_call_us(lambda: F.scaled_dot_product_attention(pq, pk, pv, is_causal=True), calls)
            print(f"{n:8d} {call:8.1f} {c_omp:8.1f} {c_pool:9.1f} {one:7.1f} {sdpa:7.1f}", flush=True)
    os.environ.pop("SCREE_NUM_THREADS", None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--split", action="store_true", help="where the forward's time goes (see the docstring)")
    args = ap.parse_args()
    cores = torch.get_num_threads()
    counts = args.threads or sorted({c for c in (cores, 8, 4, 2, 1) if c <= cores}, reverse=True)
    if args.split:
        split(counts, args.calls)
        return
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

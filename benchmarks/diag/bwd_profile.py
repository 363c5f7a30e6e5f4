"""Driver for Nsight Compute over one attention backward: scree's, FA-4's or FA-2's, on the same packed
batch as benchmarks/bench_attention_gpu.py's equal-length workloads (16 heads x 128, bf16, TOKENS
tokens in sequences of LENGTH), or with `--kind mix|short|tiny` on lengths drawn as the bench draws
that kind (uniform in its range, seed 0; the bench's own draw depends on its workload list). Warm-up calls run outside the profiled range (FA-4 compiles its
kernels on first use); then CALLS backward calls run between cudaProfilerStart / Stop, so
`ncu --profile-from-start off` sees only them. Prints each call's time from CUDA events too.

    ncu --profile-from-start off --set full -k regex:varlen_bwd_sm90 --launch-count 1 \
        python benchmarks/diag/bwd_profile.py --method scree --length 2048
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=("scree", "fa4", "fa2"), default="scree")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--calls", type=int, default=1)
    ap.add_argument("--kind", choices=("equal", "mix", "short", "tiny"), default="equal")
    args = ap.parse_args()
    h, d = args.heads, args.dim
    if args.kind == "equal":
        lens = [args.length] * (args.tokens // args.length)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from bench_attention_gpu import make_lengths
        lens = make_lengths(args.kind, args.tokens, np.random.default_rng(0))
    n, L = len(lens), max(lens)
    dev, bf = "cuda", torch.bfloat16
    cu = torch.tensor(np.concatenate(([0], np.cumsum(lens))), dtype=torch.int32, device=dev)
    total = int(cu[-1])
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v, g = (torch.randn(total, h, d, device=dev, dtype=bf, generator=gen) for _ in range(4))
    lq, lk, lv = (x.clone().requires_grad_(True) for x in (q, k, v))
    if args.method == "scree":
        import scree
        Q, K, V = (scree.from_cu_seqlens(x, cu, max_seqlen=L) for x in (lq, lk, lv))
        out = scree.varlen_attention(Q, K, V, causal=args.causal).values
    elif args.method == "fa4":
        from flash_attn.cute import flash_attn_varlen_func
        r = flash_attn_varlen_func(lq, lk, lv, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=L, max_seqlen_k=L,
                                   causal=args.causal)
        out = r[0] if isinstance(r, (tuple, list)) else r
    else:
        out = torch.ops.aten._flash_attention_forward(lq, lk, lv, cu, cu, L, L, 0.0, args.causal, False)[0]
    bwd = lambda: torch.autograd.grad(out, (lq, lk, lv), g, retain_graph=True)  # noqa: E731
    for _ in range(3):
        bwd()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.profiler.start()
    for _ in range(args.calls):
        start.record()
        bwd()
        end.record()
        torch.cuda.synchronize()
        print(f"{args.method} bwd {n} sequences ({args.kind}, longest {L}), {h} x {d}{' causal' if args.causal else ''}: "
              f"{start.elapsed_time(end):.3f} ms (this call; under a profiler it is not the kernel's time)")
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where the host time of one scree.varlen_attention call goes: a loop of forward+backward calls on
a tiny CUDA batch (4 x 16 tokens, 16 heads of 128, bf16) under cProfile, printing the functions
that take the most cumulative time per call, then the plain loop's host and wall microseconds per
call next to PyTorch's FA-2 op. A diagnostic for the host-overhead work (benchmarks/NOTES.md), not
a benchmark: bench_attention_gpu.py reports the numbers users see.

    python benchmarks/diag/host_profile.py [--calls 200] [--mode fwd|fwdbwd]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import scree


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--mode", default="fwdbwd", choices=("fwd", "fwdbwd"))
    args = ap.parse_args()
    lens, h, d = [16] * 4, 16, 128
    cu = torch.tensor([0, 16, 32, 48, 64], dtype=torch.int32, device="cuda")
    leaves = [torch.randn(64, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=args.mode == "fwdbwd")
              for _ in range(3)]
    g = torch.randn(64, h, d, device="cuda", dtype=torch.bfloat16)

    def call():
        q, k, v = (scree.from_cu_seqlens(x, cu, max_seqlen=16) for x in leaves)
        out = scree.varlen_attention(q, k, v, causal=True)
        if args.mode == "fwdbwd":
            torch.autograd.grad(out.values, leaves, g)

    def fa2():
        out = torch.ops.aten._flash_attention_forward(*leaves, cu, cu, 16, 16, 0.0, True, False)
        if args.mode == "fwdbwd":
            torch.ops.aten._flash_attention_backward(g, *(x.detach() for x in leaves), out[0], out[1], cu, cu, 16, 16,
                                                     0.0, True, out[2], out[3])

    for f in (call, fa2):
        for _ in range(20):
            f()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        call()
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(28)
    for name, f in (("scree", call), ("fa2", fa2)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.calls):
            f()
        host = (time.perf_counter() - t0) / args.calls * 1e6
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / args.calls * 1e6
        print(f"{name:6s} {args.mode}: host {host:7.1f} us/call, wall {wall:7.1f} us/call")


if __name__ == "__main__":
    main()

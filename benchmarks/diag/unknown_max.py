#!/usr/bin/env python3
"""What the forward pays when the host knows no maximum length: Arrays over device offsets built
without max_seqlen are planned with the token count as the bound until their device check lands
(scree/_layout.py), and the Hopper forward's tile order has ~total/128 tiles per sequence to skip
instead of max/128. Times the forward kernel (CUDA events, median) on 32k tokens of lengths
64-4096 (16 heads of 128, bf16) with max_seqlen exact, with the token count, and with the token
count plus the device check's copy of the four numbers (q_summary), which the kernel cuts its
order to. A diagnostic for benchmarks/NOTES.md, not a benchmark.

    python benchmarks/diag/unknown_max.py [--causal]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

import scree
from scree import _C


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lens, total = [], 0
    while total < 32768:
        n = int(min(rng.integers(64, 4097), 32768 - total))
        lens.append(n)
        total += n
    h, d = 16, 128
    q, k, v = (torch.randn(total, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    lse = torch.empty(h, total, device="cuda", dtype=torch.float32)
    ws = torch.empty(_C.cuda_fwd_workspace_bytes(q.shape[0], cu.shape[0] - 1), device="cuda", dtype=torch.uint8)
    summary = torch.empty(4, device="cuda", dtype=torch.int64)
    _C.offsets_summary_cuda(torch.utils.dlpack.to_dlpack(cu), 0, torch.utils.dlpack.to_dlpack(summary)).value()
    stream = torch.cuda.current_stream().cuda_stream
    a = torch.utils.dlpack.to_dlpack

    def run(max_q: int, with_summary: bool) -> None:
        fa = _C.AttentionArgs(max_q, max_q, d ** -0.5, args.causal)
        _C.varlen_fwd(a(q), a(k), a(v), a(cu), a(cu), a(out), a(lse), fa, a(ws), a(summary) if with_summary else None,
                      stream)

    cases = {"exact max_seqlen": (max(lens), False), "token count as bound": (total, False),
             "token count + device summary": (total, True)}
    results = {}
    for name, (m, s) in cases.items():
        for _ in range(3):
            run(m, s)
        ms = []
        for _ in range(args.reps):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            run(m, s)
            e1.record()
            e1.synchronize()
            ms.append(e0.elapsed_time(e1))
        results[name] = statistics.median(ms)
        ref = out.clone() if name == "exact max_seqlen" else ref
        assert torch.equal(out, ref), f"{name}: output differs from the exact-max run"
    print(f"{len(lens)} sequences, {total} tokens, max {max(lens)}, causal={args.causal}, "
          f"{torch.cuda.get_device_name()}")
    for name, t in results.items():
        print(f"  {name:32s} {t:7.3f} ms")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Host microseconds of FlashAttention-style calls, where the Arrays are rebuilt from one cu_seqlens
every call (benchmarks/NOTES.md, sessions 36 and 38: the held Layouts). 4 x 16 tokens, 16 x 128,
bf16, causal; each row is the median and min of 3 loops of 200 calls, GPU idle at the start. For an
old/new A/B, run it once per installed tree (same scree._C), alternating:

    PYTHONPATH=/tmp/site python benchmarks/diag/held_layouts_host_ab.py new
    PYTHONPATH=/tmp/site_old python benchmarks/diag/held_layouts_host_ab.py old
"""

import statistics
import sys
import time

import torch

import scree
from scree.integrations.flash_api import flash_attn_varlen_func as fa

N, H, D, L = 4, 16, 128, 16


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "run"
    cu = torch.arange(0, (N + 1) * L, L, dtype=torch.int32, device="cuda")
    q, k, v, g = (torch.randn(N * L, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    lq, lk, lv = (x.clone().requires_grad_(True) for x in (q, k, v))
    fcs = scree.from_cu_seqlens

    def fwd():
        with torch.no_grad():
            return scree.varlen_attention(fcs(q, cu, max_seqlen=L), fcs(k, cu, max_seqlen=L),
                                          fcs(v, cu, max_seqlen=L), causal=True)

    def fwdbwd():
        out = scree.varlen_attention(fcs(lq, cu, max_seqlen=L), fcs(lk, cu, max_seqlen=L),
                                     fcs(lv, cu, max_seqlen=L), causal=True)
        return torch.autograd.grad(out.values, (lq, lk, lv), g)

    def fa_fwd():
        with torch.no_grad():
            return fa(q, k, v, cu, cu, L, L, causal=True)

    def fa_fwdbwd():
        return torch.autograd.grad(fa(lq, lk, lv, cu, cu, L, L, causal=True), (lq, lk, lv), g)

    rows = {"flash_api fwd": fa_fwd, "flash_api fwd+bwd": fa_fwdbwd,
            "from_cu_seqlens (same cu)": lambda: fcs(q, cu, max_seqlen=L), "FA-style fwd": fwd,
            "FA-style fwd+bwd": fwdbwd}
    for name, fn in rows.items():
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        hosts = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            hosts.append((time.perf_counter() - t0) / 200 * 1e6)
            torch.cuda.synchronize()
        print(f"{label:4s} {name:28s} min {min(hosts):7.1f} med {statistics.median(hosts):7.1f}", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Host microseconds of small attention calls over kept Arrays, for an old/new A/B of the Python
around the kernels (benchmarks/NOTES.md, session 51: the checks' memo). Rows: the CPU forward (no
grad) and forward+backward (autograd) on 1 x 1 and 4 x 16 tokens, 8 heads x 64, float32, causal,
with padded torch SDPA on the same batch; where CUDA runs, the same on 4 x 16 tokens, 16 x 128,
bfloat16, with FlashAttention-2 (aten) beside it. Each row: the median and min over 5 loops of 2,000
calls (500 with a backward), back to back (the GPU synchronised after each loop). Run it once per
tree over the same scree._C, alternating; each tree's python/scree holds a copy of that _C, and
neither tree is an editable install (its import hook outranks PYTHONPATH):

    PYTHONPATH=$PWD/python python benchmarks/diag/call_host_ab.py new
    PYTHONPATH=/tmp/old_tree/python python benchmarks/diag/call_host_ab.py old
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import scree

F = torch.nn.functional


def per_call(fn, calls: int, loops: int, sync) -> tuple[float, float]:
    fn(), fn()
    sync()
    ts = []
    for _ in range(loops):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        ts.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(ts), min(ts)


def rows(device: str, n: int, length: int, heads: int, dim: int, dtype: torch.dtype) -> dict:
    cu = torch.arange(0, (n + 1) * length, length, dtype=torch.int64, device=device)
    q, k, v, g = (torch.randn(n * length, heads, dim, device=device, dtype=dtype) for _ in range(4))
    Q = scree.Array(q, cu)
    K, V = Q.with_values(k), Q.with_values(v)
    lq, lk, lv = (x.clone().requires_grad_(True) for x in (q, k, v))
    LQ, LK, LV = Q.with_values(lq), Q.with_values(lk), Q.with_values(lv)
    pad = [x.view(n, length, heads, dim).transpose(1, 2) for x in (q, k, v)]
    ppad = [x.detach().clone().requires_grad_(True) for x in pad]
    gp = g.view(n, length, heads, dim).transpose(1, 2)

    def fwd():
        with torch.no_grad():
            return scree.varlen_attention(Q, K, V, causal=True)

    def fwdbwd():
        out = scree.varlen_attention(LQ, LK, LV, causal=True)
        return torch.autograd.grad(out.values, (lq, lk, lv), g)

    out = {"scree fwd": fwd, "scree fwd+bwd": fwdbwd}
    if device == "cpu":
        def sdpa():
            with torch.no_grad():
                return F.scaled_dot_product_attention(*pad, is_causal=True)

        def sdpa_bwd():
            o = F.scaled_dot_product_attention(*ppad, is_causal=True)
            return torch.autograd.grad(o, ppad, gp)

        out.update({"sdpa fwd": sdpa, "sdpa fwd+bwd": sdpa_bwd})
    else:
        cu32 = cu.to(torch.int32)

        def fa2():
            with torch.no_grad():
                return torch.ops.aten._flash_attention_forward(q, k, v, cu32, cu32, length, length, 0.0, True,
                                                               False)

        out["fa2 fwd"] = fa2
    return out


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "run"
    calls, loops = 2000, 5
    cases = [("cpu 1x1 f32", "cpu", 1, 1, 8, 64, torch.float32), ("cpu 4x16 f32", "cpu", 4, 16, 8, 64, torch.float32)]
    if torch.cuda.is_available():
        cases.append(("cuda 4x16 bf16", "cuda", 4, 16, 16, 128, torch.bfloat16))
    for name, device, n, length, heads, dim, dtype in cases:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for what, fn in rows(device, n, length, heads, dim, dtype).items():
            c = calls // 4 if "bwd" in what else calls
            med, lo = per_call(fn, c, loops, sync)
            print(f"{label:4s} {name:15s} {what:14s} median {med:7.2f} us  min {lo:7.2f}", flush=True)


if __name__ == "__main__":
    main()

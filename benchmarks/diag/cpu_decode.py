#!/usr/bin/env python3
"""A CPU decode step (one query token a sequence over its cached keys) timed for scree and for
PyTorch's CPU SDPA, in one process on the same values: scree.varlen_attention over the packed
(T, H, D) cache (causal: bottom-right, so the token sees its whole sequence); SDPA padded to the
longest sequence with a key-padding mask, from contiguous per-head (B, H, L, D) tensors built
outside the timing (the layout most favourable to SDPA) and from the strided views a packed cache
gives (`.view(B, L, H, D).transpose(1, 2)`; equal lengths only); and a per-sequence SDPA loop on
contiguous tensors. GQA keys are repeated for SDPA outside the timing. A diagnostic for the
few-rows forward (src/cpu/attention/fwd_few_rows.h, benchmarks/NOTES.md session 47), not
bench_attention_cpu.py, whose workloads have equal q and k lengths.

    python benchmarks/diag/cpu_decode.py [--json PATH] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

import scree

CASES = [  # name, kv lengths, heads q, heads k, head dim
    ("8 x 2048, 8 heads d64", [2048] * 8, 8, 8, 64),
    ("1 x 8192, 8 heads d64", [8192], 8, 8, 64),
    ("32 x 512, 8 heads d64", [512] * 32, 8, 8, 64),
    ("8 x 2048, GQA 32/8 d128", [2048] * 8, 32, 8, 128),
    ("16 mixed 256..4096, 16 heads d128", [256 * (1 + (i * 7) % 16) for i in range(16)], 16, 16, 128),
]


def per_call_us(fn: Callable[[], Any], budget_s: float = 1.0) -> float:
    """Median of 7 loops' mean microseconds per call (each loop ~budget / 7 seconds)."""
    fn()
    t = time.perf_counter()
    fn()
    n = max(1, int(budget_s / 7 / max(time.perf_counter() - t, 1e-6)))
    loops = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        loops.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(loops)


def run_case(name: str, lens: list[int], hq: int, hk: int, d: int, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(0)
    B, L, T = len(lens), max(lens), sum(lens)
    q = torch.randn(B, hq, d, generator=gen).to(dtype)
    k = torch.randn(T, hk, d, generator=gen).to(dtype)
    v = torch.randn(T, hk, d, generator=gen).to(dtype)
    off_k = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    Q, K, V = scree.from_offsets(q, torch.arange(B + 1)), scree.from_offsets(k, off_k), scree.from_offsets(v, off_k)
    rep = hq // hk
    pad = torch.nn.utils.rnn.pad_sequence
    kp = pad(torch.split(k, lens), batch_first=True).transpose(1, 2).repeat_interleave(rep, 1).contiguous()
    vp = pad(torch.split(v, lens), batch_first=True).transpose(1, 2).repeat_interleave(rep, 1).contiguous()
    mask = (torch.arange(L)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :]
    qp = q[:, :, None, :]
    seqs = [(qp[b:b + 1], kp[b:b + 1, :, :n], vp[b:b + 1, :, :n]) for b, n in enumerate(lens)]
    seqs = [(a.contiguous(), b.contiguous(), c.contiguous()) for a, b, c in seqs]
    fns: dict[str, Callable[[], Any]] = {
        "scree": lambda: scree.varlen_attention(Q, K, V, causal=True),
        "sdpa padded": lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask),
        "sdpa loop": lambda: [F.scaled_dot_product_attention(a, b, c) for a, b, c in seqs],
    }
    if len(set(lens)) == 1 and rep == 1:
        ks, vs = (x.view(B, L, hk, d).transpose(1, 2) for x in (k, v))
        fns["sdpa strided"] = lambda: F.scaled_dot_product_attention(qp, ks, vs)
    got = scree.varlen_attention(Q, K, V, causal=True).values.float()
    want = F.scaled_dot_product_attention(qp.float(), kp.float(), vp.float(), attn_mask=mask)[:, :, 0].float()
    err = float((got - want).abs().max())
    us = {m: per_call_us(f) for m, f in fns.items()}
    best = min(t for m, t in us.items() if m != "scree")
    return {"name": name, "lens": lens, "heads_q": hq, "heads_k": hk, "head_dim": d, "us": us,
            "x_best": best / us["scree"], "max_abs_diff_vs_sdpa": err,
            "gbs_scree": 2 * T * hk * d * q.element_size() / us["scree"] / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    rows = [run_case(*c, dtype) for c in CASES]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {a.dtype}, us a call (median of 7 loops)")
    for r in rows:
        cols = "  ".join(f"{m} {t:8.1f}" for m, t in r["us"].items())
        print(f"{r['name']:36s} {cols}  | x best {r['x_best']:.2f}  scree {r['gbs_scree']:.1f} GB/s  "
              f"diff {r['max_abs_diff_vs_sdpa']:.1e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"dtype": a.dtype, "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "scree_cpu_isa": scree._C.cpu_isa(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

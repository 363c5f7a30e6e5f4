#!/usr/bin/env python3
"""Paged decode as a serving step runs it (issue 17): batch of sequences, one query each, 32 query
heads / 8 KV heads, head dim 128, bf16, pages of 16 tokens in shuffled order, contexts 1k..16k.
Same process, same inputs: scree.paged_attention over the PagedKV, and FA-2's varlen forward (the
aten op) on the same keys and values laid out contiguously (no page table: the best an unpaged
kernel does, an upper reference). Reported: the call's GPU time (CUDA events, no flush) and the KV
bytes read per second against the device copy rate measured in the same run (bytes read +
written), the metric of TARGETS.md (>= 75% at contexts >= 4k).

    python benchmarks/bench_paged.py [--out benchmarks/results] [--batch 32] [--contexts 1024 4096 16384]

Writes paged_decode.json and .png. The current paged_attention gathers the cached tokens out of
the pages and runs the varlen kernel (benchmarks/NOTES.md): its bandwidth counts only the KV bytes
a reader of the pages needs, so the gather's extra traffic shows as a lower rate."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import scree
from scree._paged_attention import cached_kv
from _common import cuda_event_ms as gpu_ms, machine_info, write_results

HQ, HK, D, PAGE = 32, 8, 128, 16


def copy_rate() -> float:
    """Device copy, bytes read + written per second."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = gpu_ms(lambda: y.copy_(x), 10)
    return 2 * x.numel() / (ms * 1e-3)


def case(batch: int, context: int, rng: np.random.Generator) -> dict:
    pages_per = -(-context // PAGE)
    num_pages = batch * pages_per + 8
    k_pages = torch.randn((num_pages, PAGE, HK, D), device="cuda", dtype=torch.bfloat16)
    v_pages = torch.randn_like(k_pages)
    order = torch.from_numpy(rng.permutation(num_pages)[:batch * pages_per].astype(np.int32)).cuda()
    table = order.reshape(batch, pages_per)
    lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    kv = scree.PagedKV(k_pages, v_pages, table, lens)
    q = scree.from_lengths(torch.randn((batch, HQ, D), device="cuda", dtype=torch.bfloat16), [1] * batch)
    scree.paged_attention(q, kv)  # the device check lands; later calls know max_kv_len
    # FA-2 on the same tokens, contiguous
    k_cont = cached_kv(kv)[0].values
    v_cont = torch.randn_like(k_cont)
    cu_q = torch.arange(0, batch + 1, dtype=torch.int32, device="cuda")
    cu_k = torch.arange(0, (batch + 1) * context, context, dtype=torch.int32, device="cuda")
    fa2 = torch.ops.aten._flash_attention_forward
    kv_bytes = 2 * batch * context * HK * D * 2
    out = dict(batch=batch, context=context, kv_bytes=kv_bytes)
    out["scree_ms"] = gpu_ms(lambda: scree.paged_attention(q, kv))
    out["fa2_contiguous_ms"] = gpu_ms(lambda: fa2(q.values, k_cont, v_cont, cu_q, cu_k, 1, context, 0.0, False, False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--batch", type=int, nargs="*", default=[16, 64])
    ap.add_argument("--contexts", type=int, nargs="*", default=[1024, 4096, 16384])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    copy = copy_rate()
    print(f"# {torch.cuda.get_device_name()} | device copy {copy / 1e9:.0f} GB/s (read + write) | "
          f"{HQ}/{HK} heads, d{D}, bf16, page {PAGE}")
    print(f"{'batch':>5s} {'context':>8s} | {'scree ms':>9s} {'% copy':>7s} | {'FA-2 contiguous ms':>18s} {'% copy':>7s}")
    rows = []
    for b in args.batch:
        for c in args.contexts:
            r = case(b, c, rng)
            for m in ("scree", "fa2_contiguous"):
                r[f"{m}_pct_copy"] = 100 * r["kv_bytes"] / (r[f"{m}_ms"] * 1e-3) / copy
            rows.append(r)
            print(f"{b:5d} {c:8d} | {r['scree_ms']:9.3f} {r['scree_pct_copy']:6.1f}% | "
                  f"{r['fa2_contiguous_ms']:18.3f} {r['fa2_contiguous_pct_copy']:6.1f}%")
            torch.cuda.empty_cache()

    def plot(plt):
        fig, ax = plt.subplots(figsize=(7, 4))
        for b in args.batch:
            sub = [r for r in rows if r["batch"] == b]
            ax.plot([r["context"] for r in sub], [r["scree_pct_copy"] for r in sub], "o-", label=f"scree, batch {b}")
            ax.plot([r["context"] for r in sub], [r["fa2_contiguous_pct_copy"] for r in sub], "s--",
                    label=f"FA-2 contiguous, batch {b}")
        ax.axhline(75, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("KV bytes read / s, % of device copy")
        ax.legend(fontsize=8)
        return fig

    write_results(args.out, "paged_decode", dict(machine=machine_info(gpu=torch.cuda.get_device_name(),
                                                                       copy_bytes_per_s=copy), rows=rows), plot)


if __name__ == "__main__":
    main()

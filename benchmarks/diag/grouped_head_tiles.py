#!/usr/bin/env python3
"""The Hopper forward's head-grouped tiles, measured (issue 18's GQA part; src/cuda/attention/sm90/
head_group_tiles.h) on the calls they are for: a few new tokens a sequence against a long cache.
Workloads (bf16, d128, causal = bottom-right, contiguous K/V):
  verify  64 sequences, 1..16 queries against 512..4096 keys (speculative-decoding verification)
  chunk   16 sequences, 64 queries against 2048..8192 keys (chunked prefill)
  equal   32k tokens of 1..64, q = k (the packed order's workload: grouping must not take it)
each at Hq = 32 with Hk = 8 (G = 4) and Hk = 4 (G = 8). Rows: scree unforced, scree forced to
per-head tiles (SCREE_SM90_TILES=sequence, and packed), scree's grouped tiles in input order
(SCREE_SM90_GROUPED_ORDER=input; the default is longest first), FA-2 (torch's aten op, GQA, same tensors),
FA-4 (flash_attn.cute) where it imports. Kernel ms: CUDA events, L2 flushed before each call (a
512 MiB write), median of --reps; whole call: GPU idle before, synchronised after, no flush, with
the host time of the call. The 128 x 128 blocks each tile order computes are counted on the host
from the lengths (the prediction the times are read against). Writes a text table and JSON.

    python benchmarks/diag/grouped_head_tiles.py [--reps 20] [--out benchmarks/results/NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import numpy as np
import torch

import scree
from gqa_packed_tiles import kernel_ms  # the same L2-flushed CUDA-event timing (this folder)


def workload(name: str, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    if name == "verify":
        lq = rng.integers(1, 17, 64)
        return lq.tolist(), (rng.integers(512, 4097, 64) + lq).tolist()
    if name == "chunk":
        return [64] * 16, rng.integers(2048, 8193, 16).tolist()
    lens, total = [], 0
    while total < 32768:
        lens.append(min(int(rng.integers(1, 65)), 32768 - total))
        total += lens[-1]
    return lens, lens


def blocks(lq: list[int], lk: list[int], hq: int, group: int) -> int:
    """128 x 128 blocks of the causal (bottom-right) forward over tiles of 128 // group tokens x group heads."""
    tokens, n = 128 // group, 0
    for q, k in zip(lq, lk):
        for m0 in range(0, q, tokens):
            last = min(q, m0 + tokens) - 1 + (k - q)  # the tile's last row sees keys [0, last]
            n += max(0, -(-(last + 1) // 128))
    return n * hq // group


def whole_call(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """(wall ms, host us) of one call from an idle GPU to its synchronisation, medians."""
    wall, host = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        wall.append((t2 - t0) * 1e3)
        host.append((t1 - t0) * 1e6)
    return statistics.median(wall), statistics.median(host)


def fa4():
    try:
        from flash_attn.cute import flash_attn_varlen_func
        return flash_attn_varlen_func
    except Exception:  # not installed on this machine: the row is left out
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    fa_fwd = torch.ops.aten._flash_attention_forward
    fa4_fn = fa4()
    rows, lines = [], []
    for name in ("verify", "chunk", "equal"):
        lq, lk = workload(name, rng)
        cq = torch.tensor(np.concatenate([[0], np.cumsum(lq)]), dtype=torch.int32, device="cuda")
        ck = torch.tensor(np.concatenate([[0], np.cumsum(lk)]), dtype=torch.int32, device="cuda")
        for hk in (8, 4):
            hq, g = 32, 32 // hk
            q = torch.randn(sum(lq), hq, 128, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(sum(lk), hk, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            Q = scree.from_cu_seqlens(q, cq, max_seqlen=max(lq))
            K = scree.from_cu_seqlens(k, ck, max_seqlen=max(lk))
            V = K.with_values(v)
            flops = 4 * 128 * sum(min(kk, kk - qq + i + 1) for qq, kk in zip(lq, lk) for i in range(qq)) * hq

            def run(tiles: str | None, order: str = "longest") -> Callable[[], object]:
                def call() -> None:
                    if tiles is None:
                        os.environ.pop("SCREE_SM90_TILES", None)
                    else:
                        os.environ["SCREE_SM90_TILES"] = tiles
                    os.environ["SCREE_SM90_GROUPED_ORDER"] = order
                    with torch.no_grad():
                        scree.varlen_attention(Q, K, V, causal=True)
                return call

            methods: dict[str, Callable[[], object]] = {
                "scree": run(None), "scree input order": run(None, "input"),
                "scree per-head (sequence)": run("sequence"), "scree packed": run("packed"),
                "FA-2": lambda: fa_fwd(q, k, v, cq, ck, max(lq), max(lk), 0.0, True, False),
            }
            if fa4_fn is not None:
                methods["FA-4"] = lambda: fa4_fn(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=max(lq),
                                                 max_seqlen_k=max(lk), causal=True)
            times = {}
            for label, fn in methods.items():
                ms = kernel_ms(fn, args.reps, flush)
                wall, host = whole_call(fn, args.reps)
                times[label] = ms
                rows.append({"workload": name, "hq": hq, "hk": hk, "method": label, "kernel_ms": ms,
                             "call_ms": wall, "host_us": host, "tflops": flops / ms / 1e9})
            os.environ.pop("SCREE_SM90_TILES", None)
            os.environ.pop("SCREE_SM90_GROUPED_ORDER", None)
            b1, bg = blocks(lq, lk, hq, 1), blocks(lq, lk, hq, g)
            best = min(v for key, v in times.items() if not key.startswith("scree"))
            lines.append(f"{name:6s} Hq {hq} Hk {hk} (G {g}): blocks per-head {b1} grouped {bg} ({b1 / bg:.2f}x fewer); "
                         + ", ".join(f"{key} {v:.3f}" for key, v in times.items())
                         + f" ms; scree x best peer {best / times['scree']:.2f}")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n\n" + "\n".join(
        f"{r['workload']:6s} Hk {r['hk']} {r['method']:26s} kernel {r['kernel_ms']:.3f} ms ({r['tflops']:.0f} TFLOP/s) "
        f"call {r['call_ms']:.3f} ms host {r['host_us']:.0f} us" for r in rows)
    print(text.split("\n\n", 1)[1])
    if args.out:
        with open(args.out + ".txt", "w") as f:
            f.write(f"# {torch.cuda.get_device_name()}\n" + text + "\n")
        with open(args.out + ".json", "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The Hopper backward's tile orders A/B'd in one process (benchmarks/NOTES.md, session 38): the
default (causal calls over more than 8 key tiles of varied lengths ranked longest first,
src/cuda/attention/sm90/sequence_rank.cuh) against SCREE_SM90_BWD_ORDER=input, on the bench's
mix / eq workloads and a 512..8192 mix (32k tokens, hidden 2048, bf16), FA-4 beside where
flash_attn.cute imports. bwd ms: autograd.grad over a kept graph (preprocess, key-tile kernel, dQ
conversion), L2 flushed before each call, median of 15; the orders alternate (default input input
default default input) because on these machines the second of two back-to-back runs gains up to
~10%. A diagnostic: bench_attention_gpu.py reports the numbers users see.

    python benchmarks/diag/bwd_tile_order_ab.py
    python benchmarks/diag/bwd_tile_order_ab.py --times [--only d128,eq8192]
    python benchmarks/diag/bwd_tile_order_ab.py --switch SCREE_SM90_BWD_WALK=up

`--switch NAME=VALUE` A/Bs another variable the same way: the default (NAME unset) against NAME=VALUE
(session 44: SCREE_SM90_BWD_WALK=up, the causal key tiles' ascending walk over their query blocks).

`--times` times the default order once per workload and prints one JSON object {workload: ms}: for
A/Bs of two builds, where each build's process runs in turn (session 39's step order). `--only`
keeps the workloads whose names contain one of its comma-separated parts.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

import scree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_attention_gpu import make_lengths  # noqa: E402
from gqa_packed_tiles import kernel_ms  # noqa: E402  (this folder)

WORKLOADS = [("mix d128", "mix", 128), ("mix d64", "mix", 64), ("eq2048 d128", "eq2048", 128),
             ("mix d128 causal", "mix", 128), ("eq8192 d128 causal", "eq8192", 128),
             ("eq2048 d128 causal", "eq2048", 128), ("mix d64 causal", "mix", 64),
             ("mix512-8192 d128 causal", "wide", 128), ("short d128", "short", 128),
             ("short d128 causal", "short", 128)]


def lengths(kind: str, rng: np.random.Generator) -> list[int]:
    if kind.startswith("eq"):
        return [int(kind[2:])] * (32768 // int(kind[2:]))
    if kind == "wide":
        lens: list[int] = []
        while sum(lens) < 32768:
            lens.append(int(rng.integers(512, 8193)))
        lens[-1] -= sum(lens) - 32768
        return lens
    return make_lengths(kind, 32768, rng)


def main() -> None:
    times_only = "--times" in sys.argv
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    switch = sys.argv[sys.argv.index("--switch") + 1] if "--switch" in sys.argv else "SCREE_SM90_BWD_ORDER=input"
    var, value = switch.split("=", 1)
    try:
        from flash_attn.cute import flash_attn_varlen_func as fa4
    except Exception:  # noqa: BLE001 - FA-4 is optional here
        fa4 = None
    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    times: dict[str, float] = {}
    for name, kind, d in WORKLOADS:
        if only is not None and not any(part in name for part in only):
            continue
        lens = lengths(kind, np.random.default_rng(0))
        h, longest, causal = 2048 // d, max(lens), "causal" in name
        cu = torch.tensor(np.concatenate(([0], np.cumsum(lens))), dtype=torch.int32, device="cuda")
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, g = (torch.randn(32768, h, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
        lq, lk, lv = (x.clone().requires_grad_(True) for x in (q, k, v))
        Q, K, V = (scree.from_cu_seqlens(x, cu, max_seqlen=longest) for x in (lq, lk, lv))
        out = scree.varlen_attention(Q, K, V, causal=causal).values

        def bwd(order: str):
            def call() -> None:
                if order == "input":
                    os.environ[var] = value
                else:
                    os.environ.pop(var, None)
                torch.autograd.grad(out, (lq, lk, lv), g, retain_graph=True)
            return call

        if times_only:
            times[name] = round(kernel_ms(bwd("default"), 15, flush), 4)
            continue
        res: dict[str, list[float]] = {"default": [], "input": []}
        for order in ("default", "input", "input", "default", "default", "input"):
            res[order].append(kernel_ms(bwd(order), 15, flush))
        os.environ.pop(var, None)
        dflt, inp = statistics.median(res["default"]), statistics.median(res["input"])
        line = (f"{name:24s} n={len(lens):3d} max={longest:5d}  default "
                + " ".join(f"{x:.3f}" for x in res["default"]) + f"  {switch} "
                + " ".join(f"{x:.3f}" for x in res["input"]) + f"  | {value}/default {inp / dflt:.3f}")
        if fa4 is not None:
            fo = fa4(lq, lk, lv, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest, max_seqlen_k=longest,
                     causal=causal)
            fo = fo[0] if isinstance(fo, (tuple, list)) else fo
            fms = kernel_ms(lambda: torch.autograd.grad(fo, (lq, lk, lv), g, retain_graph=True), 15, flush)
            line += f"  FA-4 {fms:.3f} (default x FA-4 {fms / dflt:.3f})"
        print(line, flush=True)
    if times_only:
        print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How long the Hopper forward's tile order keeps the card busy, modelled on the host: each tile
costs its 128-key blocks plus a fixed cost (--tile-cost, in block-times), the persistent CTAs take
tiles in the order's sequence from a counter (tile_scheduler.cuh: list scheduling over --sms SMs),
and the makespan is compared with the ideal (all work spread evenly) and with longest-first (LPT:
tiles sorted by cost). The order modelled is the per-sequence one (heads outermost, tile indices
descending, sequences in input order) and, with --group, head-grouped tiles (head_group_tiles.h).
Packed tiles (tiny, short q = k calls) are not modelled. Workloads: the GPU bench's (benchmarks/
bench_attention_gpu.py: 32k tokens, 16 heads, d128) and the grouped-tile diag's verification and
chunk batches (grouped_head_tiles.py, same seeds). No GPU needed; a model, not a measurement: it
says where a device-side longest-first order could pay (benchmarks/NOTES.md, thirty-seventh session).

    python benchmarks/diag/tile_order_makespan.py [--sms 132] [--tile-cost 1.0]
"""

from __future__ import annotations

import argparse
import heapq
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_attention_gpu import make_lengths  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grouped_head_tiles import workload as grouped_workload  # noqa: E402  (its lengths, same seeds)


def tile_costs(lq: list[int], lk: list[int], heads: int, group: int, causal: bool) -> list[int]:
    """Key blocks of each tile in the order's sequence (heads outermost, tile index descending)."""
    tokens = 128 // group
    n_tiles = max((q + tokens - 1) // tokens for q in lq)
    costs = []
    for _ in range(heads // group):
        for i in range(n_tiles - 1, -1, -1):
            for q, k in zip(lq, lk):
                m0 = i * tokens
                if m0 >= q:
                    continue
                seen = min(q, m0 + tokens) + (k - q) if causal else k  # bottom-right causal: the last row's keys
                costs.append(-(-max(seen, 0) // 128))
    return costs


def makespan(costs: list[int], sms: int, fixed: float) -> float:
    free = [0.0] * sms
    for c in costs:
        t = heapq.heappop(free)
        heapq.heappush(free, t + c + fixed)
    return max(free)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--tile-cost", type=float, default=1.0, help="a tile's fixed cost in block-times")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = []
    for kind, causal in (("mix", False), ("mix", True), ("eq2048", False), ("eq8192", True)):
        lens = make_lengths(kind, 32768, np.random.default_rng(0))
        cases.append((f"{kind}{' causal' if causal else ''} (16 heads)", lens, lens, 16, 1, causal))
    for name in ("verify", "chunk"):
        lq, lk = grouped_workload(name, rng)
        for hk in (8, 4):
            cases.append((f"{name} Hq 32 Hk {hk} grouped", lq, lk, 32, 32 // hk, True))
    print(f"# {args.sms} SMs, a tile's fixed cost {args.tile_cost} block-times; makespans in block-times")
    for name, lq, lk, heads, group, causal in cases:
        costs = tile_costs(lq, lk, heads, group, causal)
        ideal = (sum(costs) + args.tile_cost * len(costs)) / args.sms
        order = makespan(costs, args.sms, args.tile_cost)
        lpt = makespan(sorted(costs, reverse=True), args.sms, args.tile_cost)
        print(f"{name:28s} {len(costs):6d} tiles, longest {max(costs):3d} blocks: order {order:7.0f} "
              f"({order / ideal:.2f}x ideal), longest-first {lpt:7.0f} ({lpt / ideal:.2f}x), "
              f"order / longest-first {order / lpt:.2f}")


if __name__ == "__main__":
    main()

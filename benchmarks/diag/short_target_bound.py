#!/usr/bin/env python3
"""How fast the issue-18 targets (forward and forward+backward >= 2.0x the best peer on `short` and
`tiny` d128) ask a kernel to run, from a bench_attention_gpu.py JSON: the bench's own lengths are
regenerated from its seed (and checked against the FLOPs it recorded), each target's time is turned
into TFLOP/s on the 128 x 128 blocks scree's forward tiles compute (per-sequence tiles for sequences
> 128 queries, packed tiles of whole sequences of <= 128 otherwise), and set beside the rates every
method reached on eq2048 d128 in the same run, where each tile is 16 full blocks. A diagnostic for
benchmarks/NOTES.md, not a benchmark.

    python benchmarks/diag/short_target_bound.py [benchmarks/results/attention_gpu_s20.json]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_attention_gpu as B  # noqa: E402

TILE = 128


def bench_lengths(result: dict) -> dict[str, list[int]]:
    """Each workload's lengths, drawn as run_workload draws them (lengths, then one data seed) over
    the workloads the run had (--only draws for those alone), checked against the recorded FLOPs."""
    rows = {w["name"]: w for w in result["workloads"]}
    rng = np.random.default_rng(result["config"]["seed"])
    out = {}
    for name, kind, d, causal in B.WORKLOADS:
        if name not in rows:
            continue
        lens = B.make_lengths(kind, B.WORKLOAD_TOKENS.get(name, result["config"]["tokens"]), rng)
        rng.integers(1 << 31)
        f = B.flops_fwd(lens, lens, rows[name]["heads"], d, causal)
        if abs(f - rows[name]["flops_fwd"]) > 1e-6 * f:
            raise SystemExit(f"{name}: regenerated lengths give {f:.4g} FLOPs, the JSON {rows[name]['flops_fwd']:.4g}")
        out[name] = lens
    return out


def scree_blocks(lens: list[int], window: int = 128) -> int:
    """128 x 128 blocks of scree's non-causal forward with equal q / k lengths: a sequence of > 128
    one tile per 128 queries over all its key blocks; runs of sequences of <= 128 packed greedily in
    order (restarted every `window` sequences), a tile computing ceil(rows / 128) = 1 key block."""
    blocks, i = 0, 0
    while i < len(lens):
        if lens[i] > TILE:
            blocks += math.ceil(lens[i] / TILE) ** 2
            i += 1
            continue
        end, rows, j = min(len(lens), (i // window + 1) * window), lens[i], i + 1
        while j < end and lens[j] <= TILE and rows + lens[j] <= TILE:
            rows, j = rows + lens[j], j + 1
        blocks += 1
        i = j
    return blocks


def main(path: str) -> None:
    result = json.loads(Path(path).read_text())
    rows = {w["name"]: w for w in result["workloads"]}
    mm = result["ceilings"]["matmul"]["tflops"]

    def ms(name: str, mode: str, method: str) -> float | None:
        return rows[name]["modes"].get(mode, {}).get("methods", {}).get(method, {}).get("median_ms")

    print(f"# {path}: bf16 matmul {mm:.0f} TFLOP/s", flush=True)
    eq = rows.get("eq2048 d128")
    if eq is not None:
        for mode, mult in (("fwd", 1.0), ("fwdbwd", 3.5)):
            rates = {m: mult * eq["flops_fwd"] / (ms("eq2048 d128", mode, m) * 1e-3) / 1e12
                     for m in ("scree", "fa4", "cudnn", "fa2") if ms("eq2048 d128", mode, m)}
            print(f"eq2048 d128 {mode:6s} TFLOP/s (every block full): "
                  + ", ".join(f"{m} {r:.0f}" for m, r in rates.items()))
    lengths = bench_lengths(result)
    for name in ("short d128", "tiny d128"):
        if name not in rows:
            continue
        w, lens = rows[name], lengths[name]
        tiled = 4.0 * scree_blocks(lens) * TILE * TILE * w["head_dim"] * w["heads"]
        for mode, mult in (("fwd", 1.0), ("fwdbwd", 3.5)):
            peers = {m: ms(name, mode, m) for m in B.PEERS if ms(name, mode, m)}
            best = min(peers, key=peers.get)
            need = peers[best] / 2.0
            print(f"{name} {mode:6s}: {len(lens)} sequences, useful / computed {w['flops_fwd'] / tiled:.2f}; "
                  f"2.0x {best} ({peers[best]:.3f} ms) = {need:.3f} ms = {mult * tiled / need / 1e9:.0f} TFLOP/s "
                  f"on scree's blocks ({mult * tiled / need / 1e9 / mm:.0%} of the matmul); scree "
                  f"{ms(name, mode, 'scree'):.3f} ms = {mult * tiled / ms(name, mode, 'scree') / 1e9:.0f}")
            if mode == "fwd":  # q, k, v read once and out written once, bf16: the forward's least traffic
                nbytes = 4 * w["tokens"] * w["heads"] * w["head_dim"] * 2
                copy = result["ceilings"]["copy"]["gbs"]
                print(f"  {nbytes / 1e6:.0f} MB of q, k, v, out: at 2.0x {nbytes / need / 1e6:.0f} GB/s = "
                      f"{nbytes / need / 1e6 / copy:.0%} of the device copy ({copy:.0f} GB/s); scree "
                      f"{nbytes / ms(name, mode, 'scree') / 1e6 / copy:.0%}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1] / "results/attention_gpu_s20.json"))

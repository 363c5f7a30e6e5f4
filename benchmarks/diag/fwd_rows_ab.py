#!/usr/bin/env python3
"""The Hopper forward's 192-row query tiles at head dim 64 A/B'd in one process (benchmarks/NOTES.md,
session 44; src/cuda/attention/sm90/fwd_rows.h): SCREE_SM90_FWD_ROWS=128 against 192, and 192 with
the three warpgroups' turns (SCREE_SM90_FWD_TURNS=1), on d64 workloads of the bench (32k tokens,
hidden 2048: 32 heads, bf16), FA-2 (torch's) and FA-4 beside where they run. Forward kernel ms:
L2 flushed before each call, median of 15; the settings alternate in a mirrored order (a b c c b a
a b c) because on these machines the second of two back-to-back runs gains up to ~10%. A
diagnostic: bench_attention_gpu.py reports the numbers users see.

    python benchmarks/diag/fwd_rows_ab.py [--only mix,short] [--json PATH] [--auto]

--auto times the unforced choice (no variable set) beside 128 and 192 rows instead of the turns.
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

WORKLOADS = [("mix d64", "mix", False), ("mix d64 causal", "mix", True), ("short d64", "short", False),
             ("short d64 causal", "short", True), ("eq2048 d64", "eq2048", False),
             ("eq8192 d64 causal", "eq8192", True)]
SETTINGS = {"128": ("128", "0"), "192": ("192", "0"), "192 turns": ("192", "1")}
ORDER = ["128", "192", "192 turns", "192 turns", "192", "128", "128", "192", "192 turns"]
# --auto: the unforced choice (fwd_rows.h) beside the forced ones
AUTO_ORDER = ["auto", "128", "192", "192", "128", "auto", "auto", "128", "192"]


def lengths(kind: str) -> list[int]:
    if kind.startswith("eq"):
        return [int(kind[2:])] * (32768 // int(kind[2:]))
    return make_lengths(kind, 32768, np.random.default_rng(0))


def tflops(lens: list[int], heads: int, causal: bool, ms: float) -> float:
    f = sum(4.0 * n * n * 64 * heads for n in lens) * (0.5 if causal else 1.0)
    return f / ms / 1e9


def main() -> None:
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
    json_path = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    auto = "--auto" in sys.argv
    try:
        from flash_attn.cute import flash_attn_varlen_func as fa4
    except Exception:  # noqa: BLE001 - FA-4 is optional here
        fa4 = None
    fa2 = torch.ops.aten._flash_attention_forward
    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    results: dict[str, dict[str, float]] = {}
    print(f"# {torch.cuda.get_device_name()}  fwd kernel ms (TFLOP/s), median of 15, L2 flushed", flush=True)
    for name, kind, causal in WORKLOADS:
        if only is not None and not any(part in name for part in only):
            continue
        lens = lengths(kind)
        h, longest = 32, max(lens)
        cu = torch.tensor(np.concatenate(([0], np.cumsum(lens))), dtype=torch.int32, device="cuda")
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(32768, h, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
        Q, K, V = (scree.from_cu_seqlens(x, cu, max_seqlen=longest) for x in (q, k, v))

        def fwd(setting: str):
            rows, turns = SETTINGS.get(setting, (None, None))

            def call() -> None:
                if setting == "auto":
                    os.environ.pop("SCREE_SM90_FWD_ROWS", None)
                    os.environ.pop("SCREE_SM90_FWD_TURNS", None)
                else:
                    os.environ["SCREE_SM90_FWD_ROWS"], os.environ["SCREE_SM90_FWD_TURNS"] = rows, turns
                with torch.no_grad():
                    scree.varlen_attention(Q, K, V, causal=causal)
            return call

        order = AUTO_ORDER if auto else ORDER
        res: dict[str, list[float]] = {s: [] for s in dict.fromkeys(order)}
        for s in order:
            res[s].append(kernel_ms(fwd(s), 15, flush))
        os.environ.pop("SCREE_SM90_FWD_ROWS", None)
        os.environ.pop("SCREE_SM90_FWD_TURNS", None)
        row = {s: statistics.median(x) for s, x in res.items()}
        with torch.no_grad():
            row["fa2"] = kernel_ms(lambda: fa2(q, k, v, cu, cu, longest, longest, 0.0, causal, False), 15, flush)
            if fa4 is not None:
                row["fa4"] = kernel_ms(lambda: fa4(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest,
                                                   max_seqlen_k=longest, causal=causal), 15, flush)
        results[name] = row
        cells = "  ".join(f"{s} {ms:.3f} ({tflops(lens, h, causal, ms):.0f})" for s, ms in row.items())
        spread = "  runs " + " | ".join(f"{s}: " + " ".join(f"{x:.3f}" for x in res[s]) for s in res)
        if auto:
            print(f"{name:18s} {cells}  | auto/128 {row['auto'] / row['128']:.3f}  auto/192 "
                  f"{row['auto'] / row['192']:.3f}" + spread, flush=True)
            continue
        print(f"{name:18s} {cells}  | 192/128 {row['192'] / row['128']:.3f}  turns/128 "
              f"{row['192 turns'] / row['128']:.3f}" + (f"  128 x FA-4 {row['fa4'] / row['128']:.3f}  best192 x FA-4 "
              f"{row['fa4'] / min(row['192'], row['192 turns']):.3f}" if "fa4" in row else "") + spread, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps({"device": torch.cuda.get_device_name(), "fwd_ms": results}, indent=1))


if __name__ == "__main__":
    main()

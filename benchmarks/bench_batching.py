#!/usr/bin/env python3
"""Batching a skewed length distribution: scree.data.TokenBudgetSampler (packed batches under a
token budget) against a plain shuffled DataLoader with a fixed batch size padded to each batch's
longest sequence, on the same lengths (lognormal, the shape of tokenised text). Reports batches per
epoch, the fraction of computed tokens that are padding, the largest batch, and the sampler's own
throughput (sequences planned per second). Prints a table, writes batching.json / .png to --out.

    python benchmarks/bench_batching.py [--quick] [--sequences N] [--max-tokens T] [--out DIR] [--no-plot]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, machine_info, write_results  # noqa: E402

from scree.data import TokenBudgetSampler  # noqa: E402


def padded_stats(lengths: np.ndarray, batch_size: int, seed: int) -> dict:
    """A shuffled fixed-size batching, each batch padded to its longest sequence."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    slots = sum(len(b) * int(lengths[b].max()) for b in batches)
    return dict(batches=len(batches), padding=1 - lengths.sum() / slots,
                largest_batch_tokens=max(len(b) * int(lengths[b].max()) for b in batches))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sequences", type=int, default=None, help="default 1,000,000 (quick 20,000)")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    n = args.sequences or (20_000 if args.quick else 1_000_000)
    rng = np.random.default_rng(args.seed)
    lengths = np.minimum(rng.lognormal(5.0, 1.0, n).astype(np.int64) + 1, args.max_tokens)  # median ~150, tail to the cap
    t0 = time.perf_counter()
    sampler = TokenBudgetSampler(lengths, max_tokens=args.max_tokens, seed=args.seed)
    batches = sampler.batches()
    plan_s = time.perf_counter() - t0
    budget = dict(batches=len(batches), padding=0.0, largest_batch_tokens=int(max(lengths[b].sum() for b in batches)),
                  mean_batch_tokens=float(np.mean([lengths[b].sum() for b in batches])),
                  sequences_per_s=n / plan_s)
    # the fixed batch size whose mean batch holds the same real tokens as the budget's batches
    fixed_bs = max(1, int(round(budget["mean_batch_tokens"] / lengths.mean())))
    padded = padded_stats(lengths, fixed_bs, args.seed)
    rows = {"scree TokenBudgetSampler (packed)": budget, f"shuffled, batch {fixed_bs}, padded": padded}
    print(f"# {n} sequences, lengths lognormal (median {int(np.median(lengths))}, mean {lengths.mean():.0f}, "
          f"max {int(lengths.max())}), max_tokens {args.max_tokens}")
    print(f"{'method':38s} {'batches':>8s} {'padding':>8s} {'largest batch (slots)':>22s}")
    for name, r in rows.items():
        print(f"{name:38s} {r['batches']:8d} {100 * r['padding']:7.1f}% {r['largest_batch_tokens']:22d}")
    print(f"# sampler: {budget['sequences_per_s'] / 1e6:.2f} M sequences planned per second ({plan_s * 1e3:.0f} ms)")
    stem = "batching" + ("_quick" if args.quick else "")

    def plot(plt):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        names = list(rows)
        axes[0].bar(names, [rows[k]["batches"] for k in names])
        axes[0].set_title("batches per epoch")
        axes[1].bar(names, [100 * rows[k]["padding"] for k in names])
        axes[1].set_title("padding, % of computed tokens")
        for ax in axes:
            ax.tick_params(axis="x", labelsize=7, rotation=10)
        return fig

    config = dict(sequences=n, max_tokens=args.max_tokens, lengths="lognormal(5, 1) + 1, capped", seed=args.seed)
    write_results(args.out, stem, dict(machine=machine_info(), config=config, rows=rows),
                  None if args.no_plot else plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

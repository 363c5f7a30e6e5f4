#!/usr/bin/env python3
"""Elementwise math and per-sequence ops on a ragged batch: scree.Array against torch.nested (the
jagged layout, over the same values buffer, zero-copy) and a Python loop over the sequences'
views, in one process on the same inputs (torch, float32; CPU, and CUDA where present).

Each op is timed as a user sees the call: GPU idle before, synchronised after, no cache flush
(median ms of `--reps` calls), and in a stream of back-to-back calls (host us per call). Prints a
table and writes ragged_ops_<device>.json / .png to --out. torch.nested has no logsumexp or var
over the ragged axis (NotImplementedError in torch 2.11-2.13): those cells say so.

    python benchmarks/bench_ragged_ops.py [--quick] [--device cpu|cuda] [--out DIR] [--no-plot]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scree  # noqa: E402
from _common import HERE, call_stream, isolated_call, machine_info, write_results  # noqa: E402

METHODS = ("scree", "nested", "loop")


def ops(a: scree.Array, nt: torch.Tensor, seqs: list[torch.Tensor], per_seq: torch.Tensor,
        w: torch.Tensor) -> dict[str, dict[str, Callable[[], Any]]]:
    """op -> method -> a call returning the result (per_seq (n, F), w (F, F))."""
    ps_nt = per_seq[:, None, :]  # (n, 1, F) broadcasts over the jagged axis
    return {
        "a + 1": dict(scree=lambda: a + 1.0, nested=lambda: nt + 1.0, loop=lambda: [s + 1.0 for s in seqs]),
        "a * per_seq": dict(scree=lambda: a * per_seq, nested=lambda: nt * ps_nt,
                            loop=lambda: [s * per_seq[i] for i, s in enumerate(seqs)]),
        "exp(a)": dict(scree=lambda: torch.exp(a), nested=lambda: torch.exp(nt), loop=lambda: [torch.exp(s) for s in seqs]),
        "gelu(a)": dict(scree=lambda: F.gelu(a), nested=lambda: F.gelu(nt), loop=lambda: [F.gelu(s) for s in seqs]),
        "linear(a, W)": dict(scree=lambda: F.linear(a, w), nested=lambda: F.linear(nt, w),
                             loop=lambda: [F.linear(s, w) for s in seqs]),
        "sum": dict(scree=a.sum, nested=lambda: nt.sum(dim=1), loop=lambda: torch.stack([s.sum(0) for s in seqs])),
        "mean": dict(scree=a.mean, nested=lambda: nt.mean(dim=1), loop=lambda: torch.stack([s.mean(0) for s in seqs])),
        "max": dict(scree=a.max, nested=lambda: nt.amax(dim=1), loop=lambda: torch.stack([s.amax(0) for s in seqs])),
        "softmax": dict(scree=a.softmax, nested=lambda: torch.softmax(nt, dim=1),
                        loop=lambda: [torch.softmax(s, 0) for s in seqs]),
        "logsumexp": dict(scree=a.logsumexp, nested=lambda: torch.logsumexp(nt, dim=1),
                          loop=lambda: torch.stack([torch.logsumexp(s, 0) for s in seqs])),
        "var": dict(scree=a.var, nested=lambda: nt.var(dim=1, correction=0),
                    loop=lambda: torch.stack([s.var(0, correction=0) for s in seqs])),
    }


def as_dense(method: str, r: Any, offsets: np.ndarray) -> torch.Tensor:
    """A method's result as one dense tensor (per-token results concatenated), to check agreement."""
    if method == "scree":
        return r.values if isinstance(r, scree.Array) else r
    if method == "nested":
        return r.values() if r.is_nested else r
    return torch.cat(r) if isinstance(r, list) else r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sequences", type=int, default=None, help="batch size (default 64 CPU, 256 CUDA; quick 8)")
    ap.add_argument("--features", type=int, default=None, help="feature width (default 512; quick 64)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per cell (default 30, quick 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    n = args.sequences or (8 if args.quick else 256 if dev.type == "cuda" else 64)
    f = args.features or (64 if args.quick else 512)
    reps = args.reps or (5 if args.quick else 30)
    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(16, 513, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = torch.randn(int(offsets[-1]), f, device=dev)
    a = scree.from_lengths(values, lengths)
    nt = torch.nested.nested_tensor_from_jagged(values, torch.as_tensor(offsets, device=dev))
    seqs = [values[offsets[i]:offsets[i + 1]] for i in range(n)]
    per_seq = torch.randn(n, f, device=dev)
    w = torch.randn(f, f, device=dev) / f ** 0.5
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    info = machine_info(device=str(dev), gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else None)
    config = dict(sequences=n, features=f, tokens=int(offsets[-1]), lengths="uniform 16-512", dtype="float32",
                  reps=reps, timing="isolated: idle before, synchronised after, median ms; stream: host us per call")
    print(f"# {info['cpu'] if dev.type == 'cpu' else info['gpu']} | torch {torch.__version__} | {n} sequences, "
          f"{int(offsets[-1])} tokens, {f} features, float32, {dev}")
    print(f"{'op':14s} | " + " | ".join(f"{m:>18s}" for m in METHODS) + " | scree x nested | scree x loop")
    rows = []
    for name, fns in ops(a, nt, seqs, per_seq, w).items():
        row: dict[str, Any] = dict(op=name, methods={})
        want = None
        for m in METHODS:
            try:
                with torch.no_grad():
                    r = fns[m]()
                    got = as_dense(m, r, offsets)
                    if want is None:
                        want = got
                    # (float32 sums in another order: an absolute tolerance on the result's scale)
                    elif not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-6,
                                            equal_nan=True):
                        raise AssertionError(f"{m} disagrees with scree (max diff {(got - want).abs().max():.3g})")
                    iso = isolated_call(fns[m], sync, reps)
                    stream = call_stream(fns[m], sync, calls=max(reps, 10))
                row["methods"][m] = dict(isolated_ms=iso["median_ms"], host_us=stream["host_us"], wall_us=stream["wall_us"])
            except (NotImplementedError, RuntimeError) as e:
                row["methods"][m] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:100]}")
        ms = {m: v.get("isolated_ms") for m, v in row["methods"].items()}
        for other in ("nested", "loop"):
            row[f"scree_x_{other}"] = ms[other] / ms["scree"] if ms.get(other) and ms.get("scree") else None
        rows.append(row)
        cells = " | ".join(f"{ms[m]:9.3f} ms {row['methods'][m]['host_us']:5.0f}us" if ms.get(m) is not None
                           else f"{'n/a':>18s}" for m in METHODS)
        ratios = " | ".join(f"{row[f'scree_x_{o}']:13.2f}" if row[f"scree_x_{o}"] else f"{'-':>13s}"
                            for o in ("nested", "loop"))
        print(f"{name:14s} | {cells} | {ratios}")
    behind = [r["op"] for r in rows if r["scree_x_nested"] is not None and r["scree_x_nested"] < 1.0]
    print(f"# scree behind torch.nested on: {', '.join(behind) or 'none'} (ratio = nested ms / scree ms)")
    stem = f"ragged_ops_{dev.type}" + ("_quick" if args.quick else "")

    def plot(plt):
        fig, ax = plt.subplots(figsize=(9, 4))
        x = np.arange(len(rows))
        for k, other in enumerate(("nested", "loop")):
            ax.bar(x + 0.4 * k, [r[f"scree_x_{other}"] or 0 for r in rows], 0.4, label=f"scree x {other}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x + 0.2, [r["op"] for r in rows], rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("speed-up of scree (isolated call)")
        ax.set_title(f"ragged ops, {n} sequences x {f} features, {dev}")
        ax.legend()
        return fig

    write_results(args.out, stem, dict(machine=info, config=config, rows=rows), None if args.no_plot else plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

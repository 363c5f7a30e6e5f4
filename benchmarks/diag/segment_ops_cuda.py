#!/usr/bin/env python3
"""Per-sequence reductions on torch CUDA, two ways to the same answer: the scatter by segment id
(scatter_add through float64, scatter_reduce amax: atomics) that the torch backend used, and
torch.segment_reduce over the offsets, which it uses now; then the ops users call (sum, max,
softmax, logsumexp, var) and torch.nested's softmax on the same batch. A diagnostic behind the
choice (benchmarks/NOTES.md), not a benchmark: bench_ragged_ops.py reports what users get.

    python benchmarks/diag/segment_ops_cuda.py [--sequences 256] [--features 512] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import scree
from scree import _backends

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common
from _common import cuda_event_ms as ms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=256)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, 513, args.sequences)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    v = torch.randn(int(offsets[-1]), args.features, device="cuda")
    a = scree.from_lengths(v, lengths)
    ns = _backends.get("torch")
    off = torch.as_tensor(offsets, device="cuda")
    seg = a.segment_ids()
    n = args.sequences
    rows: dict[str, float] = {}
    for op in ("sum", "max"):
        rows[f"{op}: scatter by id"] = ms(lambda op=op: ns.segment_reduce(v, seg, n, op))
        rows[f"{op}: torch.segment_reduce"] = ms(lambda op=op: ns.segment_reduce(v, seg, n, op, off))
        torch.testing.assert_close(ns.segment_reduce(v, seg, n, op, off), ns.segment_reduce(v, seg, n, op),
                                   rtol=1e-4, atol=1e-3)
    for op in ("sum", "max", "logsumexp", "var"):
        rows[f"a.{op}()"] = ms(lambda op=op: getattr(a, op)())
    rows["a.softmax()"] = ms(lambda: a.softmax())
    nt = torch.nested.nested_tensor_from_jagged(v, off)
    rows["torch.softmax(nested, dim=1)"] = ms(lambda: torch.softmax(nt, dim=1))
    print(f"# {torch.cuda.get_device_name()} | {n} sequences, {int(offsets[-1])} tokens x {args.features} float32")
    for k, t in rows.items():
        print(f"{k:34s} {t:8.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, sequences=n,
                           tokens=int(offsets[-1]), features=args.features, ms=rows), f, indent=1)


if __name__ == "__main__":
    main()

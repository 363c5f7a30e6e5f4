#!/usr/bin/env python3
"""Host microseconds of each piece of an isolated tiny CUDA forward (three Arrays over a fresh
cu_seqlens, then the no-grad scree.varlen_attention): 32k tokens of lengths 1..64, 16 heads x 128,
bf16, each piece in its own loop of 300 calls (median of 3 loops, a device sync between loops
only). "fresh" pieces clone cu_seqlens each call (the clone is listed on its own). A diagnostic
(benchmarks/NOTES.md, nineteenth session) next to host_profile.py, which times a 4 x 16 batch.

    python benchmarks/diag/isolated_call_pieces.py
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

import scree
from gqa_packed_tiles import lengths  # (this folder)
from scree._connect import torch as G
from scree._layout import poll
from scree.kernels import attention as K
from scree.kernels.attention_spec import attention_spec


def loop(fn: Callable[[], Any], n: int = 300) -> float:
    """Host us per call: median of 3 loops of n calls, a device sync between loops only."""
    for _ in range(30):
        fn()
    torch.cuda.synchronize()
    r = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        r.append((time.perf_counter() - t0) / n * 1e6)
        torch.cuda.synchronize()
    return statistics.median(r)


def main() -> None:
    ns = scree._backends.get("torch")
    lens = lengths("tiny", 32768)
    tot, L = sum(lens), max(lens)
    cu0 = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(tot, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu = cu0.clone()
    A = [scree.from_cu_seqlens(x, cu, max_seqlen=L) for x in (q, k, v)]
    torch.cuda.synchronize()
    poll()
    spec = attention_spec(*A)
    pq = K.plan(A[0])
    args = K.kernel_args(spec, pq.max_seqlen, pq.max_seqlen)
    stream = ns.stream(q)
    ws = G._fwd_workspace(q, cu, stream)
    kept = K.tile_schedule(ns, A[0], A[1], q, False, stream)
    K.forward(ns, q, k, v, cu, cu, args, pq.summary, False, ws, stream, kept)

    def fresh_arrays() -> list:
        c = cu0.clone()
        return [scree.from_cu_seqlens(x, c, max_seqlen=L) for x in (q, k, v)]

    def fresh_schedule() -> Any:
        B = fresh_arrays()
        return K.tile_schedule(ns, B[0], B[1], q, False, stream)

    def isolated() -> Any:
        return scree.varlen_attention(*fresh_arrays())

    def packing_forward() -> Any:  # a not-ready schedule over the kept buffer: the pack kernel runs
        s = K.TileSchedule(A[1]._layout, kept.buffer)
        return K.forward(ns, q, k, v, cu, cu, args, pq.summary, False, ws, stream, s)

    pieces: dict[str, Callable[[], Any]] = {
        "cu0.clone()": lambda: cu0.clone(),
        "3 Arrays over a fresh cu (incl clone)": fresh_arrays,
        "  from_cu_seqlens fresh cu (incl clone)": lambda: scree.from_cu_seqlens(q, cu0.clone(), max_seqlen=L),
        "  from_cu_seqlens same cu": lambda: scree.from_cu_seqlens(q, cu, max_seqlen=L),
        "  ns.offsets_summary(cu)": lambda: ns.offsets_summary(cu),
        "  ns.is_capturing(cu)": lambda: ns.is_capturing(cu),
        "  torch.empty(4, int64)": lambda: torch.empty(4, dtype=torch.int64, device="cuda"),
        "fresh arrays + tile_schedule (alloc)": fresh_schedule,
        "iso: fresh arrays + varlen_attention": isolated,
        "varlen_attention, kept arrays": lambda: scree.varlen_attention(*A),
        "  attention_spec": lambda: attention_spec(*A),
        "  poll() nothing pending": poll,
        "  K.plan (kept)": lambda: K.plan(A[0]),
        "  kernel_args": lambda: K.kernel_args(spec, pq.max_seqlen, pq.max_seqlen),
        "  ns.stream(q)": lambda: ns.stream(q),
        "  _capturing()": G._capturing,
        "  _fwd_workspace": lambda: G._fwd_workspace(q, cu, stream),
        "  tile_schedule (kept)": lambda: K.tile_schedule(ns, A[0], A[1], q, False, stream),
        "  K.forward, schedule ready": lambda: K.forward(ns, q, k, v, cu, cu, args, pq.summary, False, ws, stream,
                                                          kept),
        "  K.forward, schedule packed (pack kernel)": packing_forward,
        "  torch.empty out": lambda: torch.empty(tot, 16, 128, device="cuda", dtype=torch.bfloat16),
        "  kernel_arg(q)": lambda: ns.kernel_arg(q),
    }
    with torch.no_grad():
        for name, fn in pieces.items():
            print(f"{name:44s} {loop(fn):7.1f} us", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Context-parallel attention across GPUs (issue 19): packed batches of 128k and 512k tokens of
mixed lengths (log-uniform in 1k..64k), head dim 128, causal, forward + backward of
scree.distributed.context_parallel_attention (K/V by all-gather and by the ring) on 1, 2 and 4 GPUs (NCCL, one process a GPU, spawned
here). The one-GPU run is the same total work on one device (world size 1: plain varlen attention
over the whole batch). Reported per world size: median ms of a forward + backward (CUDA events,
all ranks synchronised by a barrier before each), tokens per second per GPU, and the scaling
efficiency (time on 1 GPU / (time on w GPUs x w)), the metric of TARGETS.md (>= 85% at 4 GPUs).

    python benchmarks/bench_context_parallel.py [--out benchmarks/results] [--worlds 1 2 4]
        [--tokens 131072 524288] [--device cpu]   (cpu: a gloo dry run of the plumbing, small sizes)

Writes context_parallel.json and .png."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine_info, write_results

HQ, HK, D = 16, 16, 128


def lengths_for(tokens: int, lo: int, hi: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    out, left = [], tokens
    while left > 0:
        n = int(min(left, np.exp(rng.uniform(np.log(lo), np.log(hi)))))
        out.append(n)
        left -= n
    return out


def worker(rank: int, world: int, port: int, device: str, tokens: int, lo: int, hi: int, reps: int,
           method: str, result_file: str) -> None:
    import torch
    import torch.distributed as dist

    import scree
    import scree.distributed as sd

    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    dev, dtype = (f"cuda:{rank}", torch.bfloat16) if cuda else ("cpu", torch.float32)
    lengths = lengths_for(tokens, lo, hi)
    gen = torch.Generator(device="cpu").manual_seed(0)
    full = {n: scree.from_lengths(torch.randn((tokens, h, D), generator=gen).to(dev, dtype), lengths)
            for n, h in (("q", HQ), ("k", HK), ("v", HK), ("g", HQ))}
    local = {}
    for n, a in full.items():
        local[n], plan = sd.shard_sequences(a, world, rank)
    leaves = {n: local[n].values.clone().requires_grad_(True) for n in ("q", "k", "v")}
    # world 1: the local order is the zigzag order of the chunks; this index puts it back in place
    inverse = torch.from_numpy(np.argsort(plan.rows())).to(dev)

    def step() -> None:
        arrays = {n: local[n].with_values(leaves[n]) for n in leaves}
        if world == 1:  # the baseline: plain varlen attention over the whole batch, no chunks, no copies
            arrays = {n: full[n].with_values(leaves[n][inverse]) for n in leaves}
            out = scree.varlen_attention(arrays["q"], arrays["k"], arrays["v"], causal=True)
            torch.autograd.grad(out.values, list(leaves.values()), full["g"].values)
            return
        out = sd.context_parallel_attention(arrays["q"], arrays["k"], arrays["v"], plan, causal=True, method=method)
        torch.autograd.grad(out.values, list(leaves.values()), local["g"].values)

    times = []
    for i in range(reps + 2):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        if i >= 2:  # two warm-up steps
            times.append((time.perf_counter() - start) * 1e3)
    if rank == 0:
        Path(result_file).write_text(str(statistics.median(times)))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, device: str, tokens: int, lo: int, hi: int, reps: int, method: str) -> float:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "ms")
        mp.spawn(worker, args=(world, free_port(), device, tokens, lo, hi, reps, method, result), nprocs=world,
                 join=True)
        return float(Path(result).read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--worlds", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--tokens", type=int, nargs="*", default=[131072, 524288])
    ap.add_argument("--min-len", type=int, default=1024)
    ap.add_argument("--max-len", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--methods", nargs="*", default=["allgather", "ring"], choices=["allgather", "ring"])
    args = ap.parse_args()
    if args.device == "cuda":
        import torch

        worlds = [w for w in args.worlds if w <= torch.cuda.device_count()]
        gpu = torch.cuda.get_device_name()
    else:
        worlds, gpu = args.worlds, None
    print(f"# {gpu or 'cpu (gloo dry run)'} | worlds {worlds} | {HQ}/{HK} heads, d{D}, causal, lengths "
          f"{args.min_len}..{args.max_len} log-uniform | forward + backward ms, tokens/s per GPU, scaling")
    rows = []
    for tokens in args.tokens:
        base = None
        for w in worlds:
            for method in (["one GPU"] if w == 1 else args.methods):
                ms = run(w, args.device, tokens, args.min_len, args.max_len, args.reps, method)
                base = ms if w == 1 else base
                row = dict(tokens=tokens, world=w, method=method, ms=ms, tokens_per_s_per_gpu=tokens / (ms * 1e-3) / w,
                           efficiency=None if base is None else base / (ms * w))
                rows.append(row)
                eff = "-" if row["efficiency"] is None else f"{100 * row['efficiency']:.1f}%"
                print(f"{tokens:8d} tokens x {w} {method:9s} | {ms:9.2f} ms | {row['tokens_per_s_per_gpu']:12.0f} "
                      f"tok/s/GPU | {eff}", flush=True)

    def plot(plt):
        fig, ax = plt.subplots(figsize=(6, 4))
        for tokens in args.tokens:
            for method in args.methods:
                sub = [r for r in rows if r["tokens"] == tokens and r["method"] == method]
                ax.plot([r["world"] for r in sub], [100 * r["efficiency"] for r in sub], "o-",
                        label=f"{tokens} tokens, {method}")
        ax.axhline(85, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("GPUs")
        ax.set_ylabel("scaling efficiency, %")
        ax.legend(fontsize=8)
        return fig

    write_results(args.out, "context_parallel", dict(machine=machine_info(gpu=gpu, device=args.device),
                                                     rows=rows), plot)


if __name__ == "__main__":
    main()

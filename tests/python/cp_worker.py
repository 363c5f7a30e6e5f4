"""Worker of tests/python/test_distributed.py: `python cp_worker.py WORLD PORT CASE[,CASE...] [cpu|cuda]`
spawns WORLD processes, which run the cases one after another in one process group (a spawn of
WORLD processes, each importing torch, cost ~15 s of a 2-core CI machine's time per case); for
each, every rank shards one seeded batch, runs scree.distributed's context-parallel attention
forward and backward on its share, and gathers outputs and gradients back; rank 0 compares them
with single-process attention on the whole batch and prints `case NAME ok` or `case NAME FAILED:
why`, then goes on to the next case; the exit status is non-zero if any failed (the test runs this
under a time limit, so a hung collective fails instead of hanging).
cpu: gloo, float64, against single-process scree.varlen_attention to 1e-10.
cuda: NCCL, one GPU a rank (tools/multi_gpu_check.sh), bfloat16, against the fp64 CPU result by
FlashAttention's rule: the error at most twice that of single-GPU bfloat16 attention, plus 1e-3."""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import scree
import scree.distributed as sd

CASES = {  # name: (lengths, heads q, heads k, options)
    "causal_gqa": ([37, 1, 0, 64, 3, 130, 8], 4, 2, {"causal": True}),
    "full_mha": ([19, 64, 2, 0, 77], 2, 2, {}),
    "causal_window_softcap": ([200, 31, 5, 96], 2, 1, {"causal": True, "window": (17, 0), "softcap": 3.0}),
    # the ring of K/V shards (scree.distributed.ring; no window)
    "ring_causal_gqa": ([37, 1, 0, 64, 3, 130, 8], 4, 2, {"causal": True, "method": "ring"}),
    "ring_full_softcap": ([19, 64, 2, 0, 77], 2, 1, {"softcap": 3.0, "method": "ring"}),
}
D = 8


def batch(case: str):
    lengths, hq, hk, opts = CASES[case]
    rng = np.random.default_rng(7)
    total = sum(lengths)
    q, k, v, g = (rng.standard_normal((total, h, D)) + 0.1 for h in (hq, hk, hk, hq))
    return lengths, q, k, v, g, opts


def fa_close(got, ref64, low, what: str) -> None:
    err, base = (got.double().cpu() - ref64).abs().max().item(), (low.double().cpu() - ref64).abs().max().item()
    assert err <= 2 * base + 1e-3, f"{what}: error {err:.3g} against {base:.3g} for single-GPU attention"


def run(rank: int, world: int, port: int, cases: list[str], device: str) -> None:
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    failed = []
    for case in cases:
        try:
            run_case(rank, world, case, device)
            if rank == 0:
                print(f"case {case} ok", flush=True)
        except AssertionError as e:  # raised on rank 0 only, after the collectives: the others wait below
            failed.append(case)
            print(f"case {case} FAILED: {' '.join(str(e).split())[:2000]}", flush=True)
        dist.barrier()
    dist.destroy_process_group()
    if failed:
        sys.exit(1)


def run_case(rank: int, world: int, case: str, device: str) -> None:
    cuda = device == "cuda"
    dev, dtype = (f"cuda:{rank}", torch.bfloat16) if cuda else ("cpu", torch.float64)
    lengths, q, k, v, g, opts = batch(case)
    full = lambda x: scree.from_lengths(torch.from_numpy(x).to(dev, dtype), lengths)  # noqa: E731
    local = {}
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g)):
        local[name], plan = sd.shard_sequences(full(x), world, rank)
    leaves = {n: local[n].values.clone().requires_grad_(True) for n in ("q", "k", "v")}
    arrays = {n: local[n].with_values(leaves[n]) for n in leaves}
    out = sd.context_parallel_attention(arrays["q"], arrays["k"], arrays["v"], plan, **opts)
    (out.values * local["g"].values).sum().backward()
    with torch.no_grad():
        got_out = sd.unshard(out.with_values(out.values.detach()), plan).values
        got = {n: sd.unshard(local[n].with_values(leaves[n].grad), plan).values for n in leaves}
    if rank == 0:
        def single(dev_, dtype_):
            ref = {n: torch.from_numpy(x).to(dev_, dtype_).requires_grad_(True)
                   for n, x in (("q", q), ("k", k), ("v", v))}
            o = scree.varlen_attention(*(scree.from_lengths(ref[n], lengths) for n in ("q", "k", "v")),
                                       **{n: x for n, x in opts.items() if n != "method"})
            (o.values * torch.from_numpy(g).to(dev_, dtype_)).sum().backward()
            return o.values.detach(), {n: ref[n].grad for n in ref}

        if cuda:  # the fp64 reference on the bf16-rounded inputs, and single-GPU bf16 for the FA rule
            rounded = {n: torch.from_numpy(x).bfloat16().double().numpy() for n, x in (("q", q), ("k", k), ("v", v))}
            q, k, v = rounded["q"], rounded["k"], rounded["v"]
            g = torch.from_numpy(g).bfloat16().double().numpy()
            ref_out, ref_grad = single("cpu", torch.float64)
            low_out, low_grad = single(dev, dtype)
            fa_close(got_out, ref_out, low_out, f"out ({case})")
            for n in ref_grad:
                fa_close(got[n], ref_grad[n], low_grad[n], f"d{n} ({case})")
        else:
            ref_out, ref_grad = single("cpu", torch.float64)
            torch.testing.assert_close(got_out, ref_out, rtol=1e-10, atol=1e-10)
            for n in ref_grad:
                torch.testing.assert_close(got[n], ref_grad[n], rtol=1e-10, atol=1e-10, msg=f"d{n} ({case})")
        # the positions a rank's tokens have in their sequences (for rotary embeddings)
        for r in range(world):
            rows = plan.rows(r)
            seq = np.searchsorted(plan.starts, rows, side="right") - 1
            assert np.array_equal(plan.positions(r), rows - plan.starts[seq]), f"positions of rank {r} ({case})"


if __name__ == "__main__":
    world, port, cases = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"cp_worker.py: unknown case(s) {unknown}; known: {sorted(CASES)}")
    mp.spawn(run, args=(world, port, cases, device), nprocs=world, join=True)

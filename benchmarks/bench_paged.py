#!/usr/bin/env python3
"""Attention over a paged KV cache as a serving step runs it (issue 17): 32 query heads / 8 KV heads,
head dim 128, bf16, pages of 16 tokens in shuffled order. Same process, same inputs:

* decode (one query per sequence), batch 16 / 64, contexts 1k..16k: scree.paged_attention over the
  PagedKV; FA-4's flash_attn_varlen_func over the same pages (`page_table`, `seqused_k`, its split
  heuristic) when flash-attn-4 is importable; FA-2's varlen forward (the aten op) on the same keys
  laid out contiguously (no page table: what an unpaged kernel reaches, an upper reference).
* chunked prefill (several new tokens per sequence over a cached prefix, bottom-right causal):
  scree.paged_attention over the pages against scree.varlen_attention on the same tokens laid out
  contiguously (the target: within 10%), and FA-4 over the pages.

Reported per method: kernel time (CUDA events, L2 flushed before each call by a 256 MiB memset
outside the events: Timer of bench_attention_gpu.py), the call as a user sees it (isolated: GPU
idle before, synchronised after, no flush; and host microseconds per call in a stream of calls),
and for decode the KV bytes read per second of kernel time against the device copy rate measured
in the same run (bytes read + written), the metric of TARGETS.md (>= 75% at contexts >= 4k).

    python benchmarks/bench_paged.py [--out benchmarks/results] [--batch 16 64] [--contexts ...]

Writes paged_decode.json and .png."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import scree
from scree._paged_attention import cached_kv
from _common import call_stream, isolated_call, machine_info, write_results
from bench_attention_gpu import Timer, fa4_function, short_error

HQ, HK, D = 32, 8, 128


def copy_rate(timer: Timer) -> float:
    """Device copy, bytes read + written per second."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / (timer(lambda: y.copy_(x))["median_ms"] * 1e-3)


def paged_cache(batch: int, kv_len: int, page: int, rng: np.random.Generator) -> scree.PagedKV:
    pages_per = -(-kv_len // page)
    num_pages = batch * pages_per + 8
    k_pages = torch.randn((num_pages, page, HK, D), device="cuda", dtype=torch.bfloat16)
    v_pages = torch.randn_like(k_pages)
    order = torch.from_numpy(rng.permutation(num_pages)[:batch * pages_per].astype(np.int32)).cuda()
    lens = torch.full((batch,), kv_len, dtype=torch.int32, device="cuda")
    kv = scree.PagedKV(k_pages, v_pages, order.reshape(batch, pages_per), lens)
    return kv


def measure(timer: Timer, fn: Callable[[], Any], reps: int) -> dict:
    """Kernel time (flushed) and the call as a user sees it; an error is recorded, not raised."""
    try:
        out = dict(kernel_ms=timer(fn)["median_ms"])
        sync = torch.cuda.synchronize
        out["isolated_ms"] = isolated_call(fn, sync, reps=reps)["median_ms"]
        out["host_us"] = call_stream(fn, sync, calls=50)["host_us"]
        return out
    except Exception as e:  # noqa: BLE001 - a baseline that fails is reported, the rest still runs
        return dict(error=short_error(e))


def fa4_paged(q: torch.Tensor, kv: scree.PagedKV, cu_q: torch.Tensor | None, max_q: int) -> Callable[[], Any] | None:
    fn = fa4_function()
    if fn is None:
        return None
    kw = dict(page_table=kv.page_table, seqused_k=kv.kv_lens, causal=True, num_splits=0)
    if cu_q is None:  # decode: (batch, 1, heads, d)
        qb = q.view(q.shape[0], 1, HQ, D)
        return lambda: fn(qb, kv.k_pages, kv.v_pages, **kw)
    return lambda: fn(q, kv.k_pages, kv.v_pages, cu_seqlens_q=cu_q, max_seqlen_q=max_q, **kw)


def paired_ratio(timer: Timer, fa: Callable[[], Any], fb: Callable[[], Any], rounds: int = 7) -> dict:
    """Median over `rounds` of kernel(fa) / kernel(fb), the two timed back to back in each round:
    single medians of a ~0.25 ms kernel moved ~10% between calls on an H200 (NOTES.md), more than
    the difference a paged / packed ratio is meant to show."""
    ratios = []
    for _ in range(rounds):
        ratios.append(timer(fa)["median_ms"] / timer(fb)["median_ms"])
    return dict(median=float(np.median(ratios)), rounds=ratios)


def with_loader(loader: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn with the Hopper paged forward's loader forced (SCREE_SM90_PAGED_LOADER, read per call)."""
    def call() -> Any:
        os.environ["SCREE_SM90_PAGED_LOADER"] = loader
        try:
            return fn()
        finally:
            del os.environ["SCREE_SM90_PAGED_LOADER"]
    return call


def decode_case(timer: Timer, batch: int, context: int, page: int, rng: np.random.Generator, reps: int) -> dict:
    kv = paged_cache(batch, context, page, rng)
    q = scree.from_lengths(torch.randn((batch, HQ, D), device="cuda", dtype=torch.bfloat16), [1] * batch)
    scree.paged_attention(q, kv)  # the device check lands; later calls know max_kv_len
    k_cont = cached_kv(kv)[0].values
    v_cont = torch.randn_like(k_cont)
    cu_q = torch.arange(0, batch + 1, dtype=torch.int32, device="cuda")
    cu_k = torch.arange(0, (batch + 1) * context, context, dtype=torch.int32, device="cuda")
    fa2 = torch.ops.aten._flash_attention_forward
    row: dict[str, Any] = dict(batch=batch, context=context, kv_bytes=2 * batch * context * HK * D * 2)
    methods = {"scree": lambda: scree.paged_attention(q, kv),
               "fa2_contiguous": lambda: fa2(q.values, k_cont, v_cont, cu_q, cu_k, 1, context, 0.0, False, False)}
    fa4 = fa4_paged(q.values, kv, None, 1)
    if fa4 is not None:
        methods["fa4_paged"] = fa4
    row["methods"] = {m: measure(timer, fn, reps) for m, fn in methods.items()}
    return row


def prefill_case(timer: Timer, batch: int, prefix: int, chunk: int, page: int, rng: np.random.Generator,
                 reps: int) -> dict:
    """`chunk` new query tokens per sequence over `prefix` cached ones (the chunk's own keys are in
    the cache too, appended before attention as engines do): keys prefix + chunk per sequence."""
    kv = paged_cache(batch, prefix + chunk, page, rng)
    q = scree.from_lengths(torch.randn((batch * chunk, HQ, D), device="cuda", dtype=torch.bfloat16), [chunk] * batch)
    scree.paged_attention(q, kv, causal=True)
    k_arr, v_arr = cached_kv(kv)
    k_arr, v_arr = k_arr.with_values(k_arr.values.clone()), v_arr.with_values(v_arr.values.clone())
    cu_q = torch.arange(0, (batch + 1) * chunk, chunk, dtype=torch.int32, device="cuda")
    tokens = batch * chunk
    row: dict[str, Any] = dict(batch=batch, prefix=prefix, chunk=chunk,
                               flops=4.0 * HQ * D * batch * (chunk * prefix + chunk * (chunk + 1) / 2))
    methods = {"scree": lambda: scree.paged_attention(q, kv, causal=True),
               "scree_contiguous": lambda: scree.varlen_attention(q, k_arr, v_arr, causal=True)}
    # The Hopper loader the page size does not get by default (kv_source.h): cp.async for multiples of
    # 128 tokens, TMA for 16, 32 and 64.
    if page % 128 == 0:
        methods["scree_copy"] = with_loader("copy", methods["scree"])
    elif page % 16 == 0 and 128 % page == 0:
        methods["scree_tma"] = with_loader("tma", methods["scree"])
    fa4 = fa4_paged(q.values, kv, cu_q, chunk)
    if fa4 is not None:
        methods["fa4_paged"] = fa4
    row["tokens"] = tokens
    row["methods"] = {m: measure(timer, fn, reps) for m, fn in methods.items()}
    if all("kernel_ms" in row["methods"][m] for m in ("scree", "scree_contiguous")):
        row["paged_over_contiguous_paired"] = paired_ratio(timer, methods["scree"], methods["scree_contiguous"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--batch", type=int, nargs="*", default=[16, 64])
    ap.add_argument("--contexts", type=int, nargs="*", default=[1024, 4096, 16384])
    ap.add_argument("--prefill", type=str, nargs="*", default=["4x4096x512", "8x8192x2048"],
                    help="chunked-prefill cases, batch x prefix x chunk")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--page", type=int, default=16, help="tokens a page")
    ap.add_argument("--seed", type=int, default=0, help="the pages' shuffle")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    timer = Timer(torch, reps=args.reps, warmup=3, budget_s=2.0)
    copy = copy_rate(timer)
    fa4_note = "importable" if fa4_function() is not None else "not importable"
    print(f"# {torch.cuda.get_device_name()} | device copy {copy / 1e9:.0f} GB/s (read + write) | "
          f"{HQ}/{HK} heads, d{D}, bf16, page {args.page} | FA-4 {fa4_note}")
    print("# decode: kernel ms (L2 flushed) and KV bytes / kernel time as % of the copy rate; "
          "isolated call ms; host us per call")
    decode = []
    for b in args.batch:
        for c in args.contexts:
            r = decode_case(timer, b, c, args.page, rng, args.reps)
            cells = []
            for m, v in r["methods"].items():
                if "kernel_ms" in v:
                    v["pct_copy"] = 100 * r["kv_bytes"] / (v["kernel_ms"] * 1e-3) / copy
                    cells.append(f"{m} {v['kernel_ms']:.3f} ({v['pct_copy']:.1f}%) iso {v['isolated_ms']:.3f} "
                                 f"host {v['host_us']:.0f}")
                else:
                    cells.append(f"{m} failed: {v['error'][:120]}")
            decode.append(r)
            print(f"{b:3d} x {c:6d} | " + " | ".join(cells), flush=True)
            torch.cuda.empty_cache()
    print("# chunked prefill: kernel ms, TFLOP/s; scree paged / scree contiguous kernel time (and its median over "
          "rounds timing the two back to back)")
    prefill = []
    for spec in args.prefill:
        b, pre, ch = (int(x) for x in spec.split("x"))
        r = prefill_case(timer, b, pre, ch, args.page, rng, args.reps)
        ms = {m: v.get("kernel_ms") for m, v in r["methods"].items()}
        if ms.get("scree") and ms.get("scree_contiguous"):
            r["paged_over_contiguous"] = ms["scree"] / ms["scree_contiguous"]
        cells = [f"{m} {v:.3f} ({r['flops'] / (v * 1e-3) / 1e12:.0f})" if v else f"{m} failed: "
                 f"{r['methods'][m]['error'][:120]}" for m, v in ms.items()]
        prefill.append(r)
        paired = r.get("paged_over_contiguous_paired", {}).get("median", float("nan"))
        print(f"{spec} | " + " | ".join(cells) + f" | paged / contiguous {r.get('paged_over_contiguous', float('nan')):.3f}"
              f" (paired rounds: {paired:.3f})", flush=True)
        torch.cuda.empty_cache()

    def plot(plt):
        fig, ax = plt.subplots(figsize=(7, 4))
        for b in args.batch:
            sub = [r for r in decode if r["batch"] == b]
            for m, style in (("scree", "o-"), ("fa4_paged", "^-."), ("fa2_contiguous", "s--")):
                pts = [(r["context"], r["methods"][m]["pct_copy"]) for r in sub if "pct_copy" in r["methods"].get(m, {})]
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{m}, batch {b}")
        ax.axhline(75, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("KV bytes read / kernel s, % of device copy")
        ax.legend(fontsize=7)
        return fig

    write_results(args.out, "paged_decode", dict(machine=machine_info(gpu=torch.cuda.get_device_name(),
                                                                       copy_bytes_per_s=copy, fa4=fa4_note, page=args.page),
                                                 decode=decode, prefill=prefill), plot)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Model-level benchmark (issue 12): training-step speed and peak memory of a HF Llama-style model
on a packed batch of mixed-length sequences, attn_implementation="scree" against PyTorch's own
FlashAttention-2 varlen registered as a HF attention function, and against "sdpa" on the same
sequences padded. Same weights, same sequences, one process.

    python benchmarks/bench_train_step.py                       # CUDA: -> results/train_step_cuda.{json,png}
    python benchmarks/bench_train_step.py --out DIR             # results into DIR (and nowhere else)
    python benchmarks/bench_train_step.py --lengths short       # -> results/train_step_cuda_short.{json,png}
    python benchmarks/bench_train_step.py --device cpu --hidden 64 --intermediate 96 --layers 2 \\
        --heads 4 --kv-heads 2 --vocab 128 --tokens 1024 --lengths short   # CPU smoke run

Model: transformers.LlamaConfig, default hidden 2048, 8 layers, 16 query / 4 key-value heads (head
dim 128), intermediate 5632, vocab 32000; random init (seeded) built once; every method trains its
own deep copy of it, bf16 on CUDA (float32 on the CPU).

Batch: --tokens (32768) real tokens; lengths uniform in [64, 4096] (--lengths mix) or [16, 512]
(short), seeded, the last one cut to fit (bench_attention_gpu.make_lengths); random token ids.
  packed  one row (1, T) built by transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=
          True): position_ids restarting per sequence, labels -100 at each sequence start,
          cu_seq_lens_q/k (int32) and max_length_q/k, which HF passes on to the attention function.
  padded  (B, Lmax) right-padded input_ids + attention_mask, labels -100 on padding: the same
          predicted tokens, so the same loss.

Methods:
  scree        attn_implementation="scree" on the packed batch (scree.integrations.transformers).
  fa2_varlen   the packed batch through a custom HF attention function that calls
               torch.ops.aten._flash_attention_forward / _flash_attention_backward (torch's FA-2
               varlen, GQA native) inside a torch.autograd.Function, with the cu_seq_lens HF passes.
  sdpa_padded  attn_implementation="sdpa" on the padded batch; skipped when its estimated peak
               exceeds --max-padded-gb, recorded (not fatal) on OOM.
  eager        attn_implementation="eager" on the packed batch (HF's block-causal mask from the
               position_ids; T x T per head: small sizes only, the CPU default).
Defaults: cuda -> scree fa2_varlen sdpa_padded; cpu -> scree sdpa_padded eager (FA-2 is CUDA-only).

Training step, identical for all: batch moved host -> device, zero_grad, forward with labels (HF's
causal-LM loss), backward, torch.optim.AdamW step (lr 1e-5, torch's default implementation: foreach
on CUDA). Timed as a user sees it: device synchronised before and after each step, wall clock, no
L2 flush; --warmup untimed steps, then the median of --steps. A fresh device copy of the batch every
step, as a training loop has: per-batch work (scree reads cu_seq_lens to the host once per forward)
is paid each step. tokens/s = real tokens / median step (padding is not counted). Peak memory:
torch.cuda.max_memory_allocated, reset before each method's model copy goes to the device (so it
holds weights, gradients, AdamW state and activations); not measured on the CPU. On CUDA one more
step of each method runs under torch.profiler after the timed ones: its kernel time split into the
attention kernels and the rest, and from FA-2's the speed target's ceiling, the step with its
attention taking no time at all (what any attention kernel can give this model).

Correctness, before timing is trusted: the first warm-up step of every method runs on the same
initial weights; its loss and the gradients of layer 0's q/k/v projections (every layer's attention
backward flows into them) are compared with the reference method (fa2_varlen when it ran, else
sdpa_padded, else eager). The gradients carry the check: at random init the loss hardly depends on
attention (letting sequences attend across their boundaries moved it by 1e-4 relative, the q/k/v
gradients by 0.35-0.5, in a tiny float32 model). Relative differences are printed and recorded; beyond the tolerance of
the dtype the run exits 1 (after writing the JSON), as it does when a method fails with an error
other than out-of-memory.

Writes train_step_<cuda|cpu>[_<lengths> unless mix].json (machine with card name, torch / transformers versions and git
commit, config, lengths, per-method numbers, checks, the issue's targets) after every method, and
a PNG bar chart at the end.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, machine_info  # noqa: E402
from bench_attention_gpu import RANGES, gpu_info, make_lengths, short_error  # noqa: E402

METHODS = ("scree", "fa2_varlen", "sdpa_padded", "eager")
IMPL = {"scree": "scree", "fa2_varlen": "fa2_varlen", "sdpa_padded": "sdpa", "eager": "eager"}
REFERENCES = ("fa2_varlen", "sdpa_padded", "eager")   # the check's reference: the first of these that ran
PROBES = tuple(f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv")
# Relative tolerances of the check (loss, L2 of gradients). bf16: differences between attention
# kernels compound over the layers; a wrong layout or backward gives O(1) gradient differences.
TOL = {"bfloat16": (2e-2, 1e-1), "float16": (2e-2, 1e-1), "float32": (1e-4, 1e-3)}
TARGET_SPEED, TARGET_MEMORY = 1.15, 1.0               # issue 12: scree vs fa2_varlen
# The attention kernels of a profiled step, by name: scree's (namespace cuda_attention: forward,
# backward and their pre/post kernels), torch's FA-2 (flash_fwd*/flash_bwd*) and SDPA's
# memory-efficient ones (fmha_cutlass*).
ATTENTION_KERNELS = re.compile(r"cuda_attention|flash_fwd|flash_bwd|fmha")


# ---- FA-2 varlen as a HF attention function -------------------------------------------------------

def _fa2_function():
    """A torch.autograd.Function over torch's FA-2 varlen ops (defined lazily: torch is imported in
    main). q / k / v (T, H, D) with stride 1 in D; cu_seqlens int32; dropout 0."""
    import torch

    class FA2Varlen(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
            out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
                q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale)
            ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, rng_state, unused)
            ctx.args = (max_q, max_k, causal, scale)
            return out

        @staticmethod
        def backward(ctx, dout):
            q, k, v, out, lse, cu_q, cu_k, rng_state, unused = ctx.saved_tensors
            max_q, max_k, causal, scale = ctx.args
            dq, dk, dv = torch.ops.aten._flash_attention_backward(
                dout.contiguous(), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, 0.0, causal, rng_state, unused,
                scale=scale)
            return dq, dk, dv, None, None, None, None, None, None

    return FA2Varlen


_FA2 = None


def fa2_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None,
                         **kwargs):
    """HF's attention-function convention: query (1, Hq, T, D), key / value (1, Hk, T, D) ->
    ((1, T, Hq, D), None). Packed batches only: the cu_seq_lens_q/k and max_length_q/k that
    DataCollatorWithFlattening(return_flash_attn_kwargs=True) adds and HF passes through."""
    global _FA2
    import torch
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None or query.shape[0] != 1 or attention_mask is not None:
        raise ValueError("fa2_varlen takes packed batches only: batch 1, no attention_mask, cu_seq_lens_q/k in "
                         "the model kwargs (DataCollatorWithFlattening(return_flash_attn_kwargs=True))")
    if dropout or kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:
        raise ValueError("fa2_varlen here has no dropout, sliding window or softcap")
    cu_k = kwargs.get("cu_seq_lens_k")
    cu_k = cu_q if cu_k is None else cu_k
    max_q = int(kwargs.get("max_length_q", kwargs.get("max_seqlen_q")))  # a tensor would sync; the collator gives ints
    max_k = int(kwargs.get("max_length_k", kwargs.get("max_seqlen_k", max_q)))
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    _FA2 = _FA2 or _fa2_function()
    t, d = query.shape[2], query.shape[3]
    # (1, H, T, D) -> (T, H, D): a copy, as HF's own FlashAttention path and scree's integration make.
    q = query.transpose(1, 2).reshape(t, query.shape[1], d)
    k = key.transpose(1, 2).reshape(key.shape[2], key.shape[1], d)
    v = value.transpose(1, 2).reshape(value.shape[2], value.shape[1], value.shape[3])
    out = _FA2.apply(q, k, v, cu_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k, bool(causal), scaling)
    return out.view(1, t, out.shape[1], out.shape[2]), None


# ---- batches ----------------------------------------------------------------------------------------

def make_batches(lengths: list[int], vocab: int, seed: int) -> tuple[dict, dict]:
    """(packed, padded) host batches of the same random sequences; torch tensors (and ints)."""
    import torch
    import transformers
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, vocab, n).tolist() for n in lengths]
    packed = dict(transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
        [{"input_ids": s} for s in seqs], return_tensors="pt"))
    b, lmax = len(seqs), max(lengths)
    ids = torch.zeros(b, lmax, dtype=torch.long)
    mask = torch.zeros(b, lmax, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    padded = dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    return packed, padded


def to_device(batch: dict, device: str) -> dict:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


# ---- one method -------------------------------------------------------------------------------------

def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_method(torch, name: str, base, batch: dict, args, tokens: int) -> dict:
    """Warm-up (the first step probed for the check), then timed steps. Returns the method's row;
    the probe (loss and gradients of the first step) is under the key "_probe"."""
    dev = args.device
    cuda = dev.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base_bytes = torch.cuda.memory_allocated() if cuda else None
    model = copy.deepcopy(base).to(dev)
    model.set_attn_implementation(IMPL[name])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    probe: dict[str, Any] = {}
    times, losses = [], []

    def step(first: bool = False):
        b = to_device(batch, dev)
        opt.zero_grad(set_to_none=True)
        loss = model(**b, use_cache=False).loss
        loss.backward()
        if first:  # initial weights, the same for every method: the check's data (a warm-up step)
            probe.update(loss=float(loss.detach()), grads={n: p.grad.detach().float().cpu()
                                                           for n, p in model.named_parameters() if n in PROBES})
        opt.step()
        return loss

    for i in range(args.warmup + args.steps):
        sync(torch, dev)
        t0 = time.perf_counter()
        loss = step(first=i == 0)
        sync(torch, dev)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss.detach())
    peak = torch.cuda.max_memory_allocated() if cuda else None
    med = statistics.median(times)
    kernels = kernel_split(torch, step) if cuda else {}
    return dict(method=name, attn_implementation=IMPL[name],
                layout="padded " + str(list(batch["input_ids"].shape)) if name == "sdpa_padded"
                else "packed " + str(list(batch["input_ids"].shape)),
                step_ms_median=med * 1e3, step_ms_min=min(times) * 1e3, step_ms=[t * 1e3 for t in times],
                tokens_per_s=tokens / med, peak_bytes=peak, base_bytes=base_bytes,
                peak_gib=None if peak is None else peak / 2**30,
                loss_first=probe["loss"], losses=[float(x) for x in losses], _probe=probe, **kernels)


def kernel_split(torch, step) -> dict:
    """One more step under torch.profiler (after the timed ones, so their times do not carry its
    cost): the device time of all its kernels, memory copies and sets (kernel_ms) and of the
    attention kernels among them (attention_kernel_ms, ATTENTION_KERNELS), in ms. What the
    attention's speed can move: a step whose attention kernels took no time at all would still
    take the rest."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    total = attention = 0.0
    for e in prof.events():
        if e.device_type != DeviceType.CUDA:
            continue
        total += e.device_time_total
        if ATTENTION_KERNELS.search(e.name):
            attention += e.device_time_total
    return dict(kernel_ms=total / 1e3, attention_kernel_ms=attention / 1e3)


def compare(probe: dict, ref: dict) -> dict:
    loss_rel = abs(probe["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-12)
    grads = {n.split(".")[-2]: float((probe["grads"][n] - ref["grads"][n]).norm()
                                     / ref["grads"][n].norm().clamp_min(1e-30)) for n in PROBES}
    return dict(loss_rel_diff=loss_rel, grad_rel_l2_diff=grads)


# ---- output -----------------------------------------------------------------------------------------

def fmt(x: float | None, spec: str) -> str:
    """format(x, spec), or "-" right-aligned to spec's width when x is None."""
    return format(x, spec) if x is not None else "-".rjust(int(spec.split(".")[0] or 0))


def print_table(result: dict) -> None:
    print("# x FA-2 = fa2_varlen step time / method step time (= tokens/s ratio); x FA-2 mem = method peak / "
          "fa2_varlen peak; loss = first step's; check = relative differences (loss; largest of the q/k/v "
          "projection gradients of layer 0) against the reference")
    rows = [r for r in result["methods"].values() if "step_ms_median" in r]
    fa2 = result["methods"].get("fa2_varlen", {})
    print(f"{'method':12s} {'layout':22s} {'step ms':>9s} {'tokens/s':>10s} {'x FA-2':>7s} {'peak GiB':>9s} "
          f"{'x FA-2 mem':>10s} {'loss':>8s} {'check vs ' + str(result['check']['reference']):>22s}")
    for r in rows:
        speed = fa2["step_ms_median"] / r["step_ms_median"] if "step_ms_median" in fa2 else None
        mem = r["peak_bytes"] / fa2["peak_bytes"] if fa2.get("peak_bytes") and r["peak_bytes"] else None
        c = result["check"]["pairs"].get(r["method"])
        chk = "reference" if r["method"] == result["check"]["reference"] else (
            "-" if c is None else f"loss {c['loss_rel_diff']:.1e} grad {max(c['grad_rel_l2_diff'].values()):.1e}")
        print(f"{r['method']:12s} {r['layout']:22s} {r['step_ms_median']:9.1f} {r['tokens_per_s']:10.0f} "
              f"{fmt(speed, '7.2f')} {fmt(r['peak_gib'], '9.2f')} {fmt(mem, '10.2f')} {r['loss_first']:8.4f} "
              f"{chk:>22s}")
    for r in rows:
        if r.get("kernel_ms"):
            print(f"# {r['method']}: attention kernels {r['attention_kernel_ms']:.1f} ms of the step's "
                  f"{r['kernel_ms']:.1f} ms of kernel time ({r['attention_kernel_ms'] / r['kernel_ms']:.0%}; one "
                  "profiled step)")
    ceiling = result["targets"].get("speed", {}).get("ceiling")
    if ceiling:
        print(f"# fa2_varlen's step with its attention kernels taking no time: {ceiling['step_ms']:.1f} ms, "
              f"{ceiling['x_fa2']:.2f}x FA-2: the most any attention kernel can give this model")
    for r in result["methods"].values():
        if "step_ms_median" not in r:
            state = "skipped" if "skipped" in r else "FAILED"
            print(f"{r['method']:12s} {state}: {r.get('skipped') or r.get('error')}")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["methods"].values() if "step_ms_median" in r]
    names = [r["method"] for r in rows]
    colors = ["#2a7ab9" if n == "scree" else "#b0b0b0" for n in names]
    fa2 = result["methods"].get("fa2_varlen", {})
    panels = [("tokens_per_s", 1e-3, "training-step throughput (k tokens/s)")]
    if all(r["peak_bytes"] is not None for r in rows):
        panels.append(("peak_bytes", 2.0**-30, "peak memory (GiB, max_memory_allocated)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, scale, label) in zip(axes[0], panels):
        bars = ax.bar(names, [r[key] * scale for r in rows], color=colors)
        ax.set_ylabel(label)
        if fa2.get(key):  # each bar labelled with its ratio to FA-2
            ax.bar_label(bars, [f"{r[key] / fa2[key]:.2f}x" for r in rows], fontsize=8)
    c, m = result["config"], result["machine"]
    fig.suptitle(f"HF Llama training step on {m.get('gpu') or result['device']}, {c['dtype']}\n"
                 f"hidden {c['hidden']}, {c['layers']} layers, heads {c['heads']}/{c['kv_heads']}; "
                 f"{c['tokens']} tokens, {c['sequences']} sequences ({c['lengths']})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stem(result: dict) -> str:
    """train_step_<cuda|cpu>, plus _<lengths> unless the lengths are the default mix."""
    kind = result["config"]["lengths"]
    return f"train_step_{result['device']}" + ("" if kind == "mix" else f"_{kind}")


def write(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem(result)}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


# ---- main -------------------------------------------------------------------------------------------

def build_model(torch, transformers, args, dtype, max_len: int):
    """The master copy, on the host in `dtype` (random init on the device is faster, then moved)."""
    torch.manual_seed(args.seed)
    mcfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                                    num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                    num_key_value_heads=args.kv_heads, max_position_embeddings=max(4096, max_len))
    with torch.device(args.device):
        base = transformers.LlamaForCausalLM(mcfg).to(dtype)
    return base.to("cpu")


def skip_reason(name: str, result: dict, args, elapsed: float, longest_s: float) -> str | None:
    """Why `name` should not start (None: run it)."""
    cfg = result["config"]
    slots_per_token = cfg["padded_slots"] / cfg["tokens"]
    if name == "fa2_varlen" and result["device"] != "cuda":
        return "FA-2 (torch.ops.aten._flash_attention_forward) is CUDA-only"
    est_s = longest_s * (slots_per_token if name == "sdpa_padded" else 1.0)
    if args.time_limit is not None and elapsed + est_s > args.time_limit:
        return f"time limit: {elapsed:.0f} s used, ~{est_s:.0f} s needed, limit {args.time_limit:.0f} s"
    peaks = [r["peak_bytes"] for r in result["methods"].values() if r.get("peak_bytes")]
    if name == "sdpa_padded" and peaks:
        # The packed peak scaled by slots / tokens (an over-estimate: weights and AdamW state do not
        # scale), plus HF's boolean (B, 1, Lmax, Lmax) mask.
        est = max(peaks) * slots_per_token + cfg["sequences"] * cfg["max_length"] ** 2
        result["methods"][name]["estimated_peak_gb"] = est / 1e9
        print(f"# sdpa_padded: estimated peak {est / 1e9:.1f} GB (limit {args.max_padded_gb} GB)", flush=True)
        if est / 1e9 > args.max_padded_gb:
            return f"estimated peak {est / 1e9:.1f} GB > --max-padded-gb {args.max_padded_gb}"
    return None


def run_all(torch, base, packed: dict, padded: dict, methods: list[str], args, result: dict, out_dir: Path,
            t_start: float) -> tuple[dict, bool]:
    """Every method in turn (the JSON rewritten after each); returns the probes and whether a
    method failed with an error other than out-of-memory."""
    probes: dict[str, dict] = {}
    failed, longest = False, 0.0
    for name in methods:
        row = result["methods"][name] = dict(method=name, attn_implementation=IMPL[name])
        reason = skip_reason(name, result, args, time.perf_counter() - t_start, longest)
        if reason:
            row["skipped"] = reason
            print(f"# {name}: skipped ({reason})", flush=True)
            write(result, out_dir)
            continue
        t0 = time.perf_counter()
        try:
            row.update(run_method(torch, name, base, padded if name == "sdpa_padded" else packed, args,
                                  result["config"]["tokens"]))
            probes[name] = row.pop("_probe")
            print(f"# {name}: {row['step_ms_median']:.1f} ms/step, {row['tokens_per_s']:.0f} tokens/s, peak "
                  f"{fmt(row['peak_gib'], '.2f')} GiB, first loss {row['loss_first']:.5f}", flush=True)
        except torch.cuda.OutOfMemoryError as e:
            row["skipped"] = "out of memory: " + short_error(e)[:200]
            print(f"# {name}: out of memory, going on", flush=True)
        except Exception as e:  # noqa: BLE001 - record it, run the other methods, exit 1 at the end
            traceback.print_exc()
            row["error"] = short_error(e)
            failed = True
            print(f"# {name}: FAILED ({row['error']})", flush=True)
        row["wall_s"] = time.perf_counter() - t0
        if name != "sdpa_padded":
            longest = max(longest, row["wall_s"])
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        result["machine"]["wall_seconds"] = time.perf_counter() - t_start
        write(result, out_dir)
    return probes, failed


def evaluate(result: dict, probes: dict) -> None:
    """The correctness check (every method's first step against the reference's) and the targets."""
    check = result["check"]
    check["reference"] = ref = next((m for m in REFERENCES if m in probes), None)
    loss_tol, grad_tol = check["tolerance"]["loss_rel"], check["tolerance"]["grad_rel_l2"]
    for name, probe in probes.items():
        if ref is not None and name != ref:
            c = compare(probe, probes[ref])
            c["ok"] = c["loss_rel_diff"] <= loss_tol and max(c["grad_rel_l2_diff"].values()) <= grad_tol
            check["pairs"][name] = c
    # None: nothing to compare (a single method ran); a failed method fails the run by itself.
    check["ok"] = all(c["ok"] for c in check["pairs"].values()) if check["pairs"] else None
    fa2, sc = result["methods"].get("fa2_varlen", {}), result["methods"].get("scree", {})
    if "step_ms_median" in fa2 and "step_ms_median" in sc:
        speed, mem = fa2["step_ms_median"] / sc["step_ms_median"], sc["peak_bytes"] / fa2["peak_bytes"]
        result["targets"] = dict(
            speed=dict(target=f"scree tokens/s >= {TARGET_SPEED}x fa2_varlen", value=speed,
                       met=speed >= TARGET_SPEED),
            memory=dict(target="scree peak memory <= fa2_varlen's", value=mem, met=mem <= TARGET_MEMORY))
        if fa2.get("kernel_ms"):
            # The bound on the speed target: FA-2's step less its attention kernels' time.
            rest = fa2["step_ms_median"] - fa2["attention_kernel_ms"]
            result["targets"]["speed"]["ceiling"] = dict(step_ms=rest, x_fa2=fa2["step_ms_median"] / rest)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--methods", nargs="*", default=None, choices=METHODS)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--lengths", default="mix", help="mix (64..4096), short (16..512) or eqN (all N)")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", default=None, choices=tuple(TOL), help="bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per method (CUDA 20, CPU 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (CUDA 3, CPU 1; at least 1)")
    ap.add_argument("--max-padded-gb", type=float, default=100.0,
                    help="skip sdpa_padded when its estimated peak (GB) exceeds this")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds: start no method that would end after this (estimated from the previous ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON / PNG (default benchmarks/results)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.lengths not in RANGES and not (args.lengths.startswith("eq") and args.lengths[2:].isdigit()):
        ap.error(f"--lengths: {sorted(RANGES)} or eqN")

    import torch
    import transformers

    import scree
    import scree.integrations.transformers as scree_hf

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("--device cuda: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = max(1, args.warmup if args.warmup is not None else (3 if cuda else 1))
    methods = args.methods or (["scree", "fa2_varlen", "sdpa_padded"] if cuda else ["scree", "sdpa_padded", "eager"])
    out_dir = args.out or HERE / "results"

    scree_hf.register()
    transformers.AttentionInterface.register("fa2_varlen", fa2_varlen_attention)
    lengths = make_lengths(args.lengths, args.tokens, np.random.default_rng(args.seed))
    n, lmax = len(lengths), max(lengths)
    packed, padded = make_batches(lengths, args.vocab, args.seed + 1)

    info = machine_info(transformers=transformers.__version__,
                        **(gpu_info(torch, scree) if cuda else dict(gpu=None)))
    config = dict(arch="LlamaForCausalLM", hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                  heads=args.heads, kv_heads=args.kv_heads, head_dim=args.hidden // args.heads, vocab=args.vocab,
                  dtype=dtype_name, tokens=args.tokens, lengths=args.lengths, sequences=n, max_length=lmax,
                  padded_slots=n * lmax, padding_fraction=1 - args.tokens / (n * lmax), seed=args.seed,
                  steps=args.steps, warmup=args.warmup, optimizer="AdamW(lr=1e-5), torch default implementation",
                  timing="wall clock per training step (batch to device, zero_grad, forward+loss, backward, "
                         "optimizer step), device synchronised before and after, no L2 flush; median",
                  max_padded_gb=args.max_padded_gb, time_limit_s=args.time_limit)
    loss_tol, grad_tol = TOL[dtype_name]
    result: dict[str, Any] = dict(machine=info, device="cuda" if cuda else "cpu", config=config, lengths=lengths,
                                  methods={}, targets={},
                                  check=dict(reference=None, tolerance=dict(loss_rel=loss_tol, grad_rel_l2=grad_tol),
                                             pairs={}, ok=None))
    print(f"# {info.get('gpu') or 'cpu'} | torch {torch.__version__} transformers {transformers.__version__} | "
          f"commit {str(info['git_commit'])[:10]} | Llama hidden {args.hidden} x {args.layers} layers, heads "
          f"{args.heads}/{args.kv_heads}, vocab {args.vocab}, {dtype_name}", flush=True)
    print(f"# {args.tokens} tokens in {n} sequences ({args.lengths}, max {lmax}); padded {n} x {lmax} = "
          f"{n * lmax} slots ({config['padding_fraction']:.0%} padding); AdamW; warm-up {args.warmup}, median of "
          f"{args.steps} steps", flush=True)

    try:  # whatever happens, the JSON is written
        base = build_model(torch, transformers, args, getattr(torch, dtype_name), lmax)
        config["parameters"] = sum(p.numel() for p in base.parameters())
        print(f"# model: {config['parameters'] / 1e6:.0f} M parameters; {time.perf_counter() - t_start:.0f} s "
              "since start", flush=True)
        probes, failed = run_all(torch, base, packed, padded, methods, args, result, out_dir, t_start)
        evaluate(result, probes)
    except BaseException as e:
        result["error"] = short_error(e)
        raise
    finally:
        info["wall_seconds"] = time.perf_counter() - t_start
        path = write(result, out_dir)

    print_table(result)
    for key, t in result["targets"].items():
        print(f"# target {key}: {t['target']}: {t['value']:.3f} -> {'met' if t['met'] else 'MISSED'}")
    if not args.no_plot and any("step_ms_median" in r for r in result["methods"].values()):
        try:
            plot(result, out_dir / f"{stem(result)}.png")
        except Exception as e:  # noqa: BLE001 - no matplotlib or a plotting error: the JSON stands
            print(f"# no plot: {short_error(e)}", file=sys.stderr)
    print(f"# wall {info['wall_seconds']:.0f} s; wrote {path}")
    check = result["check"]
    if check["ok"] is None:
        print("# check: not made (fewer than two methods ran)", file=sys.stderr)
    elif not check["ok"]:
        print(f"# CHECK FAILED (reference {check['reference']}, tolerance loss {loss_tol}, grads {grad_tol}): "
              f"{json.dumps(check['pairs'])}", file=sys.stderr)
    return 1 if failed or check["ok"] is False else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""GPU varlen attention: scree.varlen_attention against FA-2 varlen, cuDNN and FlexAttention, bf16,
in one process on the same inputs (the workloads of TARGETS.md).

    python benchmarks/bench_attention_gpu.py                 # full run (~3 min on an H100)
    python benchmarks/bench_attention_gpu.py --out OUTDIR    # results into OUTDIR (and nowhere else)
    python benchmarks/bench_attention_gpu.py --quick         # smoke run (small, no FlexAttention)
    python benchmarks/bench_attention_gpu.py --only mix      # workloads whose name contains "mix"

Workloads (TARGETS.md): 32k tokens, hidden 2048, heads = 2048 / head_dim, q and k lengths equal per
sequence; eqL = equal lengths L, mix = lengths uniform in [64, 4096], short = uniform in [16, 512],
tiny = uniform in [1, 64] (issue 18: where packed tiles pay)
(drawn with a fixed seed until 32768 tokens, the last one cut to fit); and batch4x16, 4 sequences of
16 tokens, where the host's cost of a call is all there is. Values: fixed-seed normals.

Methods (each in try/except: a failing backend is recorded in the JSON, the run goes on):
    scree   scree.varlen_attention(Q, K, V, causal) on scree.Arrays over packed (T, H, D) tensors
            (from_lengths: host bookkeeping known, no device sync); backward through torch autograd.
    fa2     torch.ops.aten._flash_attention_forward / _flash_attention_backward on the same packed
            tensors with int32 cu_seqlens (torch's FlashAttention-2 varlen).
    fa4     flash_attn.cute.flash_attn_varlen_func (PyPI flash-attn-4, CuTe DSL) on the same packed
            tensors and cu_seqlens, backward through its autograd, when importable (else the reason
            is printed and recorded, and the run goes on).
    cudnn   F.scaled_dot_product_attention on padded (B, H, Lmax, D) tensors under
            sdpa_kernel(SDPBackend.CUDNN_ATTENTION); causal: is_causal (right padding: real rows never
            see pad keys), not causal with unequal lengths: a boolean key-padding mask; where cuDNN
            refuses the mask, unmasked (pad keys then attend: timing only; noted in the JSON).
    flex    torch.compile(flex_attention) on (1, H, T, D) with a document mask from create_block_mask
            (and causal within documents), on the workloads named by --flex (default: mix).
Modes: fwd (forward only), bwd (backward only: the graph of one forward kept, autograd.grad with
retain_graph, or the aten backward op for fa2), fwdbwd (both). Kernel timing: CUDA events around
each call, L2 flushed (a 256 MiB memset) before each, after warm-up calls; median of --reps (30).
The flush hides host time behind the memset, so fwd and fwdbwd are also timed as a user sees the
call (no flush): "isolated" = GPU idle before, synchronised after (median wall ms; scree builds its
three Arrays from a fresh copy of cu_seqlens inside the call, as a user does per batch, and FA-2 /
FA-4 take the cu_seqlens themselves), and "stream" = back-to-back calls synchronised at the end
(host_us: the host time per call; wall_us: wall time per call; scree's Arrays come from the batch's
Arrays with with_values, as a model's layers make them). cuDNN and flex reuse their prepared padded /
flex layouts (their conversion is not timed). FLOPs counted
are useful work only: forward 4 * Lq * Lk * D * H per sequence, half when causal; backward 2.5x,
fwdbwd 3.5x the forward. Ratios "x FA-2" = FA-2 time / method time. Correctness: outputs (fwd) and
dq, dk, dv (fwdbwd) of every method against FA-2's on real tokens, max abs diff (recorded; a large
one is flagged). Ceilings measured once in the same run: a bf16 matmul (TFLOP/s) and a device copy
(GB/s, bytes read + written).

Writes attention_gpu.json (machine with card name and git commit, config, ceilings, per workload
and mode every method's median / samples / TFLOP/s / ratio, checks, targets) and attention_gpu.png
into --out (default benchmarks/results; --quick: a temporary folder), after every workload.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, call_stream, isolated_call, machine_info, sh  # noqa: E402

TOKENS = 32768
HIDDEN = 2048
RANGES = {"mix": (64, 4096), "short": (16, 512), "tiny": (1, 64)}
# name, lengths kind, head dim, causal (TARGETS.md: the GPU baselines table)
WORKLOADS = [
    ("batch4x16 d128", "eq16", 128, False),
    ("eq2048 d128", "eq2048", 128, False),
    ("eq8192 d128 causal", "eq8192", 128, True),
    ("mix d128", "mix", 128, False),
    ("mix d128 causal", "mix", 128, True),
    ("short d128", "short", 128, False),
    ("short d128 causal", "short", 128, True),
    ("mix d64", "mix", 64, False),
    ("short d64", "short", 64, False),
    ("tiny d128", "tiny", 128, False),
    ("tiny d128 causal", "tiny", 128, True),
]
WORKLOADS_QUICK = [
    ("batch4x16 d64", "eq16", 64, False),
    ("eq512 d128 causal", "eq512", 128, True),
    ("short d64", "short", 64, False),
]
# Workloads of a fixed size (every other one has --tokens tokens).
WORKLOAD_TOKENS = {"batch4x16 d128": 64, "batch4x16 d64": 64}
MODES = ("fwd", "bwd", "fwdbwd")
MODE_FLOPS = {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}   # x forward FLOPs
METHODS = ("scree", "fa2", "fa4", "cudnn", "flex")
PEERS = ("fa2", "fa4", "cudnn", "flex")                # "best peer" is taken over these
CALL_MODES = ("fwd", "fwdbwd")                         # also timed as a user sees the call
DIFF_FLAG = {"out": 2e-2, "grad": 5e-2}                # bf16 max abs diff vs FA-2 above this: flagged


# ---- workloads and FLOPs (CPU-only helpers, tested without a GPU) ------------------------------
def make_lengths(kind: str, tokens: int, rng: np.random.Generator) -> list[int]:
    """Sequence lengths summing to `tokens`: eqL -> tokens // L sequences of L (the rest, if any, one
    shorter sequence); mix / short -> uniform draws in RANGES[kind] until the sum reaches tokens,
    the last one cut so that the sum is exactly tokens."""
    if kind.startswith("eq"):
        L = int(kind[2:])
        lens = [L] * (tokens // L)
        if tokens % L:
            lens.append(tokens % L)
        return lens
    lo, hi = RANGES[kind]
    lens: list[int] = []
    total = 0
    while total < tokens:
        n = int(rng.integers(lo, hi + 1))
        n = min(n, tokens - total)
        lens.append(n)
        total += n
    return lens


def heads_for(head_dim: int, hidden: int = HIDDEN) -> int:
    return hidden // head_dim


def flops_fwd(lens_q: list[int], lens_k: list[int], heads: int, head_dim: int, causal: bool) -> float:
    """Useful forward FLOPs: 4 * Lq * Lk * D * H per sequence (two matmuls), half when causal."""
    f = sum(4.0 * lq * lk * head_dim * heads for lq, lk in zip(lens_q, lens_k))
    return f / 2 if causal else f


def flops(lens: list[int], heads: int, head_dim: int, causal: bool, mode: str) -> float:
    return flops_fwd(lens, lens, heads, head_dim, causal) * MODE_FLOPS[mode]


DEV = "cuda"  # --device cpu: a plumbing dry run on the CPU (host clock, no baselines but the padded one)


def sync(torch) -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def free(torch) -> None:
    if DEV == "cuda":
        torch.cuda.empty_cache()


def short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().replace("\n", " ")[:400]


# ---- timing -----------------------------------------------------------------------------------
class Timer:
    """Median over `reps` calls timed with CUDA events, L2 flushed before each call (a 256 MiB
    memset, outside the events), after `warmup` untimed calls. A call slower than budget_s / reps
    lowers the repetitions (never below min_reps)."""

    def __init__(self, torch, reps: int, warmup: int, budget_s: float, min_reps: int = 5):
        self.torch, self.reps, self.warmup, self.budget_s, self.min_reps = torch, reps, warmup, budget_s, min_reps
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device=DEV) if DEV == "cuda" else None

    def __call__(self, fn: Callable[[], Any]) -> dict:
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        sync(torch)
        t0 = time.perf_counter()
        fn()
        sync(torch)
        one = time.perf_counter() - t0
        reps = int(max(self.min_reps, min(self.reps, self.budget_s / max(one, 1e-6))))
        if DEV != "cuda":  # dry run: host clock
            ms = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t0) * 1e3)
        else:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for start, end in events:
                self.flush.zero_()
                start.record()
                fn()
                end.record()
            sync(torch)
            ms = [s.elapsed_time(e) for s, e in events]
        s = sorted(ms)
        return dict(median_ms=statistics.median(s), min_ms=s[0], max_ms=s[-1], reps=reps,
                    spread=(s[(3 * len(s)) // 4] - s[len(s) // 4]) / statistics.median(s), samples_ms=ms)


def ceilings(torch, timer: Timer, quick: bool) -> dict:
    """bf16 matmul TFLOP/s (n^3, random data) and device-to-device copy GB/s (read + write)."""
    def matmul() -> dict:
        n = 256 if DEV != "cuda" else 2048 if quick else 8192
        a, b = (torch.randn(n, n, device=DEV, dtype=torch.bfloat16) for _ in range(2))
        r = timer(lambda: a @ b)
        return dict(n=n, median_ms=r["median_ms"], tflops=2 * n ** 3 / (r["median_ms"] * 1e-3) / 1e12)

    def copy() -> dict:
        nbytes = (64 if quick else 1024) << 20
        src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=DEV)
        dst = torch.empty_like(src)
        r = timer(lambda: dst.copy_(src))
        return dict(bytes=nbytes, median_ms=r["median_ms"], gbs=2 * nbytes / (r["median_ms"] * 1e-3) / 1e9)

    out: dict[str, Any] = {}
    for name, fn in (("matmul", matmul), ("copy", copy)):
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - a ceiling that fails is recorded
            out[name] = dict(error=short_error(e))
        free(torch)
    return out


# ---- one workload on the GPU ------------------------------------------------------------------
class Workload:
    """The same q, k, v, dout (bf16) in the layouts every method needs."""

    def __init__(self, torch, scree, lens: list[int], heads: int, head_dim: int, causal: bool, seed: int):
        self.torch, self.lens, self.H, self.D, self.causal = torch, lens, heads, head_dim, causal
        self.T, self.B, self.L = sum(lens), len(lens), max(lens)
        self.scale = 1.0 / math.sqrt(head_dim)
        gen = torch.Generator(device=DEV).manual_seed(seed)
        self.q, self.k, self.v, self.g = (torch.randn(self.T, heads, head_dim, device=DEV, dtype=torch.bfloat16,
                                                      generator=gen) for _ in range(4))
        self.Q = scree.from_lengths(self.q, lens)
        self.K = scree.from_lengths(self.k, lens)
        self.V = self.K.with_values(self.v)
        self.cu = self.Q.cu_seqlens()
        self.lens_t = torch.tensor(lens, device=DEV)
        self.mask2d = torch.arange(self.L, device=DEV)[None, :] < self.lens_t[:, None]   # (B, Lmax) real tokens

    # layouts
    def padded(self, x):  # (T, H, D) -> (B, H, Lmax, D), zero pad, contiguous
        torch = self.torch
        out = torch.zeros(self.B, self.L, self.H, self.D, device=DEV, dtype=x.dtype)
        out[self.mask2d] = x
        return out.transpose(1, 2).contiguous()

    def unpad(self, xp):  # (B, H, Lmax, D) -> (T, H, D)
        return xp.transpose(1, 2)[self.mask2d]

    def flex_layout(self, x):  # (T, H, D) -> (1, H, T, D)
        return x.transpose(0, 1).unsqueeze(0).contiguous()

    @staticmethod
    def from_flex(x):  # (1, H, T, D) -> (T, H, D)
        return x[0].transpose(0, 1)


def leaves(torch, *xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


def scree_fns(w: Workload, scree) -> dict[str, Any]:
    torch = w.torch
    lq, lk, lv = leaves(torch, w.q, w.k, w.v)
    Q, K, V = w.Q.with_values(lq), w.K.with_values(lk), w.V.with_values(lv)
    state: dict[str, Any] = {"cu": w.cu}

    def fwd():
        with torch.no_grad():
            return scree.varlen_attention(w.Q, w.K, w.V, causal=w.causal).values

    def fwd_graph():
        state["out"] = scree.varlen_attention(Q, K, V, causal=w.causal).values

    def bwd():
        if "out" not in state:
            fwd_graph()
        return torch.autograd.grad(state["out"], (lq, lk, lv), w.g, retain_graph=True)

    def fwdbwd():
        out = scree.varlen_attention(Q, K, V, causal=w.causal).values
        return torch.autograd.grad(out, (lq, lk, lv), w.g)

    # The call as a user sees it. Isolated: the batch's three Arrays built from its cu_seqlens and
    # max_seqlen inside the call (a fresh cu_seqlens tensor per call, so the Layout and its device
    # check are new each time, as for a new batch). Stream: a model's layers, which map the batch's
    # Arrays with with_values.
    def arrays(q, k, v):
        cu = state["cu"]
        return [scree.from_cu_seqlens(x, cu, max_seqlen=w.L) for x in (q, k, v)]

    def new_batch():
        state["cu"] = w.cu.clone()

    def iso_fwd():
        with torch.no_grad():
            return scree.varlen_attention(*arrays(w.q, w.k, w.v), causal=w.causal).values

    def iso_fwdbwd():
        out = scree.varlen_attention(*arrays(lq, lk, lv), causal=w.causal).values
        return torch.autograd.grad(out, (lq, lk, lv), w.g)

    def layer_fwd():
        with torch.no_grad():
            return scree.varlen_attention(w.Q.with_values(w.q), w.K.with_values(w.k), w.V.with_values(w.v),
                                          causal=w.causal).values

    def layer_fwdbwd():
        out = scree.varlen_attention(Q.with_values(lq), K.with_values(lk), V.with_values(lv), causal=w.causal).values
        return torch.autograd.grad(out, (lq, lk, lv), w.g)

    return dict(fwd=fwd, bwd=bwd, fwdbwd=fwdbwd,
                _calls=dict(fwd=(iso_fwd, layer_fwd, new_batch), fwdbwd=(iso_fwdbwd, layer_fwdbwd, new_batch)))


_FA4: dict[str, Any] = {}


def fa4_function() -> Any:
    """flash_attn.cute.flash_attn_varlen_func (FA-4), or None with the reason in _FA4["error"]."""
    if "fn" not in _FA4 and "error" not in _FA4:
        try:
            from flash_attn.cute import flash_attn_varlen_func
            _FA4["fn"] = flash_attn_varlen_func
        except Exception as e:  # noqa: BLE001 - any import failure: FA-4 is not here
            _FA4["error"] = short_error(e)
    return _FA4.get("fn")


def fa4_fns(w: Workload) -> dict[str, Callable]:
    """FA-4 on the packed tensors with int32 cu_seqlens; it returns out or (out, lse) by version."""
    fn = fa4_function()
    if fn is None:
        raise RuntimeError(f"FA-4 is not importable: {_FA4['error']}")
    torch = w.torch
    kw = dict(cu_seqlens_q=w.cu, cu_seqlens_k=w.cu, max_seqlen_q=w.L, max_seqlen_k=w.L, causal=w.causal,
              softmax_scale=w.scale)

    def attend(q, k, v):
        r = fn(q, k, v, **kw)
        return r[0] if isinstance(r, (tuple, list)) else r

    lq, lk, lv = leaves(torch, w.q, w.k, w.v)
    state: dict[str, Any] = {}

    def fwd():
        with torch.no_grad():
            return attend(w.q, w.k, w.v)

    def bwd():
        if "out" not in state:
            state["out"] = attend(lq, lk, lv)
        return torch.autograd.grad(state["out"], (lq, lk, lv), w.g, retain_graph=True)

    def fwdbwd():
        return torch.autograd.grad(attend(lq, lk, lv), (lq, lk, lv), w.g)

    return dict(fwd=fwd, bwd=bwd, fwdbwd=fwdbwd)


def fa2_fns(w: Workload) -> dict[str, Callable]:
    torch = w.torch
    fwd_op, bwd_op = torch.ops.aten._flash_attention_forward, torch.ops.aten._flash_attention_backward
    args = (w.cu, w.cu, w.L, w.L, 0.0, w.causal)
    state: dict[str, Any] = {}

    def fwd():
        return fwd_op(w.q, w.k, w.v, *args, False, scale=w.scale)[0]

    def bwd():
        if "saved" not in state:
            state["saved"] = fwd_op(w.q, w.k, w.v, *args, False, scale=w.scale)
        out, lse, rng, unused, _ = state["saved"]
        return bwd_op(w.g, w.q, w.k, w.v, out, lse, *args, rng, unused, scale=w.scale)

    def fwdbwd():
        out, lse, rng, unused, _ = fwd_op(w.q, w.k, w.v, *args, False, scale=w.scale)
        return bwd_op(w.g, w.q, w.k, w.v, out, lse, *args, rng, unused, scale=w.scale)

    # The call as a user sees it goes through autograd, as scree's, FA-4's, cuDNN's and Flex's do:
    # the forward op's own C++ autograd node, then torch.autograd.grad (the kernel time above calls
    # the two ops directly, which no training step does).
    lq, lk, lv = leaves(torch, w.q, w.k, w.v)

    def fwdbwd_autograd():
        out = fwd_op(lq, lk, lv, *args, False, scale=w.scale)[0]
        return torch.autograd.grad(out, (lq, lk, lv), w.g)

    return dict(fwd=fwd, bwd=bwd, fwdbwd=fwdbwd,
                _calls=dict(fwd=(fwd, fwd, None), fwdbwd=(fwdbwd_autograd, fwdbwd_autograd, None)))


def cudnn_fns(w: Workload, note: dict) -> dict[str, Callable]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch = w.torch
    qp, kp, vp, gp = (w.padded(x) for x in (w.q, w.k, w.v, w.g))
    equal = len(set(w.lens)) == 1
    mask = None if (w.causal or equal) else w.mask2d[:, None, None, :]        # (B, 1, 1, Lmax) key padding

    backend = SDPBackend.CUDNN_ATTENTION if DEV == "cuda" else SDPBackend.MATH  # (the CPU dry run has no cuDNN)

    def sdpa(q, k, v, m):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=w.causal, scale=w.scale)

    if mask is not None:
        try:
            sdpa(qp, kp, vp, mask)
            sync(torch)
            note["cudnn"] = "boolean key-padding mask"
        except Exception as e:  # noqa: BLE001 - cuDNN may refuse a mask: time it unmasked
            mask = None
            note["cudnn"] = ("no key-padding mask (cuDNN refused it: " + short_error(e)[:160] +
                             "); pad keys attend, so its output differs from the others: timing only")
    lq, lk, lv = leaves(torch, qp, kp, vp)
    state: dict[str, Any] = {}

    def fwd():
        with torch.no_grad():
            return sdpa(qp, kp, vp, mask)

    def bwd():
        if "out" not in state:
            state["out"] = sdpa(lq, lk, lv, mask)
        return torch.autograd.grad(state["out"], (lq, lk, lv), gp, retain_graph=True)

    def fwdbwd():
        return torch.autograd.grad(sdpa(lq, lk, lv, mask), (lq, lk, lv), gp)

    fns = dict(fwd=fwd, bwd=bwd, fwdbwd=fwdbwd)
    fns["_masked"] = mask is not None or w.causal or equal
    return fns


_FLEX: dict[str, Any] = {}


def flex_fns(w: Workload) -> dict[str, Callable]:
    torch = w.torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "compiled" not in _FLEX:
        try:  # a compiled backward run with retain_graph=True needs buffers that are not donated
            import torch._functorch.config as functorch_config
            functorch_config.donated_buffer = False
        except (ImportError, AttributeError):
            pass
        _FLEX["compiled"] = torch.compile(flex_attention, dynamic=False)
    flex = _FLEX["compiled"]
    doc = torch.repeat_interleave(torch.arange(w.B, device=DEV, dtype=torch.int32), w.lens_t, output_size=w.T)
    if w.causal:
        def mask_mod(b, h, q_idx, kv_idx):
            return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            return doc[q_idx] == doc[kv_idx]
    try:  # compiled mask creation never materialises the (T, T) mask (a few GiB at 32k tokens)
        block_mask = create_block_mask(mask_mod, 1, None, w.T, w.T, device=DEV, _compile=True)
    except Exception:  # noqa: BLE001 - older/other torch: the eager path
        block_mask = create_block_mask(mask_mod, 1, None, w.T, w.T, device=DEV)
    qf, kf, vf, gf = (w.flex_layout(x) for x in (w.q, w.k, w.v, w.g))
    lq, lk, lv = leaves(torch, qf, kf, vf)
    state: dict[str, Any] = {}

    def fwd():
        with torch.no_grad():
            return flex(qf, kf, vf, block_mask=block_mask, scale=w.scale)

    def bwd():
        if "out" not in state:
            state["out"] = flex(lq, lk, lv, block_mask=block_mask, scale=w.scale)
        return torch.autograd.grad(state["out"], (lq, lk, lv), gf, retain_graph=True)

    def fwdbwd():
        return torch.autograd.grad(flex(lq, lk, lv, block_mask=block_mask, scale=w.scale), (lq, lk, lv), gf)

    return dict(fwd=fwd, bwd=bwd, fwdbwd=fwdbwd)


def to_tokens(w: Workload, method: str, x):
    """A method's output or gradient in its own layout -> packed (T, H, D)."""
    if method in ("scree", "fa2", "fa4"):
        return x
    if method == "cudnn":
        return w.unpad(x)
    return Workload.from_flex(x)


def check(w: Workload, mode: str, outputs: dict[str, Any], fns_meta: dict[str, Any]) -> dict:
    """Max abs diff of every method's output (fwd) or gradients (fwdbwd) against FA-2's (where FA-2
    failed: scree's) on real tokens."""
    torch = w.torch
    base = "fa2" if "fa2" in outputs else "scree"
    if base not in outputs:
        return dict(error="neither FA-2 nor scree produced a result to compare with")
    res: dict[str, Any] = dict(against=base)
    ref = outputs[base]
    for m, o in outputs.items():
        if m == base:
            continue
        try:
            if mode == "fwd":
                d = float((to_tokens(w, m, o).float() - to_tokens(w, base, ref).float()).abs().max())
                res[m] = dict(max_abs_diff=d, ok=d <= DIFF_FLAG["out"])
            else:
                refs = [to_tokens(w, base, b).float() for b in ref]
                ds = [float((to_tokens(w, m, a).float() - b).abs().max()) for a, b in zip(o, refs)]
                scale = max(1.0, max(float(b.abs().max()) for b in refs))
                res[m] = dict(dq=ds[0], dk=ds[1], dv=ds[2], ok=max(ds) <= DIFF_FLAG["grad"] * scale)
            if not fns_meta.get(m, {}).get("masked", True):
                res[m]["note"] = "unmasked padded run: differences expected"
                res[m]["ok"] = None
        except Exception as e:  # noqa: BLE001
            res[m] = dict(error=short_error(e))
    sync(torch)
    return res


def run_workload(torch, scree, spec: tuple, tokens: int, hidden: int, rng: np.random.Generator, timer: Timer,
                 flex_on: bool, modes: tuple[str, ...]) -> dict:
    name, kind, D, causal = spec
    lens = make_lengths(kind, WORKLOAD_TOKENS.get(name, tokens), rng)
    H = heads_for(D, hidden)
    row: dict[str, Any] = dict(name=name, kind=kind, head_dim=D, heads=H, causal=causal, tokens=sum(lens),
                               num_sequences=len(lens), max_len=max(lens), mean_len=float(np.mean(lens)),
                               flops_fwd=flops_fwd(lens, lens, H, D, causal), modes={}, notes={})
    w = Workload(torch, scree, lens, H, D, causal, seed=int(rng.integers(1 << 31)))
    makers: dict[str, Callable[[], dict]] = {
        "scree": lambda: scree_fns(w, scree),
        "fa2": lambda: fa2_fns(w),
        "fa4": lambda: fa4_fns(w),
        "cudnn": lambda: cudnn_fns(w, row["notes"]),
    }
    if flex_on:
        makers["flex"] = lambda: flex_fns(w)
    fns: dict[str, dict] = {}
    calls: dict[str, dict] = {}
    meta: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for m, make in makers.items():
        try:
            f = make()
            meta[m] = dict(masked=bool(f.pop("_masked", True)))
            # (isolated call, call in a stream, per-call preparation); by default the timed function
            calls[m] = f.pop("_calls", {mode: (f[mode], f[mode], None) for mode in CALL_MODES})
            fns[m] = f
        except Exception as e:  # noqa: BLE001 - a backend that cannot even set up is a result
            errors[m] = short_error(e)
    for mode in modes:
        mrow: dict[str, Any] = dict(flops=row["flops_fwd"] * MODE_FLOPS[mode], methods={})
        outputs: dict[str, Any] = {}
        for m in METHODS:
            if m in errors:
                mrow["methods"][m] = dict(error=errors[m])
                continue
            if m not in fns:
                continue
            try:
                out = fns[m][mode]()
                sync(torch)
                if mode in ("fwd", "fwdbwd"):
                    outputs[m] = out
                r = timer(fns[m][mode])
                r["tflops"] = mrow["flops"] / (r["median_ms"] * 1e-3) / 1e12
                if mode in CALL_MODES:
                    r.update(time_calls(torch, calls[m][mode], r["median_ms"], timer.reps))
                mrow["methods"][m] = r
            except Exception as e:  # noqa: BLE001
                mrow["methods"][m] = dict(error=short_error(e))
                sync(torch)
        if mode != "bwd":
            try:
                mrow["check"] = check(w, mode, outputs, meta)
            except Exception as e:  # noqa: BLE001
                mrow["check"] = dict(error=short_error(e))
        del outputs
        finish_mode(mrow)
        row["modes"][mode] = mrow
        print_row(row, mode)
    return row


def time_calls(torch, call: tuple, kernel_ms: float, reps: int) -> dict:
    """The call as a user sees it: isolated (GPU idle before, synchronised after, no flush) and in a
    stream of back-to-back calls (host time per call, wall time per call)."""
    iso_fn, stream_fn, prepare = call
    sync_ = lambda: sync(torch)  # noqa: E731
    calls = int(max(5, min(200, 0.3 / max(kernel_ms * 1e-3, 1e-6))))  # ~0.3 s of calls per run
    return dict(isolated=isolated_call(iso_fn, sync_, reps=max(5, min(reps, 30)), prepare=prepare),
                stream=call_stream(stream_fn, sync_, calls=calls))


def finish_mode(m: dict) -> None:
    ok = {k: v["median_ms"] for k, v in m["methods"].items() if "median_ms" in v}
    if "fa2" in ok:
        m["x_fa2"] = {k: ok["fa2"] / v for k, v in ok.items()}
    iso = {k: v["isolated"]["median_ms"] for k, v in m["methods"].items() if "isolated" in v}
    if "fa2" in iso:
        m["isolated_x_fa2"] = {k: iso["fa2"] / v for k, v in iso.items()}
    peers = {k: ok[k] for k in PEERS if k in ok}
    if peers:
        best = min(peers, key=peers.get)
        m["best_peer"] = best
        if "scree" in ok:
            m["x_best_peer"] = peers[best] / ok["scree"]


# ---- output -----------------------------------------------------------------------------------
HEADER = (f"{'workload':<20} {'mode':<6} {'B':>4} | " + " | ".join(f"{m:>15}" for m in METHODS)
          + f" | {'scree x FA-2':>12} {'x best':>6} | check")


def fmt(meth: dict, m: str) -> str:
    v = meth.get(m)
    if v is None:
        return "-"
    if "error" in v:
        return "ERR"
    return f"{v['median_ms']:7.3f} {v['tflops']:5.0f}T"


def print_row(row: dict, mode: str) -> None:
    m = row["modes"][mode]
    meth = m["methods"]
    x = m.get("x_fa2", {}).get("scree")
    xb = m.get("x_best_peer")
    chk = m.get("check", {})
    shown = "scree" if chk.get("against") == "fa2" else next((k for k in METHODS if k in chk), None)
    if "error" in chk:
        c = "check: " + chk["error"][:50]
    elif shown is not None:
        s = chk[shown]
        prefix = "" if shown == "scree" else f"{shown} vs scree: "
        if "error" in s:
            c = prefix + "ERR"
        elif mode == "fwd":
            c = prefix + f"{s['max_abs_diff']:.1e}" + ("" if s["ok"] is not False else " BAD")
        else:
            c = prefix + "/".join(f"{s[g]:.0e}" for g in ("dq", "dk", "dv")) + ("" if s["ok"] is not False else " BAD")
    else:
        c = ""
    print(f"{row['name']:<20} {mode:<6} {row['num_sequences']:>4} | "
          + " | ".join(f"{fmt(meth, k):>15}" for k in METHODS)
          + f" | {('-' if x is None else f'{x:.2f}'):>12} {('-' if xb is None else f'{xb:.2f}'):>6} | {c}", flush=True)
    calls = [f"{k} {v['isolated']['median_ms']:.3f} ms, {v['stream']['host_us']:.0f}/{v['stream']['wall_us']:.0f} us"
             for k, v in meth.items() if "isolated" in v]
    if calls:
        xi = m.get("isolated_x_fa2", {}).get("scree")
        print(f"{'':<20} {'call':<6} isolated, stream host/wall per call: " + " | ".join(calls)
              + ("" if xi is None else f" | isolated scree x FA-2 {xi:.2f}"), flush=True)
    for k, v in meth.items():
        if "error" in v and not (k == "fa4" and "error" in _FA4):  # FA-4's import failure: said once at the start
            print(f"{'':<20}   {k} failed: {v['error'][:200]}", flush=True)


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """TARGETS.md, as ratios measured in this run."""
    out = []

    def add(target, row, mode, value, need):
        out.append(dict(target=target, workload=row["name"], mode=mode, value=value,
                        met=bool(value is not None and value >= need)))

    for r in rows:
        fwd, bwd, fb = (r["modes"].get(m, {}) for m in MODES)
        x_fwd = fwd.get("x_fa2", {}).get("scree")
        if r["kind"] == "mix" and r["head_dim"] == 128:
            add(">= 2.0x FA-2 forward (mix d128)", r, "fwd", x_fwd, 2.0)
            add(">= 2.0x FA-2 backward (mix d128)", r, "bwd", bwd.get("x_fa2", {}).get("scree"), 2.0)
        if r["kind"] == "short" and r["head_dim"] == 128:
            add(">= 2.5x FA-2 forward (short d128)", r, "fwd", x_fwd, 2.5)
        if r["kind"] in ("short", "tiny") and r["head_dim"] == 128:  # issue 18: packed tiles
            add(">= 2.0x the best peer forward (short / tiny d128)", r, "fwd", fwd.get("x_best_peer"), 2.0)
            add(">= 2.0x the best peer fwd+bwd (short / tiny d128)", r, "fwdbwd", fb.get("x_best_peer"), 2.0)
        if r["kind"].startswith("eq") and r["name"] not in WORKLOAD_TOKENS and "scree" in fwd.get("methods", {}) and \
                "median_ms" in \
                fwd["methods"].get("cudnn", {}) and "median_ms" in fwd["methods"]["scree"]:
            add(">= cuDNN forward (equal lengths)", r, "fwd",
                fwd["methods"]["cudnn"]["median_ms"] / fwd["methods"]["scree"]["median_ms"], 1.0)
        if fb:
            add(">= 1.9x FA-2 fwd+bwd (training step)", r, "fwdbwd", fb.get("x_fa2", {}).get("scree"), 1.9)
        if fwd:
            add("forward ahead of the best peer", r, "fwd", fwd.get("x_best_peer"), 1.0)
            add("isolated call ahead of FA-2", r, "fwd", fwd.get("isolated_x_fa2", {}).get("scree"), 1.0)
    return out


def plot(rows: list[dict], ceil: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(len(MODES), 1, figsize=(max(10, 1.1 * len(rows) + 3), 4 * len(MODES)))
    w = 0.8 / len(METHODS)
    peak = ceil.get("matmul", {}).get("tflops")
    for ax, mode in zip(axes, MODES):
        for i, m in enumerate(METHODS):
            vals = [r["modes"].get(mode, {}).get("methods", {}).get(m, {}).get("tflops", np.nan) for r in rows]
            bars = ax.bar(x - 0.4 + w * (i + 0.5), vals, w, label=m)
            if m == "scree":
                for b, r in zip(bars, rows):
                    xf = r["modes"].get(mode, {}).get("x_fa2", {}).get("scree")
                    if xf is not None and np.isfinite(b.get_height()):
                        ax.annotate(f"{xf:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                                    va="bottom", fontsize=7)
        if peak:
            ax.axhline(peak, color="r", ls="--", lw=1, label=f"bf16 matmul {peak:.0f}")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"{mode} TFLOP/s (useful)")
        ax.legend(fontsize=8, ncol=5)
    axes[0].set_title("varlen attention, bf16, 32k tokens, hidden 2048 (median; label: scree / FA-2 speed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def gpu_info(torch, scree) -> dict:
    if DEV != "cuda":
        return dict(gpu=f"none (--device {DEV} dry run)", capability=None, sm_count=None, torch_cuda=None,
                    cudnn=None, triton=None, scree_cuda_head_dims=list(getattr(scree._C, "cuda_head_dims", list)()))
    p = torch.cuda.get_device_properties(0)
    info = dict(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                sm_count=p.multi_processor_count, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                driver=sh("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
                scree_cuda_compiled=bool(scree._C.cuda_compiled()),
                scree_cuda_head_dims=list(getattr(scree._C, "cuda_head_dims", lambda: [])()),
                SCREE_DETERMINISTIC=os.environ.get("SCREE_DETERMINISTIC"))
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def write(result: dict, out_dir: Path, plot_it: bool) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "attention_gpu.json"
    path.write_text(json.dumps(result, indent=1))
    rows = [r for r in result["workloads"] if r.get("modes")]
    if plot_it and rows:
        try:
            plot(rows, result["ceilings"], out_dir / "attention_gpu.png")
        except Exception as e:  # noqa: BLE001 - no matplotlib, or a plotting error: the JSON stands
            print(f"# no plot: {short_error(e)}", file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 4096 tokens, 2 workloads, 5 reps, no flex")
    ap.add_argument("--out", type=Path, default=None, help="folder for attention_gpu.json/.png")
    ap.add_argument("--only", nargs="*", default=None, help="workload names containing any of these strings")
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--tokens", type=int, default=None, help=f"tokens per workload (default {TOKENS})")
    ap.add_argument("--hidden", type=int, default=HIDDEN, help="heads * head_dim")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per measurement (default 30, quick 5)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed calls per measurement (cap)")
    ap.add_argument("--flex", default=None,
                    help="workloads (name substrings, comma separated) that run FlexAttention: default 'mix', "
                         "'all', or 'none' (quick: none)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds: start no new workload after this (the JSON records what was left out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: a dry run of the plumbing on the CPU (host clock; tiny --tokens advised)")
    args = ap.parse_args(argv)

    global DEV
    DEV = args.device
    import torch
    if DEV == "cuda" and not torch.cuda.is_available():
        print("bench_attention_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    import scree

    q = args.quick
    tokens = args.tokens or (4096 if q else TOKENS)
    reps = args.reps or (5 if q else 30)
    budget = args.budget or (1.0 if q else 2.0)
    flex_sel = args.flex if args.flex is not None else ("none" if q else "mix")
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="scree_bench_gpu_")) if q else HERE / "results")
    workloads = WORKLOADS_QUICK if q else WORKLOADS
    if args.only:
        workloads = [w for w in workloads if any(s in w[0] for s in args.only)]

    def flex_on(name: str) -> bool:
        if flex_sel == "all":
            return True
        if flex_sel == "none":
            return False
        return any(s and s in name for s in flex_sel.split(","))

    t_start = time.perf_counter()
    info = machine_info(**gpu_info(torch, scree))
    # SCREE_GIT_COMMIT wins: a copied tree (the GPU machine's) can carry a stale .git.
    info["git_commit"] = os.environ.get("SCREE_GIT_COMMIT") or info.get("git_commit") or None
    info["quick"] = q
    print(f"# {info['gpu']} (sm {info['capability']}, {info['sm_count']} SMs) | torch {info['torch']} cuda "
          f"{info['torch_cuda']} cudnn {info['cudnn']} triton {info['triton']} | scree head dims "
          f"{info['scree_cuda_head_dims']} | commit {str(info['git_commit'])[:10]}", flush=True)
    if fa4_function() is None:
        print(f"# FA-4 (flash_attn.cute.flash_attn_varlen_func) is not importable, its columns stay empty: "
              f"{_FA4['error']}", flush=True)
    timer = Timer(torch, reps=reps, warmup=2 if q else 3, budget_s=budget)
    ceil = ceilings(torch, timer, q)
    print(f"# ceilings: bf16 matmul {ceil['matmul'].get('tflops', float('nan')):.0f} TFLOP/s, device copy "
          f"{ceil['copy'].get('gbs', float('nan')):.0f} GB/s (read + write)", flush=True)
    print("# each cell: median ms and useful TFLOP/s; 'scree x FA-2' = FA-2 time / scree time; 'x best' = best "
          "peer (FA-2, FA-4, cuDNN, flex) time / scree time; check = max|diff| vs FA-2 (fwd: out; fwdbwd: dq/dk/dv)",
          flush=True)
    print(HEADER, flush=True)

    result: dict[str, Any] = dict(
        machine=info,
        config=dict(tokens=tokens, hidden=args.hidden, reps=reps, budget_s=budget, flex=flex_sel, seed=args.seed,
                    dtype="bfloat16", modes=list(args.modes),
                    flops="fwd 4*Lq*Lk*D*H per sequence (half causal); bwd 2.5x fwd; fwdbwd 3.5x fwd",
                    timing="kernel: CUDA events, L2 flushed before each call, median; isolated: GPU idle before, "
                           "synchronised after, no flush, median wall ms; stream: back-to-back calls, host and wall "
                           "us per call", fa4=_FA4.get("error", "importable")),
        ceilings=ceil, workloads=[], skipped=[], targets=[])
    rng = np.random.default_rng(args.seed)
    for spec in workloads:
        if args.time_limit is not None and time.perf_counter() - t_start > args.time_limit:
            result["skipped"].append(dict(name=spec[0], reason=f"time limit {args.time_limit:.0f} s reached"))
            print(f"# skipped {spec[0]}: time limit reached", flush=True)
            continue
        try:
            row = run_workload(torch, scree, spec, tokens, args.hidden, rng, timer, flex_on(spec[0]),
                               tuple(args.modes))
        except Exception as e:  # noqa: BLE001 - keep the other workloads
            traceback.print_exc()
            row = dict(name=spec[0], kind=spec[1], head_dim=spec[2], causal=spec[3], error=short_error(e), modes={})
            free(torch)
        gc.collect()  # the workload's tensors (all local to run_workload) go before the next one
        free(torch)
        result["workloads"].append(row)
        result["targets"] = evaluate_targets([r for r in result["workloads"] if r.get("modes")])
        info["wall_seconds"] = time.perf_counter() - t_start
        write(result, out_dir, plot_it=False)
    info["wall_seconds"] = time.perf_counter() - t_start
    path = write(result, out_dir, plot_it=not args.no_plot)
    targets = result["targets"]
    print(f"# targets met {sum(t['met'] for t in targets)}/{len(targets)}")
    for t in targets:
        if not t["met"]:
            v = "n/a" if t["value"] is None else f"{t['value']:.2f}"
            print(f"#   missed: {t['target']} - {t['workload']} {t['mode']}: {v}")
    print(f"# wall {info['wall_seconds']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

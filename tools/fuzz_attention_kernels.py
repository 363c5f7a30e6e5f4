#!/usr/bin/env python3
"""A randomised campaign of the compiled varlen attention kernels on one device, against the fp64
reference with FlashAttention's rule (tests/python/attention_checks.py): the GPU's counterpart of
`python -m tools.fuzz`, whose recipes stay tiny (lengths <= 12) and run on the host. Here each case
draws what the kernels branch on, at sizes that cross their tiles:

* lengths: tiny (1..64: the Hopper forward's packed query tiles and the backward's packed key
  tiles), short (0..300), tile edges (0, 1, 63..65, 127..129, 255..257), mixed up to 1,100 with a
  few sequences, 1..200 sequences of one token, or (GPU only) long: one sequence of 1,025..3,300
  among up to three of 0..300 (the Hopper backward ranks such causal batches longest first, and
  takes 80-query steps past 3,072 keys); k lengths equal to q's, drawn apart (q > k and q < k, keys
  of empty query sequences), or q's plus a shift;
* heads: Hk 1..4 with GQA groups 1..8 (odd groups too); head dims the build compiled;
* options: causal, sliding windows (sides 0, 1, on and off the tile edges, unbounded), softcap,
  scale, deterministic backward;
* the kernel: the default dispatch, the Hopper order forced to packed, per-sequence or head-grouped
  tiles (SCREE_SM90_TILES), the portable kernels (SCREE_CUDA_PATH=sm80);
* memory: contiguous values, q / k / v as slices of one fused qkv buffer (row stride 3x, as a
  fused projection leaves them), or heads-major buffers seen token-major (a permuted view);
* a forward alone (also called as inference: no grad, no lse), or forward + backward through torch
  autograd.

A case passes when scree's out, lse and (with a gradient) dq, dk, dv meet the rule. It fails when
they do not (`wrong`, with the worst error over its bound), when a valid case raises (`raised`:
the inputs are valid by construction, so any error is a failure) or when the device reports an
error (`crash`: the campaign stops there, a CUDA error poisons the process). Cases the build does
not serve with a kernel (a head dim it did not compile) are `skipped`. Each case is reproducible
from (seed, index):

    python tools/fuzz_attention_kernels.py --seconds 240 --seed 1 --out DIR       # on the GPU
    python tools/fuzz_attention_kernels.py --device cpu --cases 20 --seed 1       # the CPU kernels
    python tools/fuzz_attention_kernels.py --seed 1 --replay 17                   # one case again

DIR gets cases.jsonl (every case: recipe, outcome, error ratio, seconds) and summary.json; the
summary prints last. Exit status: 0 no failure, 1 a failure, 2 no device."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))

# Reference work per case, sum over sequences of Lq * Lk * Hq: bounds the references' time ("long"
# cases on the GPU get more, or their long sequence would be halved below 1,025 whenever Hq > 2).
BUDGET = {"cuda": 3_000_000, "cpu": 200_000, "cuda long": 40_000_000}
EDGES = [0, 1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257]
WINDOW_SIDES = [None, 0, 1, 7, 63, 64, 65, 127, 128, 129, 300]


def _lengths(r: np.random.Generator, mode: str, n: int | None = None) -> list[int]:
    """n lengths (a count of the mode's own when None) drawn as `mode` says."""
    count = {"tiny": (1, 40), "short": (1, 24), "edges": (1, 12), "ones": (1, 201), "mixed": (1, 6),
             "long": (1, 5)}[mode]
    n = int(r.integers(*count)) if n is None else n
    if mode == "long":  # one long sequence (log-uniform 1,025..3,300) among short ones, shuffled
        lens = [int(np.exp(r.uniform(np.log(1025), np.log(3301))))] + r.integers(0, 301, n - 1).tolist()
        return [int(x) for x in r.permutation(lens)]
    if mode == "tiny":
        return r.integers(1, 65, n).tolist()
    if mode == "short":
        return r.integers(0, 301, n).tolist()
    if mode == "edges":
        return [int(x) for x in r.choice(EDGES, n)]
    if mode == "ones":
        return [1] * n
    return [int(np.exp(r.uniform(0, np.log(1101)))) - 1 for _ in range(n)]  # log-uniform to 1,100


def budget(device: str, mode: str) -> int:
    """The reference work a case of `mode` may cost on `device` (BUDGET)."""
    return BUDGET.get(f"{device} {mode}", BUDGET[device])


def draw(seed: int, index: int, device: str, head_dims: list[int]) -> dict:
    """The recipe of case (seed, index): plain data (JSON-able)."""
    r = np.random.default_rng([seed, index])
    if device == "cuda":
        mode = str(r.choice(["tiny", "short", "edges", "ones", "mixed", "long"], p=[0.22, 0.22, 0.14, 0.1, 0.22, 0.1]))
    else:
        mode = str(r.choice(["tiny", "short", "edges", "ones", "mixed"], p=[0.25, 0.25, 0.15, 0.1, 0.25]))
    lq = _lengths(r, mode)
    kmode = str(r.choice(["same", "apart", "shift"], p=[0.6, 0.3, 0.1]))
    if kmode == "same":
        lk = list(lq)
    elif kmode == "apart":  # drawn apart: q > k and q < k, keys of empty query sequences
        lk = _lengths(r, "short" if mode == "ones" else mode, len(lq))
    else:
        lk = [max(0, n + int(r.integers(-40, 41))) for n in lq]
    hk = int(r.choice([1, 2, 3, 4]))
    group = int(r.choice([1, 2, 3, 4, 8]))
    dtypes = ["bfloat16", "float16"] + (["float32"] if device == "cpu" else [])
    recipe: dict[str, Any] = {
        "seed": seed, "index": index, "mode": mode, "kmode": kmode, "lq": lq, "lk": lk, "hk": hk,
        "hq": hk * group, "d": int(r.choice(head_dims)), "dtype": str(r.choice(dtypes)), "opts": {},
        "kernel": str(r.choice(["default", "packed", "sequence", "grouped", "sm80"], p=[0.45, 0.15, 0.1, 0.15, 0.15]))
        if device == "cuda" else "default",
        "memory": str(r.choice(["contiguous", "fused", "heads_major"], p=[0.6, 0.25, 0.15])),
        "grad": bool(r.random() < 0.7), "values_seed": int(r.integers(1 << 30)),
    }
    opts = recipe["opts"]
    if r.random() < 0.45:
        opts["causal"] = True
    if r.random() < 0.25:
        opts["window"] = [WINDOW_SIDES[int(r.integers(len(WINDOW_SIDES)))] for _ in range(2)]
    if r.random() < 0.15:
        opts["softcap"] = round(float(r.uniform(1.0, 30.0)), 3)
    if r.random() < 0.25:
        opts["scale"] = round(float(np.exp(r.uniform(np.log(0.05), np.log(2.0)))), 4)
    if recipe["grad"] and r.random() < 0.2:
        opts["deterministic"] = True
    # Trim the longest sequences until the reference's work fits the budget.
    while sum(a * b for a, b in zip(recipe["lq"], recipe["lk"])) * recipe["hq"] > budget(device, mode):
        i = int(np.argmax([a * b for a, b in zip(recipe["lq"], recipe["lk"])]))
        recipe["lq"][i] //= 2
        recipe["lk"][i] //= 2
    return recipe


def _values(torch: Any, shape: tuple, dtype: Any, device: str, gen: Any, memory: str, slot: int) -> Any:
    """Fresh normal values of `shape` (T, H, D) laid out as the recipe's `memory` says."""
    from attention_checks import random_values

    T, H, D = shape
    if memory == "fused":  # slot `slot` of a (T, 3, H, D) buffer: rows 3 H D apart
        return random_values((T, 3, H, D), dtype, device, gen)[:, slot]
    if memory == "heads_major":  # a (H, T, D) buffer seen as (T, H, D)
        return random_values((H, T, D), dtype, device, gen).permute(1, 0, 2)
    return random_values(shape, dtype, device, gen)


class _env:
    """Sets the kernel switches of a recipe while a case runs (scree reads them at every call)."""

    VARS = {"packed": ("SCREE_SM90_TILES", "packed"), "sequence": ("SCREE_SM90_TILES", "sequence"),
            "grouped": ("SCREE_SM90_TILES", "grouped"), "sm80": ("SCREE_CUDA_PATH", "sm80")}

    def __init__(self, kernel: str):
        self.var = self.VARS.get(kernel)

    def __enter__(self):
        if self.var:
            self.old = os.environ.get(self.var[0])
            os.environ[self.var[0]] = self.var[1]
        return self

    def __exit__(self, *exc):
        if self.var:
            if self.old is None:
                os.environ.pop(self.var[0], None)
            else:
                os.environ[self.var[0]] = self.old
        return False


def fp32_cancellation(q: Any, k: Any, v: Any, dout: Any, scale: float, lq_max: int) -> dict:
    """What float32 accumulation leaves in dq and dk where they vanish by cancellation. A kernel
    computes dS = P (dP - D) with dP_ij = dout_i . v_j and D_i = dout_i . out_i as two float32 sums
    of `d` products in different orders (the backward's tensor-core product and the preprocess's),
    each off by at most d u |dout_i| |v|max (Cauchy-Schwarz, u = 2^-23 for tensor cores' float32
    accumulation, |out_i| <= max_j |v_j|). Where a row's softmax is one-hot (one visible key, a
    window of 0) dq and dk are exactly 0 and the reference in the input dtype computes that 0
    exactly, so FlashAttention's rule would bound the kernel by its atol alone: the first CUDA
    campaign (seed 30, H200) failed 17 of 3,514 such cases at 1e-5 to 5e-5, as FA's own kernels
    would. Used only on the elements that reference computes exactly (`gradient_ratio`). Per row
    dq_i is off by at most scale sum_j P_ij |err dS_ij| max|k| (sum_j P_ij = 1), dk_j by the same
    with max|q| over up to lq_max rows (a sequence's rows times the GQA group)."""
    import torch

    def rows(x: Any) -> Any:  # per (token, head) 2-norms
        return x.detach().to(torch.float64).norm(dim=-1)

    def top(x: Any) -> float:
        return float(x.detach().to(torch.float64).abs().max()) if x.numel() else 0.0

    if dout is None or dout.numel() == 0 or v.numel() == 0:
        return {"dq": 0.0, "dk": 0.0}
    base = 2 * q.shape[-1] * 2.0 ** -23 * abs(scale) * float(rows(dout).max()) * float(rows(v).max())
    return {"dq": base * top(k), "dk": base * top(q) * max(lq_max, 1)}


def fa_reference64(reference: Any, wide: list, dout64: Any, opts: dict, dtype: Any) -> tuple:
    """(out, lse, grads or None) in float64 of FlashAttention's algorithm as the kernels run it:
    the backward's D_i = dout_i . out_i is taken from the output as stored, rounded to the input
    dtype, not from the exact one. That moves dS_ij = P_ij (dP_ij - D_i) by -P_ij dD_i, i.e. dq and
    dk by minus the gradient of sum_i dD_i lse_i, added here through autograd. Without it a row whose
    softmax is nearly one-hot, where dq and dk nearly cancel, fails the rule by that rounding alone
    (the CPU campaign, seed 31: fp16, 2 tokens, scores -5.6 and -11.2, dq off by 0.0039 against a
    reference-in-dtype error of 0.0010): the rule's reference in the input dtype takes its D from
    the probabilities, so it does not share the term."""
    import torch

    leaves = [a.values.detach().clone().requires_grad_(dout64 is not None) for a in wide]
    out, lse = reference(*(a.with_values(x) for a, x in zip(wide, leaves)), return_lse=True, **opts)
    o = out.values
    if dout64 is None:
        return o.detach(), lse.detach(), None
    dd = (dout64 * (o.detach().to(dtype).to(torch.float64) - o.detach())).sum(-1).transpose(0, 1)  # (Hq, Tq)
    loss = (dout64 * o).sum() - (dd * torch.where(torch.isfinite(lse), lse, 0.0)).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))
    return o.detach(), lse.detach(), grads


def gradient_ratio(got: Any, judge: Any, low: Any, exact: Any, rtol: float, extra: float,
                   allowance: float) -> tuple[float, float, float, float]:
    """(err / bound, err, base, atol) of FlashAttention's rule, with `allowance` (fp32_cancellation)
    added to the bound of the elements the reference in the input dtype computes exactly, and only
    there: a gradient that vanishes by cancellation (a key that 495 queries x 4 heads see alone,
    so P = 1 and dS = dP - D = 0) is exact in that reference, whose D comes from P, while any
    kernel running FlashAttention's algorithm (D from the output, dP from the product) leaves the
    rounding of two float32 sums there (CPU campaign seed 38: dk 3.7e-5 on that key, 2.9x the rule
    when the reference's error elsewhere in the tensor, 8.7e-7, set the bound). Elsewhere that
    reference's own error bounds the kernel, as FA's rule says. Until seed 38 the allowance applied
    only where the whole tensor was exact."""
    from attention_checks import fa_bound

    err, base, atol = fa_bound(got, judge, low, rtol, extra, exact)
    bound = rtol * base + atol
    if err <= bound or allowance == 0.0 or not np.isfinite(err):
        return err / bound, err, base, atol
    import torch
    g, j, lo, ex = (x.detach().to(device="cpu", dtype=torch.float64) for x in (got, judge, low, exact))
    e, cancels = (g - j).abs(), lo == ex
    worst = max(float(e[~cancels].max()) / bound if bool((~cancels).any()) else 0.0,
                float(e[cancels].max()) / (bound + allowance) if bool(cancels.any()) else 0.0)
    return worst, err, base, atol


def run_case(recipe: dict, device: str) -> dict:
    """Runs one recipe: {'outcome': ok|wrong|raised|skipped, 'ratio': worst error / bound, ...}."""
    import torch

    import scree
    from attention_checks import assert_lse_close, fwd_grads, generator, has_kernel, random_values
    from scree.kernels.reference import varlen_attention as reference

    dtype = getattr(torch, recipe["dtype"])
    gen = generator(recipe["values_seed"], device)
    hq, hk, d = recipe["hq"], recipe["hk"], recipe["d"]
    lq, lk, mem = recipe["lq"], recipe["lk"], recipe["memory"]
    q = scree.from_lengths(_values(torch, (sum(lq), hq, d), dtype, device, gen, mem, 0), lq)
    k = scree.from_lengths(_values(torch, (sum(lk), hk, d), dtype, device, gen, mem, 1), lk)
    v = k.with_values(_values(torch, (sum(lk), hk, d), dtype, device, gen, mem, 2))
    if not has_kernel(q, k, v):
        return {"outcome": "skipped", "why": "no compiled kernel serves this dtype / head dim"}
    dout = random_values((sum(lq), hq, d), dtype, device, gen) if recipe["grad"] else None
    opts = dict(recipe["opts"])
    if "window" in opts:
        opts["window"] = tuple(opts["window"])
    with _env(recipe["kernel"]):
        got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
        # A forward alone is also run as inference asks for it (no grad, no lse): the CPU's
        # few-rows path (fwd_few_rows.h) serves only such calls.
        inference = None
        if dout is None:
            with torch.no_grad():
                inference = scree.varlen_attention(q, k, v, **opts).values
        if device == "cuda":
            torch.cuda.synchronize()
    ref_opts = {key: val for key, val in opts.items() if key != "deterministic"}
    # The two references of the rule on the inputs' device (an H200 runs the fp64 one ~50x faster
    # than a host core): fp64 on the widened inputs, and the same math in the input dtype.
    wide = [scree.from_lengths(x.values.detach().to(torch.float64), n) for x, n in ((q, lq), (k, lk), (v, lk))]
    dout64 = None if dout is None else dout.to(torch.float64)
    ref64 = fwd_grads(reference, *wide, dout64, ref_opts)  # exact: what the reference in dtype is judged by
    fa64 = fa_reference64(reference, wide, dout64, ref_opts, dtype)  # what the kernel is judged by
    low = fwd_grads(lambda *x, **kw: reference(*x, upcast=False, **kw), q, k, v, dout, ref_opts)
    scale = opts.get("scale", 1.0 / np.sqrt(d))
    cancel = fp32_cancellation(q.values, k.values, v.values, dout, scale, max(lq, default=0) * (hq // hk))
    cap = 1e-5 + (3e-4 if opts.get("softcap") else 0.0)  # FA3's extra atol with softcap
    # (name, result, what it is judged against, reference in dtype, its exact result, rtol, extra atol)
    checks = [("out", got[0], ref64[0], low[0], ref64[0], 2.0, 1e-5, 0.0)]
    if inference is not None:
        checks.append(("out without lse", inference, ref64[0], low[0], ref64[0], 2.0, 1e-5, 0.0))
    if got[2] is not None:  # gradients against fa64, the rule's base |low - ref64|
        checks += [(name, g, fa, lo, ref, 3.0, cap, cancel.get(name, 0.0))
                   for name, g, fa, ref, lo in zip(("dq", "dk", "dv"), got[2], fa64[2], ref64[2], low[2])]
    ratios, worst = {}, None
    try:  # (a shape mismatch is an AssertionError of fa_bound's max_abs_diff: wrong, like a value off)
        for name, g, judge, lo, exact, rtol, extra, allowance in checks:
            ratios[name], err, base, atol = gradient_ratio(g, judge, lo, exact, rtol, extra, allowance)
            if ratios[name] > 1 and worst is None:
                worst = f"{name}: kernel error {err:.3g} > {rtol} x reference-in-dtype error {base:.3g} + atol {atol:.2g}"
        assert_lse_close("lse", got[1], ref64[1], low[1], seed=recipe["values_seed"])
    except AssertionError as e:
        worst = worst or str(e)[:400]
    if worst:
        return {"outcome": "wrong", "ratio": max(ratios.values()), "ratios": ratios, "msg": worst}
    return {"outcome": "ok", "ratio": max(ratios.values()), "ratios": ratios}


def _device_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("cuda error", "illegal", "misaligned", "device-side", "launch failure",
                                   "unspecified launch"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    ap.add_argument("--seconds", type=float, default=None, help="stop starting cases after this long")
    ap.add_argument("--out", default=None, help="folder for cases.jsonl and summary.json")
    ap.add_argument("--replay", type=int, default=None, help="run case INDEX of --seed alone, verbosely")
    a = ap.parse_args(argv)

    import torch

    from attention_checks import cuda_head_dims
    from scree import _C

    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch")
        return 2
    dims = (cuda_head_dims() or [64, 128]) if a.device == "cuda" else [32, 64, 128]
    dims = [x for x in dims if x in (32, 64, 128)] or [64]
    if a.replay is not None:
        recipe = draw(a.seed, a.replay, a.device, dims)
        print(json.dumps(recipe))
        print(json.dumps(run_case(recipe, a.device), default=str))
        return 0
    if a.cases is None and a.seconds is None:
        a.cases = 100
    out = Path(a.out) if a.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    log = (out / "cases.jsonl").open("w") if out else None
    counts: dict[str, int] = {}
    failures: list[dict] = []
    worst: list[tuple[float, int]] = []
    start, index = time.time(), a.start
    while (a.cases is None or index < a.start + a.cases) and (a.seconds is None or time.time() - start < a.seconds):
        recipe = draw(a.seed, index, a.device, dims)
        t0 = time.time()
        try:
            rec = run_case(recipe, a.device)
        except Exception as e:  # noqa: BLE001 - a valid case must not raise; a device error ends the run
            rec = {"outcome": "crash" if _device_error(e) else "raised", "exc": type(e).__name__,
                   "msg": str(e)[:400], "trace": traceback.format_exc()[-1500:]}
        rec["seconds"] = round(time.time() - t0, 3)
        counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
        if rec.get("ratio") is not None and np.isfinite(rec["ratio"]):
            worst.append((rec["ratio"], index))
        if rec["outcome"] in ("wrong", "raised", "crash"):
            failures.append({"index": index, "recipe": recipe, **rec})
            print(f"case {index}: {rec['outcome']} {rec.get('exc', '')} {rec.get('msg', '')[:300]}", flush=True)
        if log:
            log.write(json.dumps({"index": index, "recipe": recipe, **rec}, default=str) + "\n")
            log.flush()
        index += 1
        if rec["outcome"] == "crash":
            break
    worst.sort(reverse=True)
    summary = {
        "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "cpu_isa": _C.cpu_isa() if a.device == "cpu" else None,  # the CPU kernels' build that ran
        "scree_commit": os.environ.get("SCREE_GIT_COMMIT"), "seed": a.seed, "cases": index - a.start,
        "seconds": round(time.time() - start, 1), "counts": counts,
        "worst_ratios": [{"ratio": round(x, 3), "index": i} for x, i in worst[:5]],
        "failures": [{key: f.get(key) for key in ("index", "outcome", "exc", "msg", "ratio")} for f in failures[:20]],
    }
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))
    # One line last, so that a log's tail shows the counts however many failures the JSON lists.
    where = summary["device"] + (f" ({summary['cpu_isa']} build)" if summary["cpu_isa"] else "")
    print(f"campaign: {summary['cases']} cases in {summary['seconds']} s on {where}, seed {a.seed}: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The oracle of varlen attention (forward, autograd backward, scree.varlen_attention_backward):
scree.kernels.reference.varlen_attention run with torch on the host copies of q, k, v, judged by
FlashAttention's rule as tests/python/attention_checks.py applies it: a result is right when its
error against the reference computed in float64 is at most rtol (2 for outputs and lse, 3 for
gradients) times the error of the reference computed in the input dtype, plus an atol of one
rounding at the result's magnitude (and, for dq and dk, the rounding of dP - D: _cancellation;
for float64 inputs, whose reference in the input dtype is the fp64 one itself, the effect of
rounding the scores: _score_rounding).

Whether a call must raise is decided by scree.kernels.attention_spec.attention_spec (the contract
the reference and the kernels share) on torch copies with the original dtypes. Window sides beyond
2**40 are clamped for the reference run only (they mean "unbounded" on these tiny lengths, and the
reference's torch arithmetic cannot hold 2**64). Sequences with NaN or inf inputs, and in narrow
dtypes those with huge ones, are not judged (_judged_rows); the others still are, so nothing may
leak across sequences."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from tools.fuzz.expect import Arr, Expect, Free, Nat, Tup, eps
from tools.fuzz.oracle_layout import built

FLOATS = ("float64", "float32", "float16", "bfloat16")  # the dtypes attention serves


def _tensor(h: np.ndarray, dt: str) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(h)).to(getattr(torch, dt))


def _clamped(window: Any) -> Any:
    try:
        sides = list(window)
    except TypeError:
        return window
    out = []
    for s in sides:
        try:
            s = operator.index(s) if not isinstance(s, bool) and s is not None else s
        except TypeError:
            pass
        out.append(min(s, 2**40) if isinstance(s, int) and not isinstance(s, bool) else s)
    return type(window)(out) if isinstance(window, (list, tuple)) else out


def _run(ref: Any, arrays: dict, dt: str, opts: dict, upcast: bool, grad: str | None, dout: np.ndarray | None,
         same: bool) -> tuple:
    """(out values, lse, grads or None) of the reference in dtype `dt` (float64 when upcast)."""
    import scree
    import torch

    work = "float64" if upcast else dt
    leaves = {}
    for name, (h, offs) in arrays.items():
        if same and name != "q":
            leaves[name] = leaves["q"]
            continue
        t = _tensor(h, work)
        if grad:
            t.requires_grad_(True)
        leaves[name] = t
    arrs = {n: scree.Array(leaves[n], torch.tensor(arrays[n][1], dtype=torch.int64)) for n in arrays}
    out, lse = ref.varlen_attention(arrs["q"], arrs["k"], arrs["v"], return_lse=True, upcast=upcast, **opts)
    grads = None
    if grad:
        out.values.backward(_tensor(dout, work))
        grads = [leaves[n].grad for n in ("q", "k", "v")]
        if same:
            grads = [grads[0], None, None]
        grads = [None if g is None else g.detach().double().numpy() for g in grads]
    return out.values.detach().double().numpy(), lse.detach().double().numpy(), grads


def expect(recipe: dict, snap: dict) -> Expect:
    import scree
    import torch
    from scree.kernels import reference
    from scree.kernels.attention_spec import attention_spec

    entry, args = recipe["entry"], dict(recipe.get("args", {}))
    same = bool(recipe.get("self"))
    names = ("q", "k", "v")
    bs = {n: built(recipe["q" if same else n], snap, "q" if same else n) for n in names}
    worst = max(bs.values(), key=lambda b: {"ok": 0, "either": 1, "unchecked": 2, "bad": 3}[b.status])
    if worst.status == "bad":
        return Expect("raise", why=worst.why)
    if len({b.fw for b in bs.values()}) > 1:
        return Expect("raise", why="q, k, v from different frameworks")
    fw = bs["q"].fw
    if worst.status == "unchecked":  # README: validate=False over bad offsets gives unspecified values
        return Expect("any", why=worst.why)
    det = args.pop("deterministic", None)
    args.pop("return_lse", None)
    # the contract check on torch copies in the original dtypes
    lo_arrays = {}
    for n, b in bs.items():
        if b.dtype not in FLOATS and not b.dtype.startswith(("int", "uint", "bool", "complex")):
            return Expect("any", why=f"{b.dtype} inputs")
        lo_arrays[n] = scree.Array(_tensor(b.x, b.dtype), torch.tensor(b.offs, dtype=torch.int64))
    try:
        spec = attention_spec(lo_arrays["q"], lo_arrays["k"], lo_arrays["v"], deterministic=det, **args)
    except scree.ScreeError as e:
        return Expect("raise", why=f"attention_spec: {type(e).__name__}: {e}"[:160])
    except Exception as e:  # the contract check itself fails: no answer to compare with
        return Expect("any", why=f"attention_spec raised {type(e).__name__}")
    if spec.dtype not in FLOATS:
        return Expect("raise", why=f"{spec.dtype} attention")
    dt = spec.dtype
    opts = dict(args)
    if "window" in opts:
        opts["window"] = _clamped(opts["window"])
    grad = None if entry == "varlen_attention" else entry
    dout = snap["dout"].h if "dout" in snap else None
    bad_grad = recipe.get("bad_grad_input")
    arrays = {n: (b.x, b.offs) for n, b in bs.items()}
    try:
        out64, lse64, g64 = _run(reference, arrays, dt, opts, True, grad, dout, same and fw == "torch")
        outlo, lselo, glo = _run(reference, arrays, dt, opts, False, grad, dout, same and fw == "torch")
    except scree.ScreeError as e:
        return Expect("raise", why=f"reference: {type(e).__name__}")
    except Exception as e:
        return Expect("any", why=f"reference raised {type(e).__name__}: {e}"[:160])
    # every defect but dout_shape keeps a real dout (lse_dtype is judged as an answer): its NaN rows count
    rows, tame = _judged_rows(bs, dout, bad_grad != "dout_shape", args.get("scale"))
    if dt != "float64":  # huge inputs overflow the scores of a narrow dtype: nothing left to judge
        rows = {n: rows[n] & tame[n] for n in rows}
    cancel = _cancellation(bs, dout, spec.scale, dt)
    ds = _score_rounding(bs, spec.scale, args.get("softcap"), dt)
    vmax = _finite_max(bs["v"].x)
    dmax = _finite_max(dout) if dout is not None else 0.0
    lq_max = max((b - a for a, b in zip(bs["q"].offs, bs["q"].offs[1:])), default=0)

    def nat(e: np.ndarray, lo: np.ndarray, dts: tuple, rtol: float = 2.0, extra: float = 1e-5,
            where: np.ndarray | None = None) -> Nat:
        # tests/python/attention_checks.py's rule: atol = one rounding error of the dtype at the
        # reference's magnitude (float32 for float32/64) plus a small extra
        finite = e[np.isfinite(e)]
        mag = max(0.3, float(np.abs(finite).max(initial=0.0)))
        atol = eps(dt if dt in ("float16", "bfloat16") else "float32") * mag + extra
        return Nat(fw, dts, e, atol, ref_lo=lo, rtol=rtol, where=where)

    def grad(e: np.ndarray, lo: np.ndarray, name: str) -> Nat:  # FA's backward tests: rtol 3, +3e-4 with softcap
        judged = rows[name] if name == "v" else rows[name] & tame[name]  # dq, dk: ill-conditioned on huge inputs
        extra = 1e-5 + (3e-4 if args.get("softcap") else 0.0) + cancel.get(name, 0.0)
        if name == "v":  # dv_j = sum_i P_ij dout_i, P moved by up to 2 ds P (first order)
            extra += 2 * ds * max(lq_max, 1) * dmax
        return nat(e, lo, (dt,), 3.0, extra, _rows(judged, e))

    # The reference documents float64 lse for float64 inputs, scree.varlen_attention float32: either.
    lse_dt = ("float64", "float32") if dt == "float64" else ("float32",)
    q_offs = bs["q"].offs
    why = "reference (fp64 vs input dtype, FlashAttention's 2x rule)"
    out_arr = Arr(nat(out64, outlo, (dt,), extra=1e-5 + 2 * vmax * ds, where=_rows(rows["q"], out64)), q_offs)
    if entry == "varlen_attention":
        lse_where = rows["q"].reshape(1, -1) if lse64.ndim == 2 else rows["q"]
        value = Tup([out_arr, nat(lse64, lselo, lse_dt, 2.0, 1e-3 + ds, lse_where)]) if recipe["args"].get("return_lse") else out_arr
    elif entry == "varlen_attention_backward":
        if bad_grad == "dout_shape":
            return Expect("raise", why="dout of the wrong shape")
        if bad_grad == "lse_shape":
            return Expect("any" if lse64.shape[0] == lse64.shape[-1] else "raise", why="transposed lse")
        if bad_grad == "out_other":
            same_shape = bs["q"].x.shape == out64.shape
            return Expect("any" if same_shape else "raise", why="q passed as out")
        value = Tup([Arr(grad(g, gl, n), bs[n].offs) for n, g, gl in zip(names, g64, glo)])
        return Expect("either" if bad_grad == "lse_dtype" else "answer", value, why)
    elif fw == "torch":
        value = Tup([out_arr] + [Free() if g is None else grad(g, gl, n) for n, g, gl in zip(names, g64, glo)])
    else:
        value = Tup([grad(g, gl, n) for n, g, gl in zip(names, g64, glo)])
    return Expect("either" if worst.status == "either" else "answer", value, why)


def _judged_rows(bs: dict, dout: np.ndarray | None, has_dout: bool, scale: Any) -> tuple[dict, dict]:
    """Per token of q, k and v: (judged, tame). A token is judged when its sequence's inputs (q, k, v
    and dout rows) are all finite: what NaN or inf inputs should give is not specified, but they
    must not leak into other sequences. It is tame when they are also moderate (|x| <= 1e4, scale
    too): dq and dk of huge inputs cancel catastrophically in any precision (dS = P * (dP - D)), so
    only out, lse and dv, which stay well-conditioned, are judged there."""
    def rows_where(x: np.ndarray, test: Any) -> np.ndarray:
        return test(x.reshape(x.shape[0], -1)).all(axis=1) if x.size else np.ones(x.shape[0], bool)

    def per_sequence(test: Any) -> dict:
        fin = {n: rows_where(b.x, test) for n, b in bs.items()}
        if dout is not None and has_dout and dout.shape[0] == fin["q"].shape[0]:
            fin["q"] = fin["q"] & rows_where(dout, test)
        qo, ko = bs["q"].offs, bs["k"].offs
        ok = [bool(fin["q"][qo[i]:qo[i + 1]].all() and fin["k"][ko[i]:ko[i + 1]].all()
                   and fin["v"][ko[i]:ko[i + 1]].all()) for i in range(len(qo) - 1)]
        out = {}
        for n, offs in (("q", qo), ("k", ko), ("v", ko)):
            r = np.zeros(offs[-1], bool)
            for i, good in enumerate(ok):
                r[offs[i]:offs[i + 1]] = good
            out[n] = r
        return out

    big = isinstance(scale, (int, float)) and not isinstance(scale, bool) and abs(scale) > 1e4
    judged = per_sequence(np.isfinite)
    tame = per_sequence(lambda x: np.isfinite(x) & (np.abs(x) <= 1e4) & (not big))
    return judged, tame


def _cancellation(bs: dict, dout: np.ndarray | None, scale: float, dt: str) -> dict:
    """The rounding of dS = P * (dP - D) at the magnitude of dP = dout . v, carried into dq and dk:
    where a row's softmax is (nearly) one-hot, dq and dk are (nearly) 0 by cancellation and any
    kernel, in any summation order, leaves that much. Per row (Cauchy-Schwarz, sum_j P_ij = 1):
    |err dq_i| <= 2 eps scale |dout_i| max|v_j| max|k_j|, and dk sums over up to Lq rows."""
    if dout is None:
        return {}
    def norm(x: np.ndarray) -> float:
        x = np.where(np.isfinite(x), x, 0.0).reshape(x.shape[0], -1, x.shape[-1]) if x.size else x
        return float(np.sqrt((x.astype(np.float64) ** 2).sum(-1)).max(initial=0.0)) if x.size else 0.0
    e = eps(dt if dt in ("float16", "bfloat16", "float64") else "float32")
    base = 2 * e * abs(scale) * norm(dout) * norm(bs["v"].x)
    lq = max((b - a for a, b in zip(bs["q"].offs, bs["q"].offs[1:])), default=0)
    return {"q": base * norm(bs["k"].x), "k": base * norm(bs["q"].x) * max(lq, 1)}


def _finite_max(x: np.ndarray | None) -> float:
    if x is None or not x.size:
        return 0.0
    a = np.abs(np.asarray(x, dtype=np.float64))
    return float(a[np.isfinite(a)].max(initial=0.0))


def _score_rounding(bs: dict, scale: float, softcap: Any, dt: str) -> float:
    """float64 inputs: how far rounding can move a score between the kernel and the reference (each
    sums D products in its own order: at most D eps sum_d |q_d k_d| apiece, times |scale|); through a
    softcap, at most 2 softcap. The output moves by up to 2 max|v| times this (first order, d out_i /
    d s_ij = P_ij (v_j - out_i)), lse by up to this. It matters where scores are large against
    their differences, e.g. softcap 0.5 over values ~1e26, where the dot products cancel and the
    scores, hence the softmax, are set by rounding: the fuzzer's float64 "wrong" results there
    disagreed with the reference by exactly that. 0 for other dtypes, whose reference in the input
    dtype rounds its scores itself."""
    if dt != "float64":
        return 0.0
    def colmax(x: np.ndarray) -> np.ndarray:
        a = np.abs(np.asarray(x, dtype=np.float64))
        a = np.where(np.isfinite(a), a, 0.0)
        return a.reshape(-1, a.shape[-1]).max(axis=0) if a.size else np.zeros(a.shape[-1:])
    q, k = bs["q"].x, bs["k"].x
    if q.ndim < 2 or k.ndim < 2 or q.shape[-1] != k.shape[-1] or not q.size or not k.size:
        return 0.0
    d = q.shape[-1]
    with np.errstate(over="ignore", invalid="ignore"):
        raw = 2 * d * eps("float64") * abs(float(scale)) * float((colmax(q) * colmax(k)).sum())
    raw = min(raw, 1e300) if np.isfinite(raw) else 1e300  # unbounded: any output of the row's keys
    cap = softcap if isinstance(softcap, (int, float)) and not isinstance(softcap, bool) and softcap > 0 else None
    return min(raw, 2 * float(cap)) if cap is not None else raw


def _rows(r: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A per-token mask shaped to broadcast over (T, ...) results."""
    return r.reshape(-1, *([1] * (like.ndim - 1))) if like.shape[:1] == r.shape else np.ones(like.shape, bool)

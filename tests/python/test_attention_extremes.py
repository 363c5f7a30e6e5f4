"""Varlen attention at extreme scores and arguments (issue 14, "no input silently gives a wrong
answer"; found by tools/fuzz): the compiled CPU kernels against the fp64 reference
(scree.kernels.reference) with FlashAttention's tolerance rule, on fresh random non-zero inputs,
through NumPy (forward and varlen_attention_backward), torch CPU autograd and JAX CPU (custom_vjp).

* Scores of ~1e7 and ~1e12 in float64, in two shapes: random normal q, k scaled up (the softmax is
  nearly one-hot), and "exact" inputs whose scores are exactly representable and differ by O(1)
  (a large component shared by every key plus small dyadic parts, so the softmax is spread and no
  rounding of the scores hides an error of the kernel). The float64 backward used to read P from
  an lse kept in float32 (0.5 off at 1e7; at 1e12 the refinement overflowed and dv was wrong).
* float32 at large scores: random scaled (the FA rule's usual inputs), exact scores of ~4096 (a
  float32 lse rounds there by 2.4e-4, which scaled every P of a row: dv 1500x the reference's error),
  and ties (scores ~1e12, equal after float32 rounding: P summed to the number of keys).
* Lengths 0, 1, odd, longer than a kernel block; q and k lengths differing both ways; GQA; plain,
  causal, a window, causal with a left window.
* window sides of any size (2**63 and beyond mean unbounded), and typed errors (scree.ArgumentError)
  for negative / non-integer sides and for scale / softcap that are huge ints or not numbers.

The rule (tests/python/attention_checks.py, tools/fuzz/oracle_attention.py): with ref64 the fp64
reference and low the same computation by the reference in the input dtype,
    max|got - ref64| <= rtol * max|low - ref64| + atol,
rtol 2 for outputs and lse, 3 for gradients; atol one rounding of float32 at the reference's
magnitude + 1e-5 for float32 inputs, 64 float64 ulps of it for float64 inputs (where low is ref64
itself). dq and dk add the cancellation any precision leaves in dS = P (dP - delta) when the keys
(queries) share a large component: dq_i = scale sum_j dS_ij k_j sums to ~0 from terms of size
|dS| |k| (tools/fuzz's allowance, with a factor 8 of margin)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import scree
from scree.kernels.reference import varlen_attention as reference

torch = pytest.importorskip("torch", reason="torch is not installed")

from attention_checks import assert_compiled_matches_eager  # noqa: E402

LENGTHS = {  # (q lengths, k lengths): 0, 1, odd, longer than a block (96 keys), Lq > Lk and Lq < Lk
    "mixed": ([0, 1, 7, 33, 2, 130], [3, 1, 9, 20, 0, 150]),
    "q_longer": ([41, 5], [17, 1]),
}
OPTIONS = {
    "plain": {},
    "causal": {"causal": True},
    "window": {"window": (5, 2)},
    "causal_left": {"causal": True, "window": (9, None)},
}
HQ, HK, D = 4, 2, 16
EPS = {"float32": 2.0 ** -23, "float64": 2.0 ** -52}


def fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2 ** 62))


# ---- inputs -----------------------------------------------------------------------------------
def scaled_normal(rng, lq, lk, target):
    """q, k, v, dout of N(0, 1) (+0.1, never zero), q and k scaled so that scale * q.k ~ target."""
    def normal(n, h, d=D):
        return rng.standard_normal((n, h, d)) + 0.1
    f = math.sqrt(target)  # scale * q.k = (1/sqrt(D)) * D * f^2 * N(0,1)/sqrt(D) ~ f^2
    return normal(sum(lq), HQ) * f, normal(sum(lk), HK) * f, normal(sum(lk), HK), normal(sum(lq), HQ)


def exact_scores(rng, lq, lk, big):
    """Scores exactly representable in float64 (and float32 for big <= 2**16): q = (1, a), k =
    (big, b) with a, b multiples of 1/8 in [-1, 1] less 0, scale 1/sqrt(16) = 1/4, so scale * q.k =
    big / 4 + (a . b) / 4 exactly, in any summation order: large scores that differ by O(1)."""
    def dyadic(n, h):
        x = rng.integers(-8, 9, size=(n, h, D)) / 8.0
        return np.where(x == 0, 0.5, x)
    q, k = dyadic(sum(lq), HQ), dyadic(sum(lk), HK)
    q[..., 0], k[..., 0] = 1.0, big
    return q, k, dyadic(sum(lk), HK), dyadic(sum(lq), HQ)


# ---- runs ----------------------------------------------------------------------------------------
def torch_run(fn, x, lq, lk, dtype, opts, **kw):
    """(out, lse, (dq, dk, dv)) of fn through torch autograd, inputs x = (q, k, v, dout) as float64
    NumPy arrays rounded to `dtype`; returned as float64 NumPy."""
    leaves = [torch.from_numpy(a).to(dtype).requires_grad_(True) for a in x[:3]]
    q = scree.from_lengths(leaves[0], lq)
    k = scree.from_lengths(leaves[1], lk)
    out, lse = fn(q, k, k.with_values(leaves[2]), return_lse=True, **opts, **kw)
    grads = torch.autograd.grad(out.values, leaves, torch.from_numpy(x[3]).to(dtype), allow_unused=True)
    grads = [torch.zeros_like(a) if g is None else g for g, a in zip(grads, leaves)]
    return (f64(out.values), lse, [f64(g) for g in grads])


def references(x, lq, lk, dtype, opts):
    """The rule's two references: fp64 (upcast) and the same math in `dtype` (upcast=False)."""
    ref64 = torch_run(reference, x, lq, lk, torch.float64, opts)
    low = torch_run(reference, x, lq, lk, dtype, opts, upcast=False)
    return ref64, low


def f64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to(torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def row_norm(a: np.ndarray) -> float:
    return float(np.sqrt((a.astype(np.float64) ** 2).sum(-1)).max(initial=0.0)) if a.size else 0.0


def cancellation(x, lq, dtype: str, ds: float = 0.0) -> dict:
    """What rounding leaves in dq, dk where they are sums that cancel (module docstring), plus, with
    ds = score_rounding(...), what rounding the scores moves in the gradients (first order: P_ij by
    up to 2 ds P_ij, so dS_ij = P_ij (dP_ij - delta_i) by up to 6 ds P_ij max|dP|, summed against
    k (dq), q over a key's rows (dk), and P against dout (dv))."""
    q, k, v, dout = x
    base = (8 * EPS[dtype] + 6 * ds) * (1 / math.sqrt(D)) * row_norm(dout) * row_norm(v)
    rows = max(max(lq), 1)
    return {"dq": base * row_norm(k), "dk": base * row_norm(q) * rows,
            "dv": 2 * ds * rows * float(np.abs(dout).max(initial=0.0))}


def score_rounding(x, dtype: str, kind: str) -> float:
    """float64 inputs: how far rounding can move one score, scale * q.k, in the kernel and in the
    reference together (D roundings each, each at most eps * sum_d |q_d k_d|). There the rule's
    `low` is ref64 itself, so the rule sees no rounding at all; but at random scores of ~1e7 two
    keys of a row whose scores differ by a few units share its weight, and their scores' rounding
    moves the output by up to 2 max|v| times this (first order: d out_i / d s_ij = p_ij (v_j - out_i),
    summed over j with weights p), and lse by up to this (seed 3245376620323974459: out 9.3e-11 off
    with the rule's bound at 5.2e-14). 0 for the "exact" kinds, whose scores no summation order
    rounds (they keep the strict check), and for float32 inputs (`low`, the reference in float32,
    rounds its scores itself)."""
    if dtype != "float64" or not kind.startswith("normal"):
        return 0.0
    q, k = np.abs(x[0]).reshape(-1, D), np.abs(x[1]).reshape(-1, D)  # every pair: a bound
    worst = float((q @ k.T).max(initial=0.0))
    return 2 * D * EPS["float64"] * (1 / math.sqrt(D)) * worst


# ---- the rule ------------------------------------------------------------------------------------
def rounding_atol(ref64: np.ndarray, dtype: str) -> float:
    """One rounding error at the reference's magnitude: float32's for float32 inputs (as
    attention_checks.py), 64 float64 ulps for float64 inputs."""
    mag = float(np.abs(ref64[np.isfinite(ref64)]).max(initial=0.0))
    if dtype == "float64":
        return 64 * EPS["float64"] * mag
    r = ref64.astype(np.float32)
    return float(np.abs((r + np.float32(0.3)) - np.float32(0.3) - r).max(initial=0.0)) + 1e-5


def assert_fa(what, got, ref64, low, dtype, rtol, extra=0.0, seed=None):
    got, ref64, low = f64(got), f64(ref64), f64(low)
    assert got.shape == ref64.shape, f"{what}: shape {got.shape} vs {ref64.shape}"
    assert np.isfinite(got).all(), f"{what}: NaN or inf in the kernel's result (seed {seed})"
    err = float(np.abs(got - ref64).max(initial=0.0))
    base = float(np.abs(low - ref64).max(initial=0.0))
    atol = rounding_atol(ref64, dtype) + extra
    assert err <= rtol * base + atol, (
        f"{what}: error vs fp64 {err:.3g} > {rtol} x reference-in-{dtype} error {base:.3g} + atol {atol:.3g}"
        f" (seed {seed})")


def assert_lse(what, got, ref64, low, dtype, seed=None, rounding=0.0):
    """lse: float64 for float64 inputs, float32 otherwise; -inf exactly where the reference has it
    (rows that see no key); the rule on the finite entries."""
    want = np.float64 if dtype == "float64" else np.float32
    gdt = got.dtype if isinstance(got, np.ndarray) else np.dtype(str(got.dtype).removeprefix("torch."))
    assert gdt == want, f"{what}: lse dtype {gdt}, expected {np.dtype(want)}"
    g, r, lo = f64(got), f64(ref64), f64(low)
    assert g.shape == r.shape
    assert np.array_equal(np.isneginf(g), np.isneginf(r)), f"{what}: -inf rows differ (seed {seed})"
    fin = np.isfinite(r)
    assert np.isfinite(g[fin]).all(), f"{what}: NaN or inf lse (seed {seed})"
    # float32 lse: one float32 rounding of it (the kernel rounds lse once at the end) + FA's 1e-3.
    extra = rounding if dtype == "float64" else 1e-3 + float(np.abs(r[fin]).max(initial=0.0)) * 2.0 ** -24
    assert_fa(what, g[fin], r[fin], lo[fin], dtype, 2.0, extra, seed)


def check_all(what, got, ref64, low, dtype, x, lq, seed, kind, grads=True):
    out, lse, g = got
    ds = score_rounding(x, dtype, kind)
    assert_fa(f"{what} out", out, ref64[0], low[0], dtype, 2.0, 2 * float(np.abs(x[2]).max(initial=0.0)) * ds, seed)
    if lse is not None:
        assert_lse(f"{what} lse", lse, ref64[1], low[1], dtype, seed, ds)
    if grads:
        cancel = cancellation(x, lq, dtype, ds)
        for name, a, r, lo in zip(("dq", "dk", "dv"), g, ref64[2], low[2]):
            assert_fa(f"{what} {name}", a, r, lo, dtype, 3.0, cancel[name], seed)


def inputs(kind, rng, lq, lk):
    if kind == "normal_1e7":
        return scaled_normal(rng, lq, lk, 1e7)
    if kind == "normal_1e12":
        return scaled_normal(rng, lq, lk, 1e12)
    if kind == "exact_1e7":
        return exact_scores(rng, lq, lk, 2.0 ** 25)   # scores ~8.4e6
    if kind == "exact_1e12":
        return exact_scores(rng, lq, lk, 2.0 ** 42)   # scores ~1.1e12
    if kind == "exact_4096":
        return exact_scores(rng, lq, lk, 2.0 ** 14)   # exact in float32 too
    if kind == "ties_1e12":
        return exact_scores(rng, lq, lk, 2.0 ** 42)   # float32: the O(1) parts round away
    if kind == "normal_1":
        return scaled_normal(rng, lq, lk, 1.0)
    raise AssertionError(kind)


F64_KINDS = ["normal_1", "normal_1e7", "normal_1e12", "exact_1e7", "exact_1e12"]
F32_KINDS = ["normal_1", "normal_1e7", "normal_1e12", "exact_4096", "ties_1e12"]


# ---- torch autograd --------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
@pytest.mark.parametrize("kind", F64_KINDS)
def test_torch_float64_extreme_scores(kind, lengths, opts):
    seed = fresh_seed()
    lq, lk = lengths
    x = inputs(kind, np.random.default_rng(seed), lq, lk)
    ref64, low = references(x, lq, lk, torch.float64, opts)
    got = torch_run(scree.varlen_attention, x, lq, lk, torch.float64, opts)
    check_all(f"torch float64 {kind}", got, ref64, low, "float64", x, lq, seed, kind)


@pytest.mark.parametrize("opts", [OPTIONS["plain"], OPTIONS["causal_left"]], ids=["plain", "causal_left"])
@pytest.mark.parametrize("kind", F32_KINDS)
def test_torch_float32_large_scores(kind, opts):
    """float32 inputs keep a float32 lse; the backward recomputes the statistics of rows where
    that lse is too coarse (|lse| >= 32), so large scores stay within the rule."""
    seed = fresh_seed()
    lq, lk = LENGTHS["mixed"]
    x = inputs(kind, np.random.default_rng(seed), lq, lk)
    ref64, low = references(x, lq, lk, torch.float32, opts)
    got = torch_run(scree.varlen_attention, x, lq, lk, torch.float32, opts)
    check_all(f"torch float32 {kind}", got, ref64, low, "float32", x, lq, seed, kind)


def test_float32_lse_rounding_no_longer_scales_p():
    """The bug itself, measured: exact scores ~4096 (float32 rounds lse there by up to 2.4e-4), dv
    within a few float32 ulps of the fp64 reference (it was off by ~2e-4, 1500x the reference in
    float32), and ties at ~1e12 (P summed to the number of keys: dv ~6x too large)."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    lq, lk = [50, 3], [60, 200]
    x = exact_scores(rng, lq, lk, 2.0 ** 14)
    ref64, _ = references(x, lq, lk, torch.float32, {})
    got = torch_run(scree.varlen_attention, x, lq, lk, torch.float32, {})
    err = np.abs(got[2][2] - ref64[2][2]).max() / np.abs(ref64[2][2]).max()
    assert err < 2e-6, f"dv relative error {err:.3g} (seed {seed})"
    x = exact_scores(rng, lq, lk, 2.0 ** 42)
    _, low = references(x, lq, lk, torch.float32, {})
    got = torch_run(scree.varlen_attention, x, lq, lk, torch.float32, {})
    np.testing.assert_allclose(got[2][2], low[2][2], rtol=1e-4, atol=1e-5, err_msg=f"seed {seed}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True])
def test_rows_without_keys_after_an_infinite_output_are_zero(dtype, causal):
    """A sequence with no keys outputs exact zeros even when the item before it, on the same
    thread, left inf / NaN in the kernel's O buffer (a value of +inf): the forwards store O from
    their first key block instead of zeroing it per item, so an item with no key block must zero
    it itself (session 49; without that both the fp32 and the AMX forward output NaN here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the items in one thread's order: the sequence of 200 first
    try:
        gen = torch.Generator().manual_seed(fresh_seed())
        lq, lk, H, D = [200, 5, 0, 7], [200, 0, 3, 0], 2, 64
        q, k, v = (torch.randn(sum(n), H, D, generator=gen).to(getattr(torch, dtype)) for n in (lq, lk, lk))
        v[3] = float("inf")
        with torch.no_grad():
            out = scree.varlen_attention(scree.from_lengths(q, lq), scree.from_lengths(k, lk),
                                         scree.from_lengths(v, lk), causal=causal).values
        assert bool((out[200:] == 0).all()), out[200:].float().abs().amax(dim=(1, 2))
    finally:
        torch.set_num_threads(threads)


def test_float64_lse_is_float64_at_huge_scores():
    """lse keeps float64's range and precision: scores of 1e12, 1e39 (beyond float32), 1e300, within
    the scores' own rounding of the reference (a dot product of D terms: D eps scale |q| |k|)."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    lq, lk = [3, 0, 5], [4, 2, 5]
    for target in (1e12, 1e39, 1e300):
        x = scaled_normal(rng, lq, lk, target)
        ref64, _ = references(x, lq, lk, torch.float64, {"causal": True})
        got = torch_run(scree.varlen_attention, x, lq, lk, torch.float64, {"causal": True})
        assert got[1].dtype == torch.float64
        g, r = f64(got[1]), f64(ref64[1])
        fin = np.isfinite(r)
        assert np.array_equal(np.isneginf(g), np.isneginf(r))
        atol = 4 * D * EPS["float64"] * row_norm(x[0]) * row_norm(x[1]) / math.sqrt(D)
        np.testing.assert_allclose(g[fin], r[fin], rtol=0, atol=atol, err_msg=f"seed {seed}")


# ---- NumPy ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("kind,dtype", [(k, "float64") for k in F64_KINDS] + [(k, "float32") for k in F32_KINDS])
def test_numpy_forward_and_backward(kind, dtype, opts):
    seed = fresh_seed()
    lq, lk = LENGTHS["mixed"]
    x = inputs(kind, np.random.default_rng(seed), lq, lk)
    tdt = getattr(torch, dtype)
    ref64, low = references(x, lq, lk, tdt, opts)
    q = scree.from_lengths(x[0].astype(dtype), lq)
    k = scree.from_lengths(x[1].astype(dtype), lk)
    v = k.with_values(x[2].astype(dtype))
    out, lse = scree.varlen_attention(q, k, v, return_lse=True, **opts)
    assert isinstance(out.values, np.ndarray) and out.values.dtype == dtype
    dq, dk, dv = scree.varlen_attention_backward(x[3].astype(dtype), q, k, v, out, lse, **opts)
    got = (out.values, lse, [dq.values, dk.values, dv.values])
    check_all(f"numpy {dtype} {kind}", got, ref64, low, dtype, x, lq, seed, kind)


def test_numpy_float64_backward_with_a_float32_lse():
    """The float64 backward recomputes the softmax statistics: an lse passed in float32 (as from
    code written for the float32 lse) gives the same gradients, and a float32 q with a float64 lse
    is a typed error."""
    seed = fresh_seed()
    lq, lk = LENGTHS["mixed"]
    x = exact_scores(np.random.default_rng(seed), lq, lk, 2.0 ** 42)
    q, k = scree.from_lengths(x[0], lq), scree.from_lengths(x[1], lk)
    v = k.with_values(x[2])
    out, lse = scree.varlen_attention(q, k, v, return_lse=True, causal=True)
    assert lse.dtype == np.float64
    a = scree.varlen_attention_backward(x[3], q, k, v, out, lse, causal=True)
    b = scree.varlen_attention_backward(x[3], q, k, v, out, lse.astype(np.float32), causal=True)
    for ga, gb in zip(a, b):
        assert np.array_equal(ga.values, gb.values)
    q32, k32 = (scree.from_lengths(a.astype(np.float32), n) for a, n in ((x[0], lq), (x[1], lk)))
    v32 = k32.with_values(x[2].astype(np.float32))
    out32 = scree.varlen_attention(q32, k32, v32)
    with pytest.raises(scree.DTypeError, match="lse must be float32"):
        scree.varlen_attention_backward(x[3].astype(np.float32), q32, k32, v32, out32, lse)


# ---- JAX -------------------------------------------------------------------------------------------
class TestJax:
    jax = pytest.importorskip("jax", reason="jax is not installed")

    @pytest.fixture(autouse=True)
    def _x64(self, jax_x64):
        yield

    def _run(self, x, lq, lk, dtype, opts, jit=False):
        jax, jnp = self.jax, self.jax.numpy
        from scree._connect import jax as glue
        assert glue.serves(), "scree._C was built without the XLA FFI handlers"
        q = scree.from_lengths(jnp.asarray(x[0], dtype=dtype), lq)
        k = scree.from_lengths(jnp.asarray(x[1], dtype=dtype), lk)
        v = k.with_values(jnp.asarray(x[2], dtype=dtype))
        dout = jnp.asarray(x[3], dtype=dtype)

        def fwd(qv, kv, vv):
            return scree.varlen_attention(q.with_values(qv), k.with_values(kv), v.with_values(vv),
                                          return_lse=True, **opts)

        def loss(qv, kv, vv):
            out, _ = fwd(qv, kv, vv)
            return jnp.sum(out.values * dout)

        grad = jax.grad(loss, argnums=(0, 1, 2))
        if jit:
            fwd, grad = jax.jit(fwd), jax.jit(grad)
        out, lse = fwd(q.values, k.values, v.values)
        grads = grad(q.values, k.values, v.values)
        return f64(np.asarray(out.values)), np.asarray(lse), [f64(np.asarray(g)) for g in grads]

    @pytest.mark.parametrize("opts", [OPTIONS["causal"], OPTIONS["window"]], ids=["causal", "window"])
    @pytest.mark.parametrize("kind", ["normal_1e7", "normal_1e12", "exact_1e12"])
    def test_float64_extreme_scores(self, kind, opts):
        seed = fresh_seed()
        lq, lk = LENGTHS["mixed"]
        x = inputs(kind, np.random.default_rng(seed), lq, lk)
        ref64, low = references(x, lq, lk, torch.float64, opts)
        got = self._run(x, lq, lk, "float64", opts)
        check_all(f"jax float64 {kind}", got, ref64, low, "float64", x, lq, seed, kind)

    def test_float64_under_jit(self):
        seed = fresh_seed()
        lq, lk = LENGTHS["q_longer"]
        x = inputs("exact_1e7", np.random.default_rng(seed), lq, lk)
        ref64, low = references(x, lq, lk, torch.float64, {"causal": True})
        got = self._run(x, lq, lk, "float64", {"causal": True}, jit=True)
        check_all("jax jit float64", got, ref64, low, "float64", x, lq, seed, "exact_1e7")

    @pytest.mark.parametrize("kind", ["exact_4096", "ties_1e12"])
    def test_float32_large_scores(self, kind):
        seed = fresh_seed()
        lq, lk = LENGTHS["mixed"]
        x = inputs(kind, np.random.default_rng(seed), lq, lk)
        ref64, low = references(x, lq, lk, torch.float32, {})
        got = self._run(x, lq, lk, "float32", {})
        check_all(f"jax float32 {kind}", got, ref64, low, "float32", x, lq, seed, kind)

    def test_huge_window_sides(self):
        rng = np.random.default_rng(fresh_seed())
        lq, lk = [4, 7], [6, 3]
        x = scaled_normal(rng, lq, lk, 1.0)
        want = self._run(x, lq, lk, "float64", {"causal": True})
        got = self._run(x, lq, lk, "float64", {"causal": True, "window": (2 ** 64 + 3, 2 ** 63)})
        for a, b in zip((got[0], got[1], *got[2]), (want[0], want[1], *want[2])):
            assert np.array_equal(a, b)


# ---- window sides, scale, softcap ------------------------------------------------------------------
def _small(backend="numpy", dtype="float64"):
    rng = np.random.default_rng(fresh_seed())
    lq, lk = [3, 0, 6], [5, 2, 4]
    q, k, v, _ = scaled_normal(rng, lq, lk, 1.0)
    if backend == "torch":
        q, k, v = (torch.from_numpy(a).to(getattr(torch, dtype)) for a in (q, k, v))
    else:
        q, k, v = (a.astype(dtype) for a in (q, k, v))
    kk = scree.from_lengths(k, lk)
    return scree.from_lengths(q, lq), kk, kk.with_values(v)


HUGE_SIDES = [2 ** 63 - 1, 2 ** 63, 2 ** 64 + 5, 10 ** 30, np.uint64(2 ** 64 - 1)]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("side", HUGE_SIDES, ids=lambda s: f"{int(s):.3g}")
def test_huge_window_sides_are_unbounded(backend, side):
    """A window side at least Tq + Tk long bounds nothing: any size is accepted (2**63 and beyond
    used to raise a bare TypeError from the AttentionArgs binding), same result as None."""
    q, k, v = _small(backend)
    for window, same in (((side, 0), (None, 0)), ((0, side), (0, None)), ((side, side), None),
                         ((3, side), (3, None))):
        got, glse = scree.varlen_attention(q, k, v, window=window, return_lse=True)
        want, wlse = scree.varlen_attention(q, k, v, window=same, return_lse=True)
        assert np.array_equal(f64(got.values), f64(want.values)) and np.array_equal(f64(glse), f64(wlse))
        ref = reference(q, k, v, window=window)
        np.testing.assert_allclose(f64(got.values), f64(ref.values), rtol=1e-12, atol=1e-12)
    # With causal, and through torch autograd.
    if backend == "torch":
        leaves = [a.values.clone().requires_grad_(True) for a in (q, k, v)]
        out = scree.varlen_attention(*(a.with_values(t) for a, t in zip((q, k, v), leaves)), causal=True,
                                     window=(side, side))
        out.values.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in leaves)


@pytest.mark.parametrize("window", [(-2, 0), (0, -5), (-(2 ** 70), 0), (1.5, 0), (0, "3"), (True, 0),
                                    (np.float64(2.0), None), (1, 2, 3), "ab", 5, (None, [1])])
def test_bad_window_sides_raise_argument_error(window):
    q, k, v = _small()
    with pytest.raises(scree.ArgumentError, match="window"):
        scree.varlen_attention(q, k, v, window=window)
    with pytest.raises(scree.ArgumentError, match="window"):
        reference(q, k, v, window=window)


class _NoFloat:
    def __float__(self):
        raise RuntimeError("no float here")


@pytest.mark.parametrize("name", ["scale", "softcap"])
@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400), 10 ** 5000, "abc", "1e999", object(), [1.0, 2.0],
                                   np.array([1.0, 2.0]), complex(1, 1), float("nan"), float("inf"), _NoFloat()],
                         ids=["1e400", "-1e400", "1e5000", "str", "str_inf", "object", "list", "array", "complex",
                              "nan", "inf", "raises"])
def test_bad_scale_and_softcap_raise_argument_error(name, value):
    q, k, v = _small()
    with pytest.raises(scree.ArgumentError, match=name):
        scree.varlen_attention(q, k, v, **{name: value})
    with pytest.raises(scree.ArgumentError, match=name):
        reference(q, k, v, **{name: value})


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_scale_beyond_the_kernels_range_raises_argument_error(backend):
    """A scale that fits float64 but not the kernels' float32 arithmetic (float32 inputs)."""
    q, k, v = _small(backend, "float32")
    with pytest.raises(scree.ArgumentError, match="scale"):
        scree.varlen_attention(q, k, v, scale=10 ** 300)
    out = scree.varlen_attention(q, k, v, scale=10 ** 30)  # an int that fits: fine
    assert np.isfinite(f64(out.values)).all()


def test_torch_compile_after_exotic_options():
    """Options seen once (an np.uint64 or 2**64 window side, an np.float64 scale) must not break
    later compiled calls: torch.compile guards on the options memo, and an np.uint64 key there made
    dynamo's guard code raise TypeError in every later compilation."""
    q, k, v = _small("torch", "float32")
    for window in ((np.uint64(2 ** 64 - 1), 0), (2 ** 64, None), (0, 2 ** 63)):
        scree.varlen_attention(q, k, v, window=window)
    scree.varlen_attention(q, k, v, scale=np.float64(0.3))

    def loss(qv, kv, vv):
        out = scree.varlen_attention(q.with_values(qv), k.with_values(kv), v.with_values(vv), causal=True,
                                     window=(2 ** 70, None))
        return (out.values ** 2).sum()

    assert_compiled_matches_eager(loss, (q, k, v))


def test_ambiguous_causal_raises_argument_error():
    q, k, v = _small()
    with pytest.raises(scree.ArgumentError, match="causal"):
        scree.varlen_attention(q, k, v, causal=np.array([True, False]))


def test_backward_stays_finite_with_a_huge_scale_and_softcap(rng):
    """scale = softcap = 1e30 in float64: a score and its row's maximum, computed by two GEMMs,
    may differ in their last bit, which the softcap turns into ~1e14: exp(1e14) was inf and the
    gradients inf/NaN (tools/fuzz). P is now capped at 1. (Such inputs are ill-conditioned: one
    ulp of a score moves the softmax completely, so only finiteness is asserted.)"""
    q = scree.from_offsets(rng.standard_normal((13, 1, 1)), np.array([0, 5, 13, 13]))
    k = scree.from_offsets(rng.standard_normal((14, 1, 1)), np.array([0, 3, 11, 14]))
    v = k.with_values(rng.standard_normal((14, 1, 1)))
    dout = rng.standard_normal((13, 1, 1))
    opts = {"scale": 1e30, "softcap": 1e30}
    out, lse = scree.varlen_attention(q, k, v, return_lse=True, **opts)
    for g in scree.varlen_attention_backward(dout, q, k, v, out, lse, **opts):
        assert np.isfinite(np.asarray(g.values if hasattr(g, "values") else g)).all()

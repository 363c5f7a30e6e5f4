"""Tests of the reference varlen attention (scree.kernels.attention_reference), the spec every
attention kernel is checked against. It is checked here against an independent padded-and-masked
dense computation written below in plain NumPy, whose mask is built with explicit Python loops so
that it shares no code (and no index algebra) with the reference it judges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scree
from scree.kernels.attention_reference import varlen_attention

try:
    import torch
except ImportError:  # the NumPy half of the suite still runs without torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
BACKENDS = ["numpy", pytest.param("torch", marks=needs_torch)]


# ---- the independent dense oracle ----------------------------------------------------------------

def key_visible(i, j, len_q, len_k, causal, window):
    """Whether query i may see key j, spelled out one case at a time (FlashAttention >= 2.1)."""
    if j >= len_k or i >= len_q:
        return False
    diag = i + len_k - len_q  # the key on query i's diagonal: the last query sees the last key
    left, right = (None, None) if window is None else window
    if causal and j > diag:
        return False
    if left is not None and left != -1 and j < diag - left:
        return False
    if right is not None and right != -1 and j > diag + right:
        return False
    return True


def pad(values, lengths, width):
    """(n, width, *feature) zero-padded copy of packed float64 values."""
    out = np.zeros((len(lengths), width) + values.shape[1:], dtype=np.float64)
    start = 0
    for b, n in enumerate(lengths):
        out[b, :n] = values[start:start + n]
        start += n
    return out


def dense_attention(q, k, v, len_q, len_k, causal=False, scale=None, window=None, softcap=None):
    """out (Tq, Hq, Dv) and lse (Hq, Tq) in float64 from packed NumPy q, k, v, via padding."""
    n = len(len_q)
    Lq, Lk = max(len_q, default=0), max(len_k, default=0)
    Hq, D = q.shape[1], q.shape[2]
    Hk = k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qp, kp, vp = pad(q, len_q, Lq), pad(k, len_k, Lk), pad(v, len_k, Lk)
    # Give every query head its own copy of the kv head it reads (GQA), instead of grouping.
    kv_head = np.array([h // (Hq // Hk) for h in range(Hq)], dtype=np.int64)
    kp, vp = kp[:, :, kv_head], vp[:, :, kv_head]

    scores = np.einsum("bihd,bjhd->bhij", qp, kp) * scale
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    mask = np.zeros((n, Lq, Lk), dtype=bool)
    for b in range(n):
        for i in range(len_q[b]):
            for j in range(len_k[b]):
                mask[b, i, j] = key_visible(i, j, len_q[b], len_k[b], causal, window)
    scores = np.where(mask[:, None], scores, -np.inf)
    any_visible = mask.any(axis=-1)[:, None]  # (n, 1, Lq)
    # initial=-inf lets the max run over an empty key axis (a batch whose k are all empty).
    row_max = np.where(any_visible, np.max(scores, axis=-1, initial=-np.inf), 0.0)
    weights = np.exp(scores - row_max[..., None])
    total = weights.sum(axis=-1)
    probs = weights / np.where(total > 0, total, 1.0)[..., None]
    out_p = np.einsum("bhij,bjhd->bihd", probs, vp)
    with np.errstate(divide="ignore"):
        lse_p = np.where(any_visible, np.log(total) + row_max, -np.inf)

    # The empty pieces give the concatenations their shape when there are no sequences at all.
    out = np.concatenate([np.zeros((0, Hq, v.shape[2]))] + [out_p[b, :len_q[b]] for b in range(n)], axis=0)
    lse = np.concatenate([np.zeros((Hq, 0))] + [lse_p[b, :, :len_q[b]] for b in range(n)], axis=1)
    return out, lse


# ---- helpers -------------------------------------------------------------------------------------

@pytest.fixture
def rng():
    # Fresh inputs every run (DESIGN.md section 3); the seed is printed so that pytest shows it
    # with the captured output of a failing test and the failure can be replayed.
    seed = np.random.SeedSequence().entropy
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


def packed(rng, lengths, heads, dim, dtype=np.float64):
    """Random normal values (never zeros) for sequences of the given lengths."""
    return rng.standard_normal((int(sum(lengths)), heads, dim)).astype(dtype)


def as_array(values, lengths, backend):
    if backend == "torch":
        values = torch.from_numpy(values)
    return scree.from_lengths(values, list(lengths))


def host(x):
    """A NumPy float64 copy of a native result (detached for torch)."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def make_qkv(rng, shape, backend, dtype=np.float64):
    len_q, len_k, Hq, Hk, D, Dv = shape
    qn, kn, vn = packed(rng, len_q, Hq, D, dtype), packed(rng, len_k, Hk, D, dtype), packed(rng, len_k, Hk, Dv, dtype)
    return (qn, kn, vn), (as_array(qn, len_q, backend), as_array(kn, len_k, backend), as_array(vn, len_k, backend))


# (len_q, len_k, Hq, Hk, D, Dv)
SHAPES = {
    "equal": ([5, 3, 7], [5, 3, 7], 2, 2, 8, 8),
    "empty_and_one": ([0, 1, 3, 0, 2, 1], [0, 1, 3, 4, 0, 2], 2, 2, 4, 4),
    "long": ([130, 17], [130, 17], 2, 1, 8, 8),
    "q_longer": ([9, 4, 1, 6], [3, 2, 1, 5], 4, 2, 8, 8),
    "k_longer": ([3, 1, 5, 2], [11, 7, 6, 2], 4, 4, 8, 8),
    "gqa4_dv": ([6, 11], [9, 4], 8, 2, 16, 4),
    "mqa": ([7, 2, 5], [4, 9, 5], 4, 1, 8, 12),
}
OPTIONS = {
    "plain": {},
    "causal": {"causal": True},
    "left": {"window": (2, None)},
    "right": {"window": (-1, 1)},
    "both": {"window": (3, 2)},
    "causal_left": {"causal": True, "window": (4, -1)},
    "softcap_scale": {"softcap": 0.7, "scale": 0.9},
    "causal_softcap": {"causal": True, "softcap": 2.0},
}


# ---- agreement with the dense oracle -------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_matches_dense_float64(rng, backend, shape, opts):
    (qn, kn, vn), (q, k, v) = make_qkv(rng, shape, backend)
    out, lse = varlen_attention(q, k, v, return_lse=True, **opts)
    want_out, want_lse = dense_attention(qn, kn, vn, shape[0], shape[1], **opts)
    np.testing.assert_allclose(host(out.values), want_out, rtol=1e-10, atol=1e-12)
    # assert_allclose also requires the -inf entries of lse to sit at the same places.
    np.testing.assert_allclose(host(lse), want_lse, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=0, max_size=4),
    heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (4, 4), (3, 1)]),
    dims=st.sampled_from([(4, 4), (3, 5)]),
    causal=st.booleans(),
    window=st.one_of(st.none(), st.tuples(st.sampled_from([None, -1, 0, 1, 3]),
                                          st.sampled_from([None, -1, 0, 2]))),
    softcap=st.sampled_from([None, 0.5, 3.0]),
    scale=st.sampled_from([None, 0.25, 1.7]),
)
def test_matches_dense_random_configs(rng, lengths, heads, dims, causal, window, softcap, scale):
    len_q = [a for a, _ in lengths]
    len_k = [b for _, b in lengths]
    shape = (len_q, len_k, heads[0], heads[1], dims[0], dims[1])
    (qn, kn, vn), (q, k, v) = make_qkv(rng, shape, "numpy")
    opts = dict(causal=causal, window=window, softcap=softcap, scale=scale)
    out, lse = varlen_attention(q, k, v, return_lse=True, **opts)
    want_out, want_lse = dense_attention(qn, kn, vn, len_q, len_k, **opts)
    np.testing.assert_allclose(out.values, want_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_inputs_use_float64_math(rng, backend):
    # upcast=True must match the float64 oracle fed the same float32-rounded inputs to float32
    # rounding of the output, i.e. no float32 error accumulates inside.
    shape = SHAPES["k_longer"]
    (qn, kn, vn), (q, k, v) = make_qkv(rng, shape, backend, dtype=np.float32)
    out, lse = varlen_attention(q, k, v, causal=True, return_lse=True)
    want_out, want_lse = dense_attention(qn, kn, vn, shape[0], shape[1], causal=True)
    np.testing.assert_allclose(host(out.values), want_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(host(lse), want_lse, rtol=1e-6, atol=1e-6)


@needs_torch
def test_numpy_and_torch_agree(rng):
    shape = SHAPES["gqa4_dv"]
    (qn, kn, vn), (q, k, v) = make_qkv(rng, shape, "numpy")
    qt, kt, vt = (as_array(a, lens, "torch") for a, lens in ((qn, shape[0]), (kn, shape[1]), (vn, shape[1])))
    opts = dict(causal=True, window=(3, None), softcap=1.5)
    o_np, l_np = varlen_attention(q, k, v, return_lse=True, **opts)
    o_t, l_t = varlen_attention(qt, kt, vt, return_lse=True, **opts)
    np.testing.assert_allclose(host(o_t.values), o_np.values, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(host(l_t), l_np, rtol=1e-12, atol=1e-13)


# ---- rows without visible keys, lse ---------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_keys_give_zero_output_and_minus_inf_lse(rng, backend):
    len_q, len_k = [3, 2, 0], [0, 4, 0]
    _, (q, k, v) = make_qkv(rng, (len_q, len_k, 2, 1, 4, 3), backend)
    out, lse = varlen_attention(q, k, v, return_lse=True)
    o, l = host(out.values), host(lse)
    assert np.all(o[:3] == 0.0) and np.all(l[:, :3] == -np.inf)  # sequence 0 has no keys
    assert np.all(np.isfinite(l[:, 3:])) and np.all(o[3:] != 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_bottom_right_alignment(rng, backend):
    # Lq = 5 > Lk = 2: the last query aligns with the last key, so queries 0..2 see nothing,
    # query 3 sees key 0 only (its output is exactly v[0]) and query 4 sees both keys.
    _, (q, k, v) = make_qkv(rng, ([5], [2], 2, 2, 4, 4), backend)
    out, lse = varlen_attention(q, k, v, causal=True, return_lse=True)
    o, l = host(out.values), host(lse)
    assert np.all(o[:3] == 0.0) and np.all(l[:, :3] == -np.inf)
    np.testing.assert_allclose(o[3], host(v.values)[0], rtol=1e-12)
    assert np.all(np.isfinite(l[:, 3:]))
    # Lq = 2 < Lk = 5: query 0 sees keys 0..3, query 1 sees all five.
    _, (q, k, v) = make_qkv(rng, ([2], [5], 1, 1, 4, 4), backend)
    full = host(varlen_attention(q, k, v).values)
    causal = host(varlen_attention(q, k, v, causal=True).values)
    np.testing.assert_allclose(causal[1], full[1], rtol=1e-12)
    assert not np.allclose(causal[0], full[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_lse_matches_logsumexp_of_scaled_capped_scores(rng, backend):
    (qn, kn, _), (q, k, v) = make_qkv(rng, ([4], [6], 2, 2, 8, 8), backend)
    _, lse = varlen_attention(q, k, v, scale=0.5, softcap=1.25, return_lse=True)
    s = 1.25 * np.tanh(0.5 * np.einsum("ihd,jhd->hij", qn, kn) / 1.25)
    want = np.log(np.exp(s).sum(axis=-1))  # small capped scores: no overflow, no shift needed
    np.testing.assert_allclose(host(lse), want, rtol=1e-12)


# ---- option equivalences --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_option_spellings_agree(rng, backend):
    _, (q, k, v) = make_qkv(rng, SHAPES["q_longer"], backend)

    def run(**kw):
        out, lse = varlen_attention(q, k, v, return_lse=True, **kw)
        return host(out.values), host(lse)

    def same(a, b):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])

    same(run(causal=True), run(window=(None, 0)))
    same(run(causal=True), run(window=(-1, 0)))
    same(run(causal=True, window=(3, 5)), run(window=(3, 0)))  # causal caps the right side at 0
    same(run(), run(window=(-1, -1)))
    same(run(), run(window=(None, None)))
    same(run(), run(softcap=0.0))  # FlashAttention's "off" value
    same(run(), run(scale=1.0 / math.sqrt(8)))
    same(run(window=[2, 1]), run(window=(np.int64(2), 1)))


# ---- return types, shapes and dtypes --------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_return_types_and_shapes(rng, backend, dtype):
    len_q, len_k = [3, 0, 5], [2, 4, 5]
    _, (q, k, v) = make_qkv(rng, (len_q, len_k, 4, 2, 8, 6), backend, dtype=dtype)
    out = varlen_attention(q, k, v)
    assert isinstance(out, scree.Array)
    out2, lse = varlen_attention(q, k, v, return_lse=True)
    native = np.ndarray if backend == "numpy" else torch.Tensor
    for o in (out, out2):
        assert o.backend == backend and isinstance(o.values, native)
        assert tuple(o.values.shape) == (8, 4, 6)
        assert o.values.dtype == q.values.dtype
        np.testing.assert_array_equal(o.host_offsets, q.host_offsets)
    assert isinstance(lse, native) and tuple(lse.shape) == (4, 8)
    lse_name = "float64" if dtype == np.float64 else "float32"
    assert str(lse.dtype).removeprefix("torch.") == lse_name


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_sequences(backend):
    q = as_array(np.ones((0, 2, 4)), [], backend)
    k = as_array(np.ones((0, 1, 4)), [], backend)
    v = as_array(np.ones((0, 1, 3)), [], backend)
    out, lse = varlen_attention(q, k, v, causal=True, return_lse=True)
    assert len(out) == 0 and tuple(out.values.shape) == (0, 2, 3) and tuple(lse.shape) == (2, 0)


# ---- upcast=False: the same computation in the input dtype ------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_no_upcast_close_to_upcast_float32(rng, backend):
    _, (q, k, v) = make_qkv(rng, SHAPES["mqa"], backend, dtype=np.float32)
    opts = dict(causal=True, softcap=3.0, window=(5, None), return_lse=True)
    hi, hi_lse = varlen_attention(q, k, v, **opts)
    lo, lo_lse = varlen_attention(q, k, v, upcast=False, **opts)
    assert lo.values.dtype == q.values.dtype and str(lo_lse.dtype).endswith("float32")
    np.testing.assert_allclose(host(lo.values), host(hi.values), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(host(lo_lse), host(hi_lse), rtol=1e-5, atol=1e-5)


LOW_PRECISION = [
    ("numpy", "float16"),
    pytest.param("torch", "float16", marks=needs_torch),
    pytest.param("torch", "bfloat16", marks=needs_torch),
]


@pytest.mark.parametrize("backend,dtype", LOW_PRECISION)
def test_no_upcast_low_precision_keeps_dtype_and_is_rough(rng, backend, dtype):
    # Half precision has ~3 significant digits; this checks the dtype plumbing and that the
    # low-precision path is the same computation (a loose bound), not a tolerance rule.
    _, (q, k, v) = make_qkv(rng, SHAPES["gqa4_dv"], backend, dtype=np.float32)
    if backend == "torch":
        q, k, v = (a.with_values(a.values.to(getattr(torch, dtype))) for a in (q, k, v))
    else:
        q, k, v = (a.with_values(a.values.astype(dtype)) for a in (q, k, v))
    hi, hi_lse = varlen_attention(q, k, v, causal=True, return_lse=True)
    lo, lo_lse = varlen_attention(q, k, v, causal=True, return_lse=True, upcast=False)
    assert hi.values.dtype == lo.values.dtype == q.values.dtype
    assert str(hi_lse.dtype).endswith("float32") and str(lo_lse.dtype).endswith("float32")
    np.testing.assert_allclose(host(lo.values), host(hi.values), atol=0.1)
    np.testing.assert_allclose(host(lo_lse), host(hi_lse), atol=0.1)


# ---- torch autograd: the reference is also the gradient reference -----------------------------------

@needs_torch
def test_gradcheck_output(rng):
    # Includes an empty q sequence, an empty k sequence and masked-out rows (Lq > Lk, causal), so
    # the gradient must pass cleanly through the "no visible key" path.
    len_q, len_k = [3, 0, 2, 2], [2, 3, 0, 3]
    (qn, kn, vn), _ = make_qkv(rng, (len_q, len_k, 2, 1, 3, 2), "numpy")
    leaves = [torch.from_numpy(a).requires_grad_() for a in (qn, kn, vn)]

    def f(qv, kv, vv):
        q, k, v = scree.from_lengths(qv, len_q), scree.from_lengths(kv, len_k), scree.from_lengths(vv, len_k)
        return varlen_attention(q, k, v, causal=True, softcap=1.5, window=(2, None)).values

    assert torch.autograd.gradcheck(f, leaves)


@needs_torch
def test_gradcheck_lse(rng):
    # lse is differentiable wherever it is finite (every query row here sees at least one key).
    len_q, len_k = [2, 3], [3, 3]
    (qn, kn, vn), _ = make_qkv(rng, (len_q, len_k, 2, 1, 3, 2), "numpy")
    leaves = [torch.from_numpy(a).requires_grad_() for a in (qn, kn, vn)]

    def f(qv, kv, vv):
        q, k, v = scree.from_lengths(qv, len_q), scree.from_lengths(kv, len_k), scree.from_lengths(vv, len_k)
        out, lse = varlen_attention(q, k, v, causal=True, scale=0.8, return_lse=True)
        return out.values, lse

    assert torch.autograd.gradcheck(f, leaves)


@needs_torch
def test_gradients_flow_and_vanish_where_unseen(rng):
    # q longer than k with causal: queries 0..2 of sequence 0 see no key, so their gradient is 0;
    # keys of a sequence whose queries are all empty get no gradient either. No NaN anywhere.
    len_q, len_k = [5, 0], [2, 3]
    (qn, kn, vn), _ = make_qkv(rng, (len_q, len_k, 2, 2, 4, 4), "numpy", dtype=np.float32)
    qv, kv, vv = (torch.from_numpy(a).requires_grad_() for a in (qn, kn, vn))
    q, k, v = scree.from_lengths(qv, len_q), scree.from_lengths(kv, len_k), scree.from_lengths(vv, len_k)
    out = varlen_attention(q, k, v, causal=True, softcap=2.0)
    assert out.values.requires_grad
    (out.values * torch.randn_like(out.values)).sum().backward()
    for g in (qv.grad, kv.grad, vv.grad):
        assert g is not None and torch.isfinite(g).all()
    assert (qv.grad[:3] == 0).all() and (qv.grad[3:] != 0).any()
    assert (kv.grad[2:] == 0).all() and (vv.grad[2:] == 0).all()
    assert (vv.grad[:2] != 0).any()


@needs_torch
def test_rows_without_keys_pass_no_gradient_even_from_nan_dout(rng):
    # A row that sees no key outputs the constant 0: its dout, NaN here, reaches no gradient (the
    # dense product p^T dout would give 0 x NaN = NaN in dv), and the compiled kernel agrees.
    len_q, len_k = [5, 3], [2, 3]
    (qn, kn, vn), _ = make_qkv(rng, (len_q, len_k, 2, 1, 8, 8), "numpy")
    dout = rng.standard_normal((8, 2, 8))
    dout[:3] = np.nan  # the three queries of sequence 0 that see no key
    qv, kv, vv = (torch.from_numpy(a).requires_grad_() for a in (qn, kn, vn))
    q, k, v = scree.from_lengths(qv, len_q), scree.from_lengths(kv, len_k), scree.from_lengths(vv, len_k)
    varlen_attention(q, k, v, causal=True).values.backward(torch.from_numpy(dout))
    assert (qv.grad[:3] == 0).all()
    assert all(torch.isfinite(g).all() for g in (qv.grad, kv.grad, vv.grad))
    kq, kk, kv_ = (scree.from_lengths(a, ln) for a, ln in ((qn, len_q), (kn, len_k), (vn, len_k)))
    fwd, lse = scree.varlen_attention(kq, kk, kv_, causal=True, return_lse=True)
    grads = scree.varlen_attention_backward(dout, kq, kk, kv_, fwd, lse, causal=True)
    for got, want in zip(grads, (qv.grad, kv.grad, vv.grad)):
        np.testing.assert_allclose(host(got.values), want.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_without_keys_output_zero_beside_infinite_values(rng, backend):
    # An inf in v (of a key some other row sees) stays out of the rows that see no key: 0, not 0 x inf.
    len_q, len_k = [5], [2]
    (qn, kn, vn), _ = make_qkv(rng, (len_q, len_k, 2, 1, 4, 4), "numpy")
    vn[0, 0, 0] = np.inf
    q, k, v = (as_array(a, ln, backend) for a, ln in ((qn, len_q), (kn, len_k), (vn, len_k)))
    o = host(varlen_attention(q, k, v, causal=True).values)
    assert np.all(o[:3] == 0.0) and np.isinf(o[3:, :, 0]).all()


# ---- bad input: typed errors ----------------------------------------------------------------------

def _arrays(rng, len_q=(2, 3), len_k=(2, 3), Hq=2, Hk=1, D=4, Dk=None, Dv=4, Hv=None,
            len_v=None, dtypes=(np.float64,) * 3):
    q = scree.from_lengths(packed(rng, len_q, Hq, D, dtypes[0]), list(len_q))
    k = scree.from_lengths(packed(rng, len_k, Hk, D if Dk is None else Dk, dtypes[1]), list(len_k))
    len_v = len_k if len_v is None else len_v
    v = scree.from_lengths(packed(rng, len_v, Hk if Hv is None else Hv, Dv, dtypes[2]), list(len_v))
    return q, k, v


@pytest.mark.parametrize("bad", [
    dict(len_k=(2, 3, 1), len_v=(2, 3, 1)),  # number of sequences differs
    dict(len_v=(3, 2)),                      # k and v lengths differ
    dict(Hq=3, Hk=2),                        # Hq % Hk != 0
    dict(Hv=2),                              # k and v head counts differ
    dict(Dk=5),                              # q and k head dims differ
], ids=["n_seq", "kv_lengths", "heads_ratio", "kv_heads", "head_dim"])
def test_shape_errors(rng, bad):
    q, k, v = _arrays(rng, **bad)
    with pytest.raises(scree.ShapeError):
        varlen_attention(q, k, v)


def test_two_dimensional_values_mixed_with_three_dimensional_rejected(rng):
    q, k, v = _arrays(rng)
    flat = scree.from_lengths(rng.standard_normal((5, 8)), [2, 3])
    with pytest.raises(scree.ShapeError):
        varlen_attention(flat, k, v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_dimensional_values_mean_one_head(rng, backend):
    # The quickstart's (T, D) Arrays: same result as (T, 1, D), head axis dropped again.
    lengths = [4, 0, 2, 7]
    (qn, kn, vn), (q, k, v) = make_qkv(rng, (lengths, lengths, 1, 1, 8, 8), backend)
    flat = [as_array(x[:, 0], lengths, backend) for x in (qn, kn, vn)]
    out3, lse3 = varlen_attention(q, k, v, causal=True, return_lse=True)
    out2, lse2 = varlen_attention(*flat, causal=True, return_lse=True)
    assert tuple(out2.values.shape) == (13, 8) and tuple(lse2.shape) == (13,)
    np.testing.assert_array_equal(host(out2.values), host(out3.values)[:, 0])
    np.testing.assert_array_equal(host(lse2), host(lse3)[0])


@pytest.mark.parametrize("dtypes", [
    (np.float32, np.float64, np.float64),
    (np.float64, np.float64, np.float32),
    (np.int64, np.int64, np.int64),
], ids=["q_vs_k", "k_vs_v", "integer"])
def test_dtype_errors(rng, dtypes):
    if dtypes[0] is np.int64:
        q, k, v = (scree.from_lengths(np.arange(1, 21).reshape(5, 1, 4), [2, 3]) for _ in range(3))
    else:
        q, k, v = _arrays(rng, dtypes=dtypes)
    with pytest.raises(scree.DTypeError) as info:
        varlen_attention(q, k, v)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("window", [(-2, 0), (0, -3), (1,), (1, 2, 3), (1.5, 0), (True, 0), "ab", 4])
def test_bad_window(rng, window):
    q, k, v = _arrays(rng)
    with pytest.raises(scree.ArgumentError) as info:
        varlen_attention(q, k, v, window=window)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("window", [(True, 0), (1.0, 0)])
def test_bad_window_after_its_equal_good_one(rng, window):
    """The option cache: (True, 0) and (1.0, 0) equal (1, 0) as keys, yet raise after it was used."""
    q, k, v = _arrays(rng)
    varlen_attention(q, k, v, window=(1, 0))
    with pytest.raises(scree.ArgumentError):
        varlen_attention(q, k, v, window=window)


@pytest.mark.parametrize("kw", [
    dict(softcap=-1.0), dict(softcap=float("nan")), dict(softcap=float("inf")), dict(softcap="x"),
    dict(scale=float("nan")), dict(scale=float("inf")), dict(scale="x"),
])
def test_bad_softcap_and_scale(rng, kw):
    q, k, v = _arrays(rng)
    with pytest.raises(scree.ArgumentError):
        varlen_attention(q, k, v, **kw)


def test_raw_arrays_and_mixed_backends_rejected(rng):
    q, k, v = _arrays(rng)
    with pytest.raises(TypeError, match="scree.Array"):
        varlen_attention(q.values, k, v)
    if torch is not None:
        with pytest.raises(scree.BackendError):
            varlen_attention(q, k.to("torch"), v)

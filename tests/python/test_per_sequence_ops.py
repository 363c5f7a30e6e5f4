"""Per-sequence reductions and the softmax family over tokens (issue 15): sum, mean, max, min, prod,
any, all, argmax, argmin, logsumexp, var, std, softmax, log_softmax on every backend installed
here, against a NumPy float64 loop over the sequences written here and against
scree.kernels.reference; the C++ kernels (NumPy and torch CPU) against the reference on the same
inputs; empty sequences' identities; NaN and infinities; gradients through torch autograd, jax.grad
under jit, and mx.grad."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from cases import host, native
from scree.kernels import reference as R

LENGTHS = [3, 0, 1, 6, 2]  # an empty sequence, a single token
N, TOTAL, F = len(LENGTHS), sum(LENGTHS), 4
OFFSETS = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)
BACKENDS = ["numpy", "torch", "jax", "mlx"]
FLOAT_OPS = ["sum", "mean", "max", "min", "prod", "any", "all", "argmax", "argmin", "logsumexp", "var", "std"]


def _oracle(x: np.ndarray, op: str, ddof: int = 0) -> np.ndarray:
    """One sequence (len, F) in float64 (integers as they are), NumPy's semantics, the documented
    identities for an empty one."""
    if x.dtype.kind == "f":
        x = x.astype(np.float64)
    empty = len(x) == 0
    if op == "sum":
        return x.sum(0, dtype=np.int64 if x.dtype.kind in "biu" else None)
    if op == "prod":
        return x.prod(0, dtype=np.int64 if x.dtype.kind in "biu" else None)
    if op == "mean":
        return np.full(x.shape[1:], np.nan) if empty else x.mean(0)
    if op in ("max", "min"):
        if empty:
            if x.dtype == np.bool_:
                return np.full(x.shape[1:], op == "min")
            if x.dtype.kind == "f":
                return np.full(x.shape[1:], -np.inf if op == "max" else np.inf)
            info = np.iinfo(x.dtype)
            return np.full(x.shape[1:], info.min if op == "max" else info.max, dtype=x.dtype)
        return x.max(0) if op == "max" else x.min(0)
    if op == "any":
        return (x != 0).any(0)
    if op == "all":
        return (x != 0).all(0)
    if op in ("argmax", "argmin"):
        return np.full(x.shape[1:], -1) if empty else (np.argmax(x, 0) if op == "argmax" else np.argmin(x, 0))
    if op == "logsumexp":
        if empty:
            return np.full(x.shape[1:], -np.inf)
        m = x.max(0)
        m = np.where(np.isfinite(m), m, 0)
        with np.errstate(divide="ignore"):
            return np.log(np.exp(x - m).sum(0)) + m
    if op in ("var", "std"):
        if len(x) <= ddof:
            return np.full(x.shape[1:], np.nan)
        return x.var(0, ddof=ddof) if op == "var" else x.std(0, ddof=ddof)
    raise AssertionError(op)


def _loop(values: np.ndarray, op: str, ddof: int = 0) -> np.ndarray:
    return np.stack([_oracle(values[OFFSETS[i]:OFFSETS[i + 1]], op, ddof) for i in range(N)])


def _softmax_loop(values: np.ndarray, log: bool) -> np.ndarray:
    out = []
    for i in range(N):
        x = values[OFFSETS[i]:OFFSETS[i + 1]].astype(np.float64)
        if len(x):
            lse = _oracle(x, "logsumexp")
            out.append(x - lse if log else np.exp(x - lse))
    return np.concatenate(out) if out else np.zeros((0, F))


def _close(got, want, dtype: str) -> None:
    got = host(got)
    tol = {"float32": 1e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}.get(dtype, 0)
    if got.dtype.kind == "f" or np.asarray(want).dtype.kind == "f":
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", FLOAT_OPS)
def test_float_reductions(backend, op, rng):
    v = rng.standard_normal((TOTAL, F)).astype(np.float32)
    v[rng.random(v.shape) < 0.1] = 0.0  # some zeros for any / all
    a = scree.from_offsets(native(backend, v), native(backend, OFFSETS))
    got = getattr(a, op)()
    _close(got, _loop(v, op), "float32")
    _close(R.reduce(a, op), _loop(v, op), "float32")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_other_float_dtypes_cpp_against_reference(backend, dtype, rng):
    if backend == "numpy" and dtype == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    torch = pytest.importorskip("torch")
    v = rng.standard_normal((TOTAL, F))
    vals = torch.tensor(v).to(getattr(torch, dtype)) if backend == "torch" else v.astype(dtype)
    a = scree.from_offsets(vals, native(backend, OFFSETS))
    exact = host(a.to("torch").values.double()) if backend == "torch" else v.astype(dtype).astype(np.float64)
    for op in ["sum", "mean", "max", "min", "prod", "logsumexp", "var", "std", "argmax"]:
        _close(getattr(a, op)(), _loop(exact, op), dtype)
    for log in (False, True):
        _close((a.log_softmax() if log else a.softmax()).values, _softmax_loop(exact, log), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_and_bool_reductions(backend, rng):
    v = rng.integers(-3, 4, (TOTAL, F)).astype(np.int32)
    a = scree.from_offsets(native(backend, v), native(backend, OFFSETS))
    for op in ["sum", "max", "min", "prod", "any", "all", "argmax", "argmin"]:
        _close(getattr(a, op)(), _loop(v, op), "int32")
    b = scree.from_offsets(native(backend, v > 0), native(backend, OFFSETS))
    for op in ["sum", "max", "min", "any", "all", "argmax", "argmin"]:
        _close(getattr(b, op)(), _loop(v > 0, op), "bool")
    with pytest.raises(scree.DTypeError, match="floating"):
        a.logsumexp()
    with pytest.raises(scree.DTypeError, match="floating"):
        a.softmax()


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_family(backend, rng):
    v = (3 * rng.standard_normal((TOTAL, F))).astype(np.float32)
    a = scree.from_offsets(native(backend, v), native(backend, OFFSETS))
    for log in (False, True):
        got = a.log_softmax() if log else a.softmax()
        assert isinstance(got, scree.Array) and got._layout is a._layout
        _close(got.values, _softmax_loop(v, log), "float32")
        _close(R.softmax(a, log).values, _softmax_loop(v, log), "float32")
    sums = host(a.softmax().sum())
    np.testing.assert_allclose(sums[np.array(LENGTHS) > 0], 1.0, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups", [1, 5])
def test_non_finite_columns(backend, groups):
    # one sequence of 3 tokens; columns: all -inf, one +inf, one NaN, large values (exp overflows
    # without the shift); 5 groups = 20 columns: the C++ kernel's exponentials of 4 vectors at a
    # time (16 floats in its SSE2 build) see them as well as its one-vector tail
    v = np.tile(np.array([[-np.inf, 1.0, np.nan, 1000.0],
                          [-np.inf, np.inf, 2.0, 999.0],
                          [-np.inf, 0.0, 3.0, 998.0]], np.float32), (1, groups))
    a = scree.from_offsets(native(backend, v), native(backend, np.array([0, 3], np.int64)))
    lse_all, sm_all = host(a.logsumexp())[0], host(a.softmax().values)
    for g in range(groups):
        lse, sm = lse_all[4 * g:4 * g + 4], sm_all[:, 4 * g:4 * g + 4]
        assert lse[0] == -np.inf and lse[1] == np.inf and np.isnan(lse[2])
        np.testing.assert_allclose(lse[3], 1000 + np.log(1 + np.exp(-1) + np.exp(-2)), rtol=1e-6)
        assert np.isnan(sm[:, 0]).all() and np.isnan(sm[:, 2]).all()
        np.testing.assert_allclose(sm[:, 3].sum(), 1.0, rtol=1e-6)
    assert host(a.argmax())[0, 2] == 0  # the NaN, as np.argmax
    assert np.isnan(host(a.max())[0, 2]) and np.isnan(host(a.min())[0, 2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_var_ddof(backend, rng):
    v = rng.standard_normal((TOTAL, F)).astype(np.float32)
    a = scree.from_offsets(native(backend, v), native(backend, OFFSETS))
    for ddof in (0, 1, 2):
        _close(a.var(ddof=ddof), _loop(v, "var", ddof), "float32")
        _close(a.std(ddof=ddof), _loop(v, "std", ddof), "float32")
    with pytest.raises(scree.ArgumentError, match="ddof"):
        a.var(ddof=-1)
    with pytest.raises(scree.ArgumentError, match="ddof"):
        a.std(ddof=0.5)


def test_torch_gradients(rng):
    torch = pytest.importorskip("torch")
    v = torch.tensor(rng.standard_normal((TOTAL, F)), requires_grad=True)
    a = scree.from_offsets(v, torch.tensor(OFFSETS))
    w = torch.tensor(rng.standard_normal((TOTAL, F)))
    nonempty = [i for i in range(N) if LENGTHS[i]]

    def per_sequence(x):
        segs = [x[OFFSETS[i]:OFFSETS[i + 1]] for i in nonempty]
        return (sum((torch.softmax(s, 0) * w[OFFSETS[i]:OFFSETS[i + 1]]).sum() for s, i in zip(segs, nonempty))
                + sum(torch.logsumexp(s, 0).sum() for s in segs)
                + sum(s.var(0, unbiased=False).sum() for s in segs if len(s) > 0)
                + sum(s.amax(0).sum() + s.prod(0).sum() for s in segs))

    mine = ((a.softmax() * w).values.sum() + a.logsumexp()[nonempty].sum() + a.var()[nonempty].sum()
            + a.max()[nonempty].sum() + a.prod()[nonempty].sum())
    torch.testing.assert_close(mine, per_sequence(v))
    g, = torch.autograd.grad(mine, v)
    g_ref, = torch.autograd.grad(per_sequence(v), v)
    torch.testing.assert_close(g, g_ref)


def test_jax_jit_and_grad(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    v = jnp.asarray(rng.standard_normal((TOTAL, F)).astype(np.float32))
    a = scree.from_offsets(v, jnp.asarray(OFFSETS))

    @jax.jit
    def stats(arr):
        return arr.logsumexp(), arr.softmax().values, arr.var(), arr.argmax(), arr.min()

    lse, sm, var, am, mn = stats(a)
    host = np.asarray(v)
    _close(lse, _loop(host, "logsumexp"), "float32")
    _close(sm, _softmax_loop(host, False), "float32")
    _close(var, _loop(host, "var"), "float32")
    _close(am, _loop(host, "argmax"), "int64")
    _close(mn, _loop(host, "min"), "float32")
    g = jax.grad(lambda x: jnp.sum(a.with_values(x).logsumexp()[np.array(LENGTHS) > 0]))(v)
    _close(g, _softmax_loop(host, False), "float32")  # d logsumexp / dx = softmax


def test_mlx_grad(rng):
    mx = pytest.importorskip("mlx.core")
    host = rng.standard_normal((TOTAL, F)).astype(np.float32)
    a = scree.from_offsets(mx.array(host), mx.array(OFFSETS))
    keep = mx.array(np.array(LENGTHS) > 0)
    g = mx.grad(lambda x: mx.sum(mx.where(keep[:, None], a.with_values(x).logsumexp(), 0.0)))(a.values)
    _close(g, _softmax_loop(host, False), "float32")


@pytest.mark.cuda
def test_torch_cuda_matches_cpu(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    v = rng.standard_normal((TOTAL, F)).astype(np.float32)
    cpu = scree.from_offsets(torch.from_numpy(v), torch.tensor(OFFSETS))
    gpu = scree.from_offsets(torch.from_numpy(v).cuda(), torch.tensor(OFFSETS).cuda())
    for op in FLOAT_OPS:
        np.testing.assert_allclose(host(getattr(gpu, op)()), host(getattr(cpu, op)()), rtol=1e-5, atol=1e-6,
                                   err_msg=op)
    for log in (False, True):
        got = gpu.log_softmax() if log else gpu.softmax()
        want = cpu.log_softmax() if log else cpu.softmax()
        np.testing.assert_allclose(host(got.values), host(want.values), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(host(gpu[:, 1:3].values), host(cpu[:, 1:3].values))
    np.testing.assert_array_equal(host(scree.cat([gpu, gpu]).values), host(scree.cat([cpu, cpu]).values))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
def test_cumsum(backend, dtype, rng):
    v = rng.standard_normal((TOTAL, F))
    v = (v > 0) if dtype == "bool" else (3 * v).astype(dtype)
    a = scree.from_offsets(native(backend, v), native(backend, OFFSETS))
    want = np.concatenate([np.cumsum(v[OFFSETS[i]:OFFSETS[i + 1]].astype(np.float64 if dtype == "float32" else np.int64),
                                     axis=0) for i in range(N)])
    for got in (a.cumsum(), R.cumsum(a)):
        assert isinstance(got, scree.Array) and got._layout is a._layout
        if dtype != "float32":
            assert np.dtype(str(got.values.dtype).replace("torch.", "").replace("mlx.core.", "")) == np.int64 \
                or backend == "jax"  # (JAX without x64: int32)
        _close(got.values, want, "float32" if dtype == "float32" else "int64")


def test_cumsum_gradient(rng):
    torch = pytest.importorskip("torch")
    v = torch.tensor(rng.standard_normal((TOTAL, F)), requires_grad=True)
    a = scree.from_offsets(v, torch.tensor(OFFSETS))
    g, = torch.autograd.grad(a.cumsum().values.sum(), v)
    # d/dx_t of sum of running sums = the tokens from t to the end of t's sequence
    want = np.concatenate([np.arange(n, 0, -1) for n in LENGTHS]).astype(np.float64)
    np.testing.assert_array_equal(g[:, 0].numpy(), want)

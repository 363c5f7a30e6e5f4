"""Elementwise math on Arrays (issue 15): Python operators, NumPy ufuncs, torch functions, on every
backend installed here, against scree.kernels.reference.elementwise (the same operation computed
sequence by sequence). Operands: scalars, feature-level arrays, token-level arrays, per-sequence
arrays, broadcast rows and Arrays over the same offsets; typed errors for different layouts,
shapes that fit neither reading, other frameworks; autograd through torch, JAX (grad, jit, vmap)
and MLX."""

from __future__ import annotations

import operator

import numpy as np
import pytest

import scree
from cases import host, native
from scree.kernels import reference as R

LENGTHS = [3, 0, 1, 5, 2]  # an empty sequence, a single token, n (5) != total (11)
N, TOTAL, H, D = len(LENGTHS), sum(LENGTHS), 2, 3
OFFSETS = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)


def _array(backend: str, values: np.ndarray) -> scree.Array:
    return scree.from_offsets(native(backend, values), native(backend, OFFSETS))


def _rand(rng, *shape, low=0.5, high=2.0) -> np.ndarray:
    # positive and away from 0, so division, pow and mod are well defined everywhere
    return rng.uniform(low, high, shape).astype(np.float32)


BACKENDS = ["numpy", "torch", "jax", "mlx"]
OPS = ["add", "sub", "mul", "truediv", "pow", "lt", "ge", "eq", "ne"]
OPERANDS = ["scalar", "feature", "token", "per_sequence", "row", "array"]


def _operand(kind: str, backend: str, rng, arr: scree.Array):
    if kind == "scalar":
        return 1.5
    if kind == "feature":
        return native(backend, _rand(rng, H, D))
    if kind == "token":
        return native(backend, _rand(rng, TOTAL, H, D))
    if kind == "per_sequence":
        return native(backend, _rand(rng, N, H, D))
    if kind == "row":
        return native(backend, _rand(rng, 1, 1, D))
    return arr.with_values(native(backend, _rand(rng, TOTAL, H, D)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", OPERANDS)
def test_operator_matches_reference(backend, op, kind, rng):
    a = _array(backend, _rand(rng, TOTAL, H, D))
    x = _operand(kind, backend, rng, a)
    fn = getattr(operator, op)
    got = fn(a, x)
    want = R.elementwise(fn, a, x)
    assert isinstance(got, scree.Array) and got._layout is a._layout
    np.testing.assert_array_equal(got.host_offsets, want.host_offsets)
    np.testing.assert_allclose(host(got), host(want), rtol=1e-6)
    if backend == "mlx" and kind not in ("scalar", "array"):
        # MLX's operators do not defer to the right operand (documented limitation): arithmetic
        # raises, == and != compare the objects
        if op not in ("eq", "ne"):
            with pytest.raises(ValueError):
                fn(x, a)
    elif kind != "array":  # reflected: x <op> a
        got_r = fn(x, a)
        want_r = R.elementwise(lambda u, v: fn(v, u), a, x)
        assert isinstance(got_r, scree.Array)
        np.testing.assert_allclose(host(got_r), host(want_r), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_and_bool_operators(backend, rng):
    v = rng.integers(1, 50, (TOTAL, 4)).astype(np.int32)
    a = _array(backend, v)
    per_seq = native(backend, rng.integers(1, 7, (N, 4)).astype(np.int32))
    for fn in (operator.floordiv, operator.mod, operator.and_, operator.or_, operator.xor):
        np.testing.assert_array_equal(host(fn(a, per_seq)), host(R.elementwise(fn, a, per_seq)))
    np.testing.assert_array_equal(host(-a), -v)
    np.testing.assert_array_equal(host(abs(-a)), v)
    np.testing.assert_array_equal(host(~(a > 10)), ~(v > 10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_expand_repeats_each_sequence_row(backend, rng):
    a = _array(backend, _rand(rng, TOTAL, H, D))
    for shape in [(N,), (N, D), (N, H, D)]:
        per_seq = native(backend, _rand(rng, *shape))
        got = a.expand(per_seq)
        want = R.expand(a, per_seq)
        assert tuple(got.shape) == (TOTAL, *(1,) * (3 - len(shape)), *shape[1:])
        np.testing.assert_array_equal(host(got), host(want))
    # a per-sequence scale of shape (n,) through expand, against a loop over the sequences
    s = _rand(rng, N)
    scaled = a * a.expand(native(backend, s))
    for i, seq in enumerate(scaled):
        np.testing.assert_allclose(host(seq), host(a[i]) * s[i], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_and_shape_errors(backend, rng):
    a = _array(backend, _rand(rng, TOTAL, H, D))
    other_lengths = [2, 1, 1, 5, 2]  # same n and total, different sequences
    b = scree.from_lengths(native(backend, _rand(rng, TOTAL, H, D)), other_lengths)
    with pytest.raises(scree.ShapeError, match=r"different layouts.*lengths \[3, 0, 1, 5, 2\].*\[2, 1, 1, 5, 2\]"):
        a + b
    with pytest.raises(scree.ShapeError, match="first axis"):
        a + native(backend, _rand(rng, 4, H, D))
    with pytest.raises(scree.ShapeError, match="more axes"):
        a * native(backend, _rand(rng, 1, TOTAL, H, D))
    flat = _array(backend, _rand(rng, TOTAL, D))
    with pytest.raises(scree.ShapeError, match="token axis"):
        flat.__rmatmul__(native(backend, _rand(rng, D, TOTAL)))  # (D, D): the token axis is gone
    with pytest.raises(scree.BackendError):
        a + "text"
    with pytest.raises(scree.ArgumentError, match="ambiguous"):
        bool(a == a)
    assert len({a, a, b}) == 2  # hashable by identity, as torch tensors


def test_other_framework_operand_is_a_backend_error(rng):
    torch = pytest.importorskip("torch")
    a = _array("numpy", _rand(rng, TOTAL, H, D))
    with pytest.raises(scree.BackendError, match="torch"):
        a + torch.ones(TOTAL, H, D)


def test_numpy_ufuncs(rng):
    a = _array("numpy", _rand(rng, TOTAL, H, D))
    per_seq = _rand(rng, N, H, D)
    for got, want in [(np.exp(a), R.elementwise(np.exp, a)), (np.add(a, per_seq), R.elementwise(np.add, a, per_seq)),
                      (per_seq * a, R.elementwise(lambda u, v: v * u, a, per_seq)),
                      (np.maximum(a, 1.0), R.elementwise(np.maximum, a, 1.0))]:
        assert isinstance(got, scree.Array) and got._layout is a._layout
        np.testing.assert_allclose(got.values, want.values, rtol=1e-6)
    mant, expo = np.frexp(a)  # a ufunc with two outputs: two Arrays
    np.testing.assert_array_equal(np.ldexp(mant, expo).values, a.values)
    with pytest.raises(scree.UnsupportedError, match="mix its sequences"):
        np.add.reduce(a)
    with pytest.raises(scree.UnsupportedError, match="immutable"):
        np.exp(a, out=np.empty_like(a.values))


def test_numpy_ufunc_on_other_frameworks(rng):
    a = _array("torch", _rand(rng, TOTAL, H, D))
    x = _rand(rng, H, D)
    with pytest.raises(scree.BackendError, match="torch"):
        np.exp(a)
    with pytest.raises(scree.BackendError, match="numpy array but values is a torch"):
        x + a  # frameworks do not mix (as with_values)
    j = _array("jax", _rand(rng, TOTAL, H, D))  # JAX takes NumPy operands, as jnp functions do
    got = x + j
    assert isinstance(got, scree.Array) and got.backend == "jax"
    np.testing.assert_allclose(host(got), x + host(j), rtol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_torch_functions_and_autograd(device, rng):
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    F = torch.nn.functional
    v = torch.tensor(_rand(rng, TOTAL, H, D), device=device, requires_grad=True)
    s = torch.tensor(_rand(rng, N, H, D), device=device, requires_grad=True)
    W = torch.tensor(_rand(rng, D, 4), device=device, requires_grad=True)
    a = scree.from_offsets(v, torch.tensor(OFFSETS, device=device))
    for got, want in [(torch.exp(a), R.elementwise(torch.exp, a)), (F.gelu(a), R.elementwise(F.gelu, a)),
                      (torch.where(a > 1, a, -a), R.elementwise(lambda u: torch.where(u > 1, u, -u), a))]:
        assert isinstance(got, scree.Array) and got._layout is a._layout
        torch.testing.assert_close(got.values, want.values)
    torch.testing.assert_close((a @ W).values, v @ W)
    torch.testing.assert_close(F.linear(a, W.T).values, v @ W)
    assert not isinstance(torch.sum(a), scree.Array)  # a reduction over everything: a plain tensor
    # autograd through operators with a per-sequence operand, against the per-sequence reference
    loss = ((F.silu(a) * s + 1) @ W).values.square().sum()
    grads = torch.autograd.grad(loss, (v, s, W))
    ref = R.elementwise(lambda u, w: (F.silu(u) * w + 1) @ W, a, s).values.square().sum()
    for g, r in zip(grads, torch.autograd.grad(ref, (v, s, W))):
        torch.testing.assert_close(g, r)


def test_torch_function_on_other_layouts_and_frameworks(rng):
    torch = pytest.importorskip("torch")
    a = _array("torch", _rand(rng, TOTAL, H, D))
    b = scree.from_lengths(torch.ones(TOTAL, H, D), [2, 1, 1, 5, 2])
    with pytest.raises(scree.ShapeError, match="different layouts"):
        torch.add(a, b)
    with pytest.raises(scree.BackendError, match="numpy"):
        torch.exp(_array("numpy", _rand(rng, TOTAL, H, D)))


def test_jax_jit_grad_vmap(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    a = _array("jax", _rand(rng, TOTAL, H, D))
    s = jnp.asarray(_rand(rng, N, H, D))

    @jax.jit
    def f(arr, per_seq):
        return (arr * per_seq + 1.0) / (arr + 2.0)

    got = f(a, s)
    want = R.elementwise(lambda u, w: (u * w + 1.0) / (u + 2.0), a, s)
    np.testing.assert_allclose(host(got), host(want), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(got.offsets), OFFSETS)

    def loss(values, per_seq):
        return jnp.sum((a.with_values(values) * per_seq).values ** 2)

    gv, gs = jax.grad(loss, argnums=(0, 1))(a.values, s)
    seg = np.repeat(np.arange(N), LENGTHS)
    vs = np.asarray(a.values) * np.asarray(s)[seg]
    np.testing.assert_allclose(np.asarray(gv), 2 * vs * np.asarray(s)[seg], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gs), np.stack([np.sum(2 * vs[seg == i] * np.asarray(a.values)[seg == i],
                                                                axis=0) for i in range(N)]), rtol=1e-5)
    # vmap over a batch of value sets sharing one layout (the offsets are not mapped)
    batch = jnp.asarray(_rand(rng, 3, TOTAL, H, D))
    out = jax.vmap(lambda vals: (a.with_values(vals) * 2.0 + a).values)(batch)
    np.testing.assert_allclose(np.asarray(out), np.asarray(batch) * 2 + np.asarray(a.values)[None], rtol=1e-6)


def test_mlx_grad(rng):
    mx = pytest.importorskip("mlx.core")
    a = _array("mlx", _rand(rng, TOTAL, H, D))
    s = mx.array(_rand(rng, N, H, D))

    def loss(values):
        return mx.sum((a.with_values(values) * s).values ** 2)

    g = mx.grad(loss)(a.values)
    seg = np.repeat(np.arange(N), LENGTHS)
    sv = np.asarray(s)[seg]
    np.testing.assert_allclose(np.asarray(g), 2 * np.asarray(a.values) * sv * sv, rtol=1e-5)


def test_empty_batch(rng):
    a = scree.from_offsets(np.zeros((0, D), np.float32), np.zeros(1, np.int64))
    got = a * 2.0 + np.ones(D, np.float32)
    assert isinstance(got, scree.Array) and got.values.shape == (0, D) and got.num_sequences == 0
    np.testing.assert_array_equal(R.elementwise(lambda u: u * 2.0 + 1.0, a).values, got.values)

"""`deterministic=` of scree.varlen_attention reaches the backward kernel on every road: torch's
eager autograd.Function and its custom ops under torch.compile, NumPy's varlen_attention_backward,
MLX's vjp (each observed on the scree._C.AttentionArgs the real backward receives), and JAX's
custom_vjp (the attribute of the FFI call in the traced backward). None means the rule
(SCREE_DETERMINISTIC=1 or the framework's switch), read when the backward runs. On a GPU (marked
cuda) deterministic=True alone makes repeated gradients bit-identical."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from scree import _C

LENS = [5, 0, 9]


@pytest.fixture
def seen(monkeypatch):
    """The AttentionArgs of every scree._C.varlen_bwd call (the real kernel still runs)."""
    calls: list = []
    real = _C.varlen_bwd

    def spy(*args, **kwargs):
        calls.append(args[11])
        return real(*args, **kwargs)

    monkeypatch.setattr(_C, "varlen_bwd", spy)
    monkeypatch.delenv("SCREE_DETERMINISTIC", raising=False)
    return calls


def _numpy_arrays(rng):
    return [scree.from_lengths(rng.standard_normal((sum(LENS), 2, 8)).astype(np.float32), LENS) for _ in range(3)]


@pytest.mark.parametrize("choice, env, want", [(True, None, True), (False, "1", False), (None, "1", True),
                                              (None, None, False)])
def test_numpy_backward(seen, monkeypatch, choice, env, want):
    if env is not None:
        monkeypatch.setenv("SCREE_DETERMINISTIC", env)
    q, k, v = _numpy_arrays(np.random.default_rng(0))
    out, lse = scree.varlen_attention(q, k, v, causal=True, return_lse=True)
    scree.varlen_attention_backward(out.values, q, k, v, out, lse, causal=True, deterministic=choice)
    assert [a.deterministic for a in seen] == [want]


def test_bad_value_is_an_argument_error():
    q, k, v = _numpy_arrays(np.random.default_rng(0))
    with pytest.raises(scree.ArgumentError, match="deterministic"):
        scree.varlen_attention(q, k, v, deterministic="yes")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("choice", [True, False, None])
def test_torch_autograd(seen, monkeypatch, compiled, choice):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("SCREE_DETERMINISTIC", "1")  # what None resolves to, when the backward runs
    q, k, v = (scree.from_lengths(torch.randn(sum(LENS), 2, 8), LENS) for _ in range(3))

    def loss(qv, kv, vv):
        out = scree.varlen_attention(q.with_values(qv), k.with_values(kv), v.with_values(vv), causal=True,
                                     deterministic=choice)
        return (out.values ** 2).sum()

    if compiled:
        torch._dynamo.reset()
        loss = torch.compile(loss, fullgraph=True, backend="aot_eager")
    leaves = [a.values.clone().requires_grad_(True) for a in (q, k, v)]
    loss(*leaves).backward()
    assert [a.deterministic for a in seen] == [True if choice is None else choice]


@pytest.mark.parametrize("choice", [True, None])
def test_mlx_vjp(seen, choice):
    mx = pytest.importorskip("mlx.core")
    rng = np.random.default_rng(1)
    q, k, v = (scree.from_lengths(mx.array(rng.standard_normal((sum(LENS), 2, 8)).astype(np.float32)), LENS)
               for _ in range(3))

    def loss(qv):
        return (scree.varlen_attention(q.with_values(qv), k, v, causal=True, deterministic=choice).values ** 2).sum()

    mx.eval(mx.grad(loss)(q.values))
    assert [a.deterministic for a in seen] == [bool(choice)]


@pytest.mark.parametrize("choice", [True, False])
def test_jax_custom_vjp(choice):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(2)
    # Under make_jaxpr the call goes where JAX's default backend is: on a GPU, a dtype and head dim
    # the CUDA kernels serve (float32 there would take the reference, with no FFI call to inspect).
    gpu = jax.default_backend() in ("gpu", "cuda")
    dtype, dim = (jnp.bfloat16, 64) if gpu else (jnp.float32, 8)
    q, k, v = (scree.from_lengths(jnp.asarray(rng.standard_normal((sum(LENS), 2, dim)), dtype), LENS)
               for _ in range(3))

    def loss(qv):
        out = scree.varlen_attention(q.with_values(qv), k, v, causal=True, deterministic=choice).values
        return jnp.sum(out.astype(jnp.float32) ** 2)

    text = str(jax.make_jaxpr(jax.grad(loss))(q.values))
    calls = text.split("ffi_call[")[1:]  # each FFI call's parameters, attributes included
    bwd = [c for c in calls if "target_name=scree_varlen_bwd" in c]
    assert len(bwd) == 1 and f"('deterministic', {choice})" in bwd[0], text


@pytest.mark.cuda
def test_cuda_deterministic_true_alone_is_bit_identical():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not _C.cuda_head_dims():
        pytest.skip("no CUDA device or no CUDA attention kernels in this build")
    d = _C.cuda_head_dims()[-1]
    lens = [1000, 1, 333]
    gen = torch.Generator(device="cuda").manual_seed(3)
    arrays = [scree.from_lengths(torch.randn(sum(lens), 8, d, device="cuda", dtype=torch.bfloat16, generator=gen),
                                 lens) for _ in range(3)]
    dout = torch.randn(sum(lens), 8, d, device="cuda", dtype=torch.bfloat16, generator=gen)

    def grads():
        leaves = [a.values.clone().requires_grad_(True) for a in arrays]
        out = scree.varlen_attention(*(a.with_values(x) for a, x in zip(arrays, leaves)), causal=True,
                                     deterministic=True)
        return torch.autograd.grad(out.values, leaves, dout)

    first, second = grads(), grads()
    for name, a, b in zip(("dq", "dk", "dv"), first, second):
        assert torch.equal(a, b), f"{name} differs between two deterministic runs"

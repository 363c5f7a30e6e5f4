"""Regression tests for the crashes and silent wrong answers of issue 14 (each reproduced alone at
5e160dc or later): every case must now give the right answer or a typed scree error naming the
culprit. Cases that could kill the process (aborts, SIGFPE) run in a child process, so a
regression fails this test instead of taking pytest down."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import scree
from scree.kernels.reference import varlen_attention as reference


def run_child(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def assert_child_ok(code: str) -> str:
    p = run_child(code)
    assert p.returncode == 0, f"child exited with {p.returncode}:\n{p.stderr[-2000:]}"
    return p.stdout


def test_reversed_numpy_view_to_torch_and_nested():
    """A negative-stride NumPy view went to torch through DLPack and aborted the process."""
    pytest.importorskip("torch")
    out = assert_child_ok("""
        import numpy as np, scree, torch
        from scree import bridges
        v = np.arange(12.).reshape(6, 2)[::-1]
        a = scree.from_offsets(v, np.array([0, 2, 6]))
        t = a.to("torch")
        assert torch.equal(t.values, torch.from_numpy(v.copy()))
        nt = bridges.to_torch_nested(a)
        assert torch.equal(nt.values(), torch.from_numpy(v.copy()))
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("op", ["to_padded", "mean", "sum", "max"])
def test_mlx_zero_size_feature(op):
    """MLX values with a zero-size feature dimension died with SIGFPE in scatter."""
    pytest.importorskip("mlx.core")
    out = assert_child_ok(f"""
        import mlx.core as mx, numpy as np, scree
        a = scree.from_lengths(mx.zeros((5, 3, 0)), [2, 3])
        r = a.{op}()
        r = r[0] if isinstance(r, tuple) else r
        mx.eval(r)
        print(tuple(r.shape))
    """)
    assert out.strip() == ("(2, 3, 3, 0)" if op == "to_padded" else "(2, 3, 0)")


def test_jax_to_padded_huge_max_length_raises():
    """JAX to_padded(max_length=2**62) aborted inside XLA."""
    pytest.importorskip("jax")
    out = assert_child_ok("""
        import jax.numpy as jnp, scree
        a = scree.from_lengths(jnp.zeros((3, 2)), [1, 2])
        try:
            a.to_padded(max_length=2**62)
        except scree.ArgumentError as e:
            print("ArgumentError", "max_length" in str(e))
    """)
    assert out.strip() == "ArgumentError True"


def _qkv(dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = scree.from_lengths(rng.standard_normal((5, 2, 8)).astype(dtype), [2, 3])
    q64 = scree.from_lengths(q.values.astype(np.float64), [2, 3])
    return q, q64


@pytest.mark.parametrize("window", [(0, 2**63 - 1), (2**63 - 1, 2**63 - 1), (2**62, 0), (0, 2**40)])
def test_huge_window_sides_mean_unbounded(window):
    """window=(0, 2**63 - 1) overflowed the kernels' position arithmetic: wrong values, no error."""
    q, q64 = _qkv(np.float32)
    got = scree.varlen_attention(q, q, q, window=window).values
    want = reference(q64, q64, q64, window=window).values
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("softcap", [1e300, 1e20, 1e5, 30.0, 0.5])
def test_softcap_from_tiny_to_huge(dtype, softcap):
    """Large softcaps: tanh's 1 - 2 / (e^2x + 1) form cancelled near 0 (1e5 put 2e-3 on float32
    outputs, 1e20 flattened them, 1e300 made float32 NaN). Backward too (NumPy)."""
    q, q64 = _qkv(dtype)
    out, lse = scree.varlen_attention(q, q, q, softcap=softcap, return_lse=True)
    want = reference(q64, q64, q64, softcap=softcap).values
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.values, want, atol=tol)
    grads = scree.varlen_attention_backward(np.ones_like(out.values), q, q, q, out, lse, softcap=softcap)
    assert all(np.isfinite(g.values).all() for g in grads)


@pytest.mark.parametrize("kw, what", [({"scale": 1e39}, "scale"), ({"softcap": 1e-300}, "softcap"),
                                      ({"softcap": 1e-30, "scale": 1e30}, "softcap")])
def test_scale_and_softcap_outside_float32_raise(kw, what):
    """scale=1e39 on float32 inputs returned NaN: the kernels compute in float32 there."""
    q, _ = _qkv(np.float32)
    with pytest.raises(scree.ArgumentError, match=what):
        scree.varlen_attention(q, q, q, **kw)


def test_scale_beyond_float32_is_fine_on_float64():
    q, q64 = _qkv(np.float64)
    np.testing.assert_allclose(scree.varlen_attention(q, q, q, scale=1e39).values,
                               reference(q64, q64, q64, scale=1e39).values, atol=1e-12)


@pytest.mark.parametrize("lq, lk", [([0, 0], [0, 0]), ([0, 0], [2, 3]), ([2, 3], [0, 0])])
def test_attention_on_empty_numpy_batches(lq, lk):
    """Empty NumPy arrays have strides of 0, which the contiguity check rejected."""
    q = scree.from_lengths(np.zeros((sum(lq), 2, 8), np.float32), lq)
    k = scree.from_lengths(np.zeros((sum(lk), 2, 8), np.float32), lk)
    out, lse = scree.varlen_attention(q, k, k, return_lse=True)
    assert out.values.shape == (sum(lq), 2, 8) and not out.values.any()
    assert (lse == -np.inf).all()
    grads = scree.varlen_attention_backward(out.values, q, k, k, out, lse)
    assert [g.values.shape for g in grads] == [q.values.shape, k.values.shape, k.values.shape]


def test_complex_reductions_raise_and_bool_max_works():
    """complex64 sums came back as int64; bool max raised NumPy's ValueError."""
    a = scree.from_lengths(np.ones((3, 2), np.complex64), [1, 2])
    for op in ("sum", "mean", "max"):
        with pytest.raises(scree.DTypeError, match="complex64"):
            getattr(a, op)()
    b = scree.from_lengths(np.array([[True], [False], [False]]), [1, 2, 0])
    assert np.asarray(b.max()).ravel().tolist() == [True, False, False]


def test_pack_with_none_names_the_sequence():
    with pytest.raises(scree.BackendError, match=r"sequences\[1\]"):
        scree.pack([np.zeros((2, 3)), None])


@pytest.mark.parametrize("validate", [True, False])
def test_zero_d_offsets_raise(validate):
    with pytest.raises(scree.ShapeError, match="1-D"):
        scree.Array(np.zeros((0, 2)), np.array(0), validate=validate)


@pytest.mark.parametrize("bad", [2.5, True, "3"])
def test_non_integer_max_seqlen_raises(bad):
    cu = np.array([0, 4], np.int32)
    with pytest.raises(scree.ArgumentError, match="max_seqlen must be an int"):
        scree.from_cu_seqlens(np.zeros((4, 2)), cu, max_seqlen=bad)
    with pytest.raises(scree.ArgumentError, match="max_seqlen must be an int"):
        scree.from_cu_seqlens(np.zeros((4, 2)), cu, max_seqlen=bad, validate=False)
    with pytest.raises(scree.ArgumentError, match="max_length must be an int"):
        scree.from_lengths(np.zeros((4, 2)), [4]).to_padded(max_length=bad)


def test_lengths_that_overflow_int64_raise():
    """[2**63 - 1, 2**63 - 1, 3] summed (wrapping) to 1 and then segfaulted in max()."""
    with pytest.raises(scree.RaggedError, match="overflow"):
        scree.from_lengths(np.zeros((3, 2)), [2**63 - 1, 2**63 - 1, 3])


def test_cu_seqlens_from_lengths_past_int32_raises():
    from scree.bridges import cu_seqlens_from_lengths
    with pytest.raises(scree.ArgumentError, match="int32"):
        cu_seqlens_from_lengths(np.array([2**31, 5]))


@pytest.mark.parametrize("offsets", [[3, 1, 5], [0, 2, 2**40], [-5, 5], [0, 2**62, 5]])
@pytest.mark.parametrize("op", ["to_padded", "concat", "unpack", "sum"])
def test_validate_false_bad_offsets_never_crash(offsets, op):
    """validate=False with lying host offsets: MLX's scatter has no bounds checks (segfaults), and
    NumPy/torch allocated from offsets[-1] (16 TiB) before the kernels re-checked them. Now a
    RaggedError on every backend (MLX: at construction; others: at the first use)."""
    backends = ["numpy", "torch", "mlx"]
    code = f"""
        import numpy as np, scree
        for fw in {backends!r}:
            try:
                if fw == "torch":
                    import torch; mk, V = (lambda o: torch.tensor(o)), torch.ones(5, 2)
                elif fw == "mlx":
                    import mlx.core as mx; mk, V = (lambda o: mx.array(np.array(o))), mx.ones((5, 2))
                else:
                    mk, V = np.array, np.ones((5, 2), np.float32)
            except ImportError:
                continue
            try:
                a = scree.Array(V, mk({offsets!r}), validate=False)
                {{"to_padded": lambda: a.to_padded(), "concat": lambda: scree.concat_sequences([a, a]),
                  "unpack": lambda: a.unpack(), "sum": lambda: a.sum()}}["{op}"]()
                print(fw, "no error")
            except scree.RaggedError:
                print(fw, "RaggedError")
    """
    out = assert_child_ok(code)
    assert all(line.endswith("RaggedError") for line in out.split("\n") if line), out


def test_fuzz_found_crashes():
    """Found by tools/fuzz (seed 0): a reversed MLX view to torch (abort in torch's DLPack import),
    and torch reductions over lying validate=False offsets with zero-size values (segfault in
    repeat_interleave: the reference path never read host_offsets, so nothing re-checked them)."""
    pytest.importorskip("torch")
    out = assert_child_ok("""
        import numpy as np, scree, torch
        try:
            import mlx.core as mx
            a = scree.from_offsets(mx.arange(6).reshape(3, 2)[::-1], mx.array([0, 1, 3]))
            assert a.to("torch").values.tolist() == [[4, 5], [2, 3], [0, 1]]
        except ImportError:
            pass
        for values, offsets, op in ((torch.zeros(9, 0, dtype=torch.uint64), [0, 2147483646, 9], "max"),
                                    (torch.zeros(0, dtype=torch.uint32), [0, 2147483647, 0], "sum")):
            a = scree.from_offsets(values, torch.tensor(offsets), validate=False)
            try:
                getattr(a, op)()
                print("no error")
            except scree.RaggedError:
                print("RaggedError")
    """)
    assert out.split() == ["RaggedError", "RaggedError"]


def test_zero_d_lengths_raise():
    """A 0-d lengths array was taken as one length (np.ascontiguousarray makes it 1-d); found by tools/fuzz."""
    from scree.bridges import cu_seqlens_from_lengths
    with pytest.raises(scree.ShapeError, match="1-D"):
        scree.from_lengths(np.ones((3, 2)), np.array(3))
    with pytest.raises(scree.ShapeError, match="1-D"):
        cu_seqlens_from_lengths(np.array(3))

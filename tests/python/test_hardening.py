"""Regression tests for the crashes and silent wrong answers of issue 14 (each reproduced alone at
5e160dc or later): every case must now give the right answer or a typed scree error naming the
culprit. Cases that could kill the process (aborts, SIGFPE) run in a child process, so a
regression fails this test instead of taking pytest down."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import scree
from scree import _backends
from scree._backends import dtypes as scree_dtypes
from scree._errors import OutOfMemoryError
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


def test_reversed_numpy_view_to_mlx():
    """A negative-stride NumPy view moved to MLX raised MLX's bare ValueError (tools/fuzz)."""
    mx = pytest.importorskip("mlx.core")
    for v in (np.arange(12.0, dtype=np.float32).reshape(6, 2)[::-1], np.ones(1, np.float32)[::-1],
              np.arange(6.0)[::-2]):
        a = scree.from_offsets(v, np.array([0, 1, v.shape[0]]) if v.shape[0] > 1 else np.array([0, 1]))
        m = a.to("mlx")
        assert isinstance(m.values, mx.array) and str(m.values.dtype).endswith(v.dtype.name)
        np.testing.assert_array_equal(np.array(m.values), v)


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


BAD_OFFSETS = [[3, 1, 5], [0, 2, 2**40], [-5, 5], [0, 2**62, 5]]
BAD_OFFSETS_OPS = ["to_padded", "concat", "unpack", "sum"]
@functools.cache
def bad_offsets_child() -> subprocess.CompletedProcess:
    """Every (offsets, op) case of the test below on every backend in one child process, each line
    `I OP FW outcome` printed (and flushed) as it ends: one interpreter importing torch and MLX
    instead of sixteen (~5 s each on a 2-core CI machine). A case that crashes the child ends it:
    the cases it had not reached then fail too, naming the child's exit."""
    return run_child(f"""
            import numpy as np, scree
            fws = []
            for fw in ["numpy", "torch", "mlx"]:
                try:
                    if fw == "torch":
                        import torch; fws.append((fw, lambda o: torch.tensor(o), torch.ones(5, 2)))
                    elif fw == "mlx":
                        import mlx.core as mx; fws.append((fw, lambda o: mx.array(np.array(o)), mx.ones((5, 2))))
                    else:
                        fws.append((fw, np.array, np.ones((5, 2), np.float32)))
                except ImportError:
                    continue
            for i, offsets in enumerate({BAD_OFFSETS!r}):
                for op in {BAD_OFFSETS_OPS!r}:
                    for fw, mk, V in fws:
                        try:
                            a = scree.Array(V, mk(offsets), validate=False)
                            {{"to_padded": lambda: a.to_padded(), "concat": lambda: scree.concat_sequences([a, a]),
                              "unpack": lambda: a.unpack(), "sum": lambda: a.sum()}}[op]()
                            outcome = "no error"
                        except scree.RaggedError:
                            outcome = "RaggedError"
                        print(i, op, fw, outcome, flush=True)
    """)


@pytest.mark.parametrize("offsets", range(len(BAD_OFFSETS)), ids=[str(o) for o in BAD_OFFSETS])
@pytest.mark.parametrize("op", BAD_OFFSETS_OPS)
def test_validate_false_bad_offsets_never_crash(offsets, op):
    """validate=False with lying host offsets: MLX's scatter has no bounds checks (segfaults), and
    NumPy/torch allocated from offsets[-1] (16 TiB) before the kernels re-checked them. Now a
    RaggedError on every backend (MLX: at construction; others: at the first use)."""
    p = bad_offsets_child()
    lines = [line for line in p.stdout.splitlines() if line.startswith(f"{offsets} {op} ")]
    assert lines, f"not reached: the child exited with {p.returncode}:\n{p.stderr[-2000:]}"
    assert all(line.endswith("RaggedError") for line in lines), lines


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


# ---- issue 14, second round (tools/fuzz, seed 11): dtypes, pad values, sizes, devices, slices -----
# Each test runs on every framework installed here, with fresh random non-zero values.


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


FRAMEWORKS = [pytest.param(fw, marks=pytest.mark.skipif(not _importable(mod), reason=f"{mod} is not installed"))
              for fw, mod in (("numpy", "numpy"), ("torch", "torch"), ("jax", "jax"), ("mlx", "mlx.core"))]
DTYPES = list(scree_dtypes.ITEMSIZE)
LENGTHS = [3, 0, 2, 4]
WIDE = {"int64", "uint64", "float64", "complex128"}


def _x64() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)


def _lacks(fw: str, dt: str) -> str | None:
    """Why framework `fw` has no `dt` arrays here (None: it has them)."""
    if fw == "numpy" and dt == "bfloat16" and not _importable("ml_dtypes"):
        return "NumPy's bfloat16 comes with ml_dtypes"
    if fw == "jax" and dt in WIDE and not _x64():
        return "JAX without jax_enable_x64 has no 64-bit types (it narrows them)"
    if fw == "mlx" and dt == "complex128":
        return "MLX has no complex128"
    return None


def _round_bfloat16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even), kept as float32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).view(np.float32)


def _random(dt: str, shape: tuple, rng: np.random.Generator, small: bool = False) -> np.ndarray:
    """Fresh random non-zero host values of dt (bfloat16 as float32 holding bfloat16 values);
    integers over the whole range of the type (the top bit of uint64 included) unless small."""
    if dt == "bool":
        a = rng.random(shape) < 0.5
        a.reshape(-1)[:2] = (True, False)
        return a
    if dt.startswith(("int", "uint")):
        info = np.iinfo(dt)
        lo, hi = (1, 100) if small else (info.min, info.max)
        a = rng.integers(lo, hi, size=shape, dtype=dt, endpoint=True)
        a.reshape(-1)[:2] = (hi, max(lo, 1) if small else lo)
    elif dt.startswith("complex"):
        a = (rng.standard_normal(shape) * 3 + 1j * rng.standard_normal(shape)).astype(dt)
    else:
        a = (rng.standard_normal(shape) * 3).astype(np.float32 if dt == "bfloat16" else dt)
        a = _round_bfloat16(a) if dt == "bfloat16" else a
    a[a == 0] = 1
    return a


def _native(fw: str, h: np.ndarray, dt: str):
    """Host values h (of dt; bfloat16 held as float32) as a `fw` array of dtype dt."""
    if fw == "numpy":
        import ml_dtypes

        return h.astype(ml_dtypes.bfloat16) if dt == "bfloat16" else h.copy()
    if fw == "torch":
        import torch

        if dt == "bfloat16":
            return torch.from_numpy(h.copy()).to(torch.bfloat16)
        if dt in ("uint16", "uint32", "uint64"):  # torch.from_numpy lacks these: the same bits, signed
            return torch.from_numpy(h.view(dt[1:])).view(getattr(torch, dt))
        return torch.from_numpy(h.copy())
    if fw == "jax":
        import jax.numpy as jnp

        return jnp.asarray(h).astype(jnp.bfloat16) if dt == "bfloat16" else jnp.asarray(h)
    import mlx.core as mx

    if dt == "bfloat16":
        return mx.array(h).astype(mx.bfloat16)
    return mx.array(h, dtype=getattr(mx, "bool_" if dt == "bool" else dt))  # (mx.array narrows float64 unasked)


def _host(x) -> np.ndarray:
    """Any framework's array as host NumPy, bit-exact (bfloat16 widened to float32)."""
    ns = _backends.of(x)
    name = ns.dtype_name(x)
    if ns.name == "torch":
        import torch

        t = x.detach().cpu()
        if name == "bfloat16":
            return t.float().numpy()
        if name in ("uint16", "uint32", "uint64"):
            return t.view(getattr(torch, name[1:])).numpy().view(name)
        return t.numpy()
    if name == "bfloat16":
        x = ns.astype(x, "float32")
    return np.array(x)


def _same(got, want: np.ndarray, dt: str, what: str = "") -> None:
    """got is a native array of dtype dt holding exactly want (NaN where NaN)."""
    assert _backends.of(got).dtype_name(got) == dt, what
    np.testing.assert_array_equal(_host(got), want, err_msg=what)


def _segments(h: np.ndarray, lengths: list) -> list:
    off = np.concatenate([[0], np.cumsum(lengths)])
    return [h[a:b] for a, b in zip(off[:-1], off[1:])]


def _extreme_pad(dt: str):
    """A pad value at the edge of what dt holds exactly."""
    if dt == "bool":
        return True
    if dt.startswith(("int", "uint")):
        return int(np.iinfo(dt).max)
    return complex(1.5, -2.0) if dt.startswith("complex") else -2.5


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_every_dtype_moves_exactly_on_every_framework(fw, dt, rng):
    """KeyError in the backends' dtype tables (_backends/numpy.py:122 for ml_dtypes' bfloat16,
    ~6000 fuzz cases; torch complex and uint16/32/64; MLX uint16/32/64 and complex64; JAX uint32 and
    complex): every dtype a framework has is now carried by every layout operation, bit for bit, and
    an MLX bool to_padded is bool (it was int32)."""
    if _lacks(fw, dt):
        pytest.skip(_lacks(fw, dt))
    h = _random(dt, (9, 2), rng)
    arr = scree.from_lengths(_native(fw, h, dt), LENGTHS)
    segs = _segments(h, LENGTHS)
    pad = _extreme_pad(dt)
    padded, mask = arr.to_padded(pad_value=pad, padding_side="left", max_length=5)
    want = np.full((4, 5, 2), pad, dtype=h.dtype)
    want_mask = np.zeros((4, 5), bool)
    for i, s in enumerate(segs):
        want[i, 5 - len(s):] = s
        want_mask[i, 5 - len(s):] = True
    _same(padded, want, dt, "to_padded")
    _same(mask, want_mask, "bool", "mask")
    _same(scree.from_padded(padded, mask=mask).values, h, dt, "from_padded(mask)")
    _same(scree.from_padded(padded, lengths=LENGTHS, padding_side="left").values, h, dt, "from_padded(lengths)")
    _same(arr[[3, 0, 3]].values, np.concatenate([segs[3], segs[0], segs[3]]), dt, "gather")
    _same(arr[::-2].values, np.concatenate([segs[3], segs[1]]), dt, "arr[::-2]")
    _same(scree.pack(arr.unpack()).values, h, dt, "pack(unpack)")
    _same(scree.concat_sequences([arr, arr]).values, np.concatenate([np.concatenate([s, s]) for s in segs]), dt,
          "concat_sequences")


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_reductions_of_every_dtype(fw, dt, rng):
    """Per op and dtype, the same on every framework: sum of bool/integers -> int64 (int32 on JAX
    without x64), of floats -> the dtype; max of everything but complex (torch's uint16/32/64 had
    no scatter-max: NotImplementedError); mean of floats only; complex sum/mean/max raise
    DTypeError naming the op and the dtype."""
    if _lacks(fw, dt):
        pytest.skip(_lacks(fw, dt))
    small = _random(dt, (9, 2), rng, small=True)
    full = _random(dt, (9, 2), rng)
    arr, arr_full = (scree.from_lengths(_native(fw, h, dt), LENGTHS) for h in (small, full))
    if dt.startswith("complex"):
        for op in ("sum", "mean", "max"):
            with pytest.raises(scree.DTypeError, match=rf"{op}.*{dt}"):
                getattr(arr, op)()
        return
    exact = dt == "bool" or dt.startswith(("int", "uint"))
    low = False if dt == "bool" else np.iinfo(dt).min if exact else -np.inf
    want_max = np.stack([s.max(axis=0) if len(s) else np.full(2, low, full.dtype) for s in _segments(full, LENGTHS)])
    _same(arr_full.max(), want_max, dt, "max")
    sums = np.stack([s.astype(np.float64 if not exact else np.int64).sum(axis=0) for s in _segments(small, LENGTHS)])
    if exact:
        _same(arr.sum(), sums, "int32" if fw == "jax" and not _x64() else "int64", "sum")
        with pytest.raises(scree.DTypeError, match=rf"mean.*{dt}"):
            arr.mean()
        return
    eps = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}[dt]
    scale = np.stack([np.abs(s).sum(axis=0) for s in _segments(small.astype(np.float64), LENGTHS)])
    got = arr.sum()
    assert _backends.of(got).dtype_name(got) == dt
    np.testing.assert_allclose(_host(got), sums, rtol=0, atol=1e-300 + 8 * eps * scale.max())
    got = arr.mean()
    assert _backends.of(got).dtype_name(got) == dt
    lens = np.array(LENGTHS, float)[:, None]
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(_host(got), sums / lens, rtol=2 * eps, atol=8 * eps * scale.max(),
                                   equal_nan=True)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("target", FRAMEWORKS)
@pytest.mark.parametrize("source", FRAMEWORKS)
def test_to_carries_every_dtype_or_names_it(source, target, dt, rng):
    """Array.to between frameworks keeps every dtype bit for bit (NumPy's ml_dtypes bfloat16
    raised BufferError on its way to torch and MLX), or raises DTypeError naming the dtype where
    the target has none: complex128 into MLX (it was narrowed to complex64, silently), bfloat16
    into NumPy from another framework (scree hands out no ml_dtypes arrays)."""
    if _lacks(source, dt):
        pytest.skip(_lacks(source, dt))
    if target == "jax" and dt in WIDE and not _x64():
        pytest.skip("JAX without x64 narrows 64-bit types (documented; ints that would wrap: tested below)")
    h = _random(dt, (9, 2), rng)
    arr = scree.from_lengths(_native(source, h, dt), LENGTHS)
    if target == "mlx" and dt == "complex128":
        with pytest.raises(scree.DTypeError, match="complex128"):
            arr.to(target)
        return
    if target == "numpy" and dt == "bfloat16" and source != "numpy":
        with pytest.raises(scree.DTypeError, match="bfloat16"):
            arr.to(target)
        return
    out = arr.to(target)
    assert out.backend == target
    _same(out.values, h, dt, f"{source} -> {target}")
    assert _host(out.offsets).tolist() == [0, 3, 3, 5, 9]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_mlx_keeps_float64_and_refuses_complex128(fw, rng):
    """MLX has float64 (CPU) and no complex128: .to('mlx') keeps float64 values exactly and names
    complex128 in a DTypeError (mx.from_dlpack narrowed it to complex64 without a word)."""
    pytest.importorskip("mlx.core")
    if fw == "jax" and not _x64():
        pytest.skip("JAX without x64 has neither")
    h = rng.standard_normal((5, 3)) * 1e200
    out = scree.from_lengths(_native(fw, h, "float64"), [2, 3]).to("mlx")
    _same(out.values, h, "float64")
    if fw == "mlx":
        return
    c = (h + 1j * rng.standard_normal((5, 3)) * 1e-200).astype(np.complex128)
    with pytest.raises(scree.DTypeError, match="complex128"):
        scree.from_lengths(_native(fw, c, "complex128"), [2, 3]).to("mlx")


def test_jax_without_x64_refuses_ints_that_would_wrap(rng):
    """JAX without jax_enable_x64 narrows int64 to int32 by wrapping (2**40 -> 0, silently): scree
    raises ArgumentError naming int32 and the flag instead, and keeps values that fit."""
    pytest.importorskip("jax")
    if _x64():
        pytest.skip("jax_enable_x64 is on: nothing narrows")
    big = rng.integers(2**31, 2**40, size=(4, 2), dtype=np.int64)
    sources = [big] + ([__import__("torch").from_numpy(big)] if _importable("torch") else [])
    for src in sources:
        arr = scree.from_lengths(src, [1, 3])
        with pytest.raises(scree.ArgumentError, match="int32.*jax_enable_x64"):
            arr.to("jax")
        with pytest.raises(scree.ArgumentError, match="jax_enable_x64"):
            scree.from_offsets(_native("jax", np.ones((4, 2), np.float32), "float32"), [0, 2**40, 4])
    fits = rng.integers(-2**31, 2**31, size=(4, 2), dtype=np.int64)
    _same(scree.from_lengths(fits, [1, 3]).to("jax").values, fits, "int32")


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_unsupported_dtypes_raise_dtype_error_where_arrays_enter():
    """Element types scree cannot name (float8, int4, complex32, object, strings, NumPy's
    longdouble) raise DTypeError naming the dtype where an Array is built, not a KeyError in a
    later operation."""
    cases = [np.array([1, 2, 3], dtype=object), np.array(["a", "b", "c"])]
    if np.dtype(np.longdouble).itemsize > 8:
        cases.append(np.ones(3, np.longdouble))
    if _importable("ml_dtypes"):
        import ml_dtypes

        cases.append(np.ones(3, ml_dtypes.float8_e4m3fn))
    if _importable("torch"):
        import torch

        cases += [torch.ones(3, dtype=torch.float8_e4m3fn), torch.ones(3, dtype=torch.complex32)]
    if _importable("jax"):
        import jax.numpy as jnp

        cases += [jnp.ones(3, jnp.float8_e4m3fn), jnp.ones(3, jnp.int4)]
    for v in cases:
        name = _backends.of(v).dtype_name(v)
        ns = _backends.of(v)
        offsets = ns.asarray([0, 1, 3], dtype="int64")
        ok = scree.from_lengths(ns.astype(ns.arange(3, "int64"), "float32"), [1, 2])
        for build in (lambda: scree.from_lengths(v, [1, 2]), lambda: scree.Array(v, offsets),
                      lambda: scree.Array(v, offsets, validate=False), lambda: scree.pack([v[:1], v[1:]]),
                      lambda: scree.from_padded(ns.reshape(v, (1, 3))), lambda: ok.with_values(v)):
            with pytest.raises(scree.DTypeError, match=name.replace("[", r"\[")):
                build()


def test_numpy_bfloat16_reductions_and_attention(rng):
    """ml_dtypes' NumPy bfloat16 (KeyError before): reductions run on NumPy's ops, in float64 and
    rounded once; the compiled attention kernels cannot read it: DTypeError naming bfloat16."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    h = _random("bfloat16", (5, 2, 8), rng)
    arr = scree.from_lengths(h.astype(ml_dtypes.bfloat16), [2, 3])
    sums = np.stack([s.astype(np.float64).sum(axis=0) for s in _segments(h, [2, 3])])
    np.testing.assert_array_equal(arr.sum().astype(np.float32), _round_bfloat16(sums.astype(np.float32)))
    np.testing.assert_array_equal(arr.max().astype(np.float32), np.stack([s.max(axis=0) for s in _segments(h, [2, 3])]))
    with pytest.raises(scree.DTypeError, match="bfloat16"):
        scree.varlen_attention(arr, arr, arr)


PAD_CASES = [  # (dtype, bad pad values, exactly representable ones)
    ("uint8", [300, -1, 2.5, float("nan"), float("inf"), None, "a", 1 + 2j], [255, 0, 2.0, True, 3 + 0j]),
    ("int32", [2**31, float("nan"), float("-inf"), 2**70, b"1"], [-2**31, 2**31 - 1, -7.0]),
    ("int64", [2**63, -2**63 - 1], [2**63 - 1, -2**63]),
    ("uint64", [2**64, -1], [2**64 - 1]),
    ("float16", [65520, 1e300, 2**1100, 1 + 1j, None], [65504, -65504, float("nan"), float("-inf"), True]),
    ("float32", [1e39, -3.5e38], [3.4e38, 2**70, float("inf")]),
    ("bool", [2, -1, 0.5, float("nan"), None], [0, 1, True, False, 1.0]),
    ("complex64", [1e39 + 0j, "x"], [1.5 - 2j, 3]),
]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_pad_value_must_fit_the_dtype(fw, rng):
    """Pad values that do not fit the dtype padded silently (NaN/inf into ints, 300 -> 44 and -1 ->
    255 into uint8, 2**63 into int64) or raised the frameworks' own errors (None, strings, MLX's
    std::bad_cast): ArgumentError naming pad_value and the dtype now; values the dtype holds
    exactly still pad, on every framework (bridges.to_hf_padded too)."""
    from scree.bridges import to_hf_padded

    for dt, bad, good in PAD_CASES:
        if _lacks(fw, dt):
            continue
        h = _random(dt, (5, 3), rng)
        arr = scree.from_lengths(_native(fw, h, dt), [2, 3])
        for pad in bad:
            with pytest.raises(scree.ArgumentError, match=rf"pad_value.*{dt}"):
                arr.to_padded(pad_value=pad)
            with pytest.raises(scree.ArgumentError, match="pad_value"):
                to_hf_padded(arr, pad_value=pad)
        for pad in good:
            padded, mask = arr.to_padded(pad_value=pad, max_length=4)
            want = np.full((2, 4, 3), pad.real if isinstance(pad, complex) and dt != "complex64" else pad, h.dtype)
            want[0, :2], want[1, :3] = h[:2], h[2:]
            _same(padded, want, dt, f"pad_value={pad!r}")


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_bad_slices_raise_argument_error(fw, rng):
    """arr[::0] raised Python's ValueError, arr['a':] and arr[1.5:] its TypeError."""
    arr = scree.from_lengths(_native(fw, _random("float32", (5, 2), rng), "float32"), [2, 0, 3])
    for index in (slice(None, None, 0), slice("a", None), slice(1.5, None), slice(None, 2, 0.5)):
        with pytest.raises(scree.ArgumentError, match="slice"):
            arr[index]
    _same(arr[::-1].values, _host(arr.values)[[2, 3, 4, 0, 1]], "float32")  # good slices still work


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_padded_sizes_are_checked_before_allocating(fw, rng):
    """to_padded sized past what can exist raised NumPy's ValueError/MemoryError, torch's
    RuntimeError, JAX's RESOURCE_EXHAUSTED, MLX's OverflowError (or built a lazy array that
    segfaulted when evaluated), and from_padded allocated from lengths before checking them
    (48 GiB for lengths=[2**31]). Now, before anything is allocated: an axis past the
    framework's index type (int32 for MLX shapes and JAX without x64) or bytes past the platform's
    address space -> ArgumentError naming max_length; more than the memory left ->
    OutOfMemoryError (a ScreeError and a MemoryError)."""
    arr = scree.from_lengths(_native(fw, _random("float32", (5, 3), rng), "float32"), [2, 3])
    with pytest.raises(scree.ArgumentError, match="max_length=4611686018427387904"):
        arr.to_padded(max_length=2**62)
    zero = scree.from_lengths(_native(fw, np.ones((4, 0), np.float32), "float32"), [1, 3])
    with pytest.raises(scree.ArgumentError, match="max_length"):  # no elements, but strides overflow
        zero.to_padded(max_length=2**63 - 1)
    narrow = fw == "mlx" or (fw == "jax" and not _x64())
    with pytest.raises(scree.ArgumentError if narrow else OutOfMemoryError, match="max_length=35184372088832"):
        arr.to_padded(max_length=2**45)  # 768 TiB, past any machine's memory
    if narrow:
        with pytest.raises(scree.ArgumentError, match="2147483647"):
            arr.to_padded(max_length=2**31)
    padded = _native(fw, _random("float32", (2, 4, 3), rng), "float32")
    for lengths in ([2**31, 1], [1, 5], [1, 2, 3]):
        with pytest.raises(scree.ShapeError, match="do not fit padded"):
            scree.from_padded(padded, lengths=lengths)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_padded_past_the_address_space_limit_is_refused_not_a_crash(fw):
    """Under an address-space limit (the fuzzing workers run with 8 GiB) a padded array that fits
    the machine but not the limit made NumPy and torch raise their MemoryErrors and MLX die with
    SIGSEGV evaluating it: OutOfMemoryError before allocating now (a child process, so a
    regression cannot take pytest down)."""
    if fw == "mlx":
        pytest.importorskip("mlx.core")
    else:
        pytest.importorskip(fw)
    if not _importable("resource") or not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc and RLIMIT_AS")
    make = {"numpy": "np.ones((3, 2), np.float32)", "torch": "__import__('torch').ones(3, 2)",
            "jax": "__import__('jax.numpy').numpy.ones((3, 2))", "mlx": "__import__('mlx.core').core.ones((3, 2))"}[fw]
    evaluate = "__import__('mlx.core').core.eval(p)" if fw == "mlx" else "pass"
    code = f"""
        import resource, numpy as np, scree
        arr = scree.from_lengths({make}, [1, 2])
        used = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            p, m = arr.to_padded(max_length=1 << 30)  # 8 GiB of float32 padding, 1 GiB left
            {evaluate}
            print("no error")
        except scree.ScreeError as e:
            print(type(e).__name__, isinstance(e, MemoryError))
    """
    out = assert_child_ok(code)
    assert out.strip() == "OutOfMemoryError True"


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_to_an_absent_device_raises_backend_error(fw, rng):
    """.to('torch', device='cuda') on a machine without a GPU raised torch's AssertionError
    ('Torch not compiled with CUDA enabled'), device='gpu' its RuntimeError: BackendError naming
    the device, for every target."""
    arr = scree.from_lengths(_native(fw, _random("float32", (5, 2), rng), "float32"), [2, 3])
    targets = [t.values[0] for t in FRAMEWORKS if _importable({"mlx": "mlx.core"}.get(t.values[0], t.values[0]))]
    absent = ["gpu", "tpu", "cuda:99", 0]
    if not (_importable("torch") and __import__("torch").cuda.is_available()):
        absent.append("cuda")
    for target in targets:
        for device in absent:
            if target == "torch" and device == 0 and __import__("torch").cuda.is_available():
                continue
            with pytest.raises(scree.BackendError, match=repr(device).replace("(", r"\(")):
                arr.to(target, device=device)
        _same(arr.to(target, device="cpu").values, _host(arr.values), "float32")


def test_validate_false_offsets_are_checked_before_they_travel():
    """Array.to carried validate=False host offsets as trusted bookkeeping: to_torch_nested over
    [0, 5, 6, 8, -2**31] raised torch's RuntimeError. Checked first now: RaggedError. JAX CPU
    offsets are checked at their first use too (the XLA FFI handlers raised JaxRuntimeError)."""
    v = np.random.default_rng(5).standard_normal((8,)).astype(np.float32)
    bad = scree.from_offsets(v, np.array([0, 5, 6, 8, -2**31]), validate=False)
    for target in [t for t in ("torch", "jax", "mlx") if _importable({"mlx": "mlx.core"}.get(t, t))]:
        with pytest.raises(scree.RaggedError):
            bad.to(target)
    if _importable("torch"):
        from scree.bridges import to_torch_nested

        with pytest.raises(scree.RaggedError):
            to_torch_nested(bad)
    if _importable("jax"):
        import jax.numpy as jnp

        q = scree.from_offsets(jnp.asarray(np.ones((3, 2, 8), np.float32)), jnp.array([0, 4]), validate=False)
        with pytest.raises(scree.RaggedError, match="total"):
            scree.varlen_attention(q, q, q)


def test_torch_unsigned_index_put_on_signed_bits(rng):
    """torch has no index_put for uint16/32/64 (the reference path, which CUDA tensors take): the
    backend writes the same bits through the signed type of the same width."""
    torch = pytest.importorskip("torch")
    ns = _backends.get("torch")
    for dt in ("uint16", "uint32", "uint64"):
        h = _random(dt, (6, 2), rng)
        dst = _native("torch", np.zeros((9, 2), dt), dt)
        rows = np.array([7, 0, 3, 8, 1, 5])
        out = ns.index_put(dst, (torch.from_numpy(rows),), _native("torch", h, dt))
        want = np.zeros((9, 2), dt)
        want[rows] = h
        _same(out, want, dt, dt)


def test_jax_ffi_errors_name_the_scree_class(rng):
    """A scree::Error in an XLA FFI handler reaches Python as JAX's runtime error whose message
    starts with "scree.<Class>:" (here: offsets that are only known, and found decreasing, when the
    jitted CPU kernel runs); where the ffi_call runs eagerly, scree raises that class itself."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from scree._connect import jax as glue
    if not glue.serves():
        pytest.skip("this build has no XLA FFI handlers")
    q = jnp.asarray(rng.standard_normal((6, 2, 16)).astype(np.float32))

    @jax.jit
    def run(values, offsets):
        a = scree.Array(values, offsets, validate=False, max_length=6)
        return scree.varlen_attention(a, a, a).values

    with pytest.raises(Exception, match=r"scree\.RaggedError: ") as info:
        jax.block_until_ready(run(q, jnp.asarray([0, 4, 2, 6], dtype=jnp.int32)))
    assert not isinstance(info.value, scree.ScreeError)  # raised by XLA, outside scree's code
    with pytest.raises(scree.RaggedError, match="decreasing|non-decreasing|offsets"):
        with glue._scree_errors():
            raise RuntimeError("INVALID_ARGUMENT: scree.RaggedError: offsets must be non-decreasing")


def test_to_padded_below_a_given_bound_but_above_the_longest(backend, rng):
    """max_length given to the Array is a bound (like max_seqlen): to_padded(max_length=m) with the
    longest sequence <= m < that bound pads to m; below the longest it is a ShapeError."""
    values = rng.standard_normal((10, 2)).astype(np.float32)
    a = scree.Array(values, np.array([0, 3, 10]), max_length=12).to(backend)
    padded, mask = a.to_padded(max_length=8)
    assert tuple(padded.shape) == (2, 8, 2) and tuple(mask.shape) == (2, 8)
    np.testing.assert_array_equal(np.asarray(scree.from_padded(padded, mask=mask).to("numpy").values), values)
    with pytest.raises(scree.ShapeError, match="longest sequence \\(7\\)"):
        a.to_padded(max_length=6)


def test_to_hf_padded_checks_its_int64_mask_before_allocating():
    """to_hf_padded's attention_mask is int64, 8x the bool mask to_padded checks: zero-size rows
    make the padded array free, the int64 mask must still be sized before NumPy tries (tools/fuzz
    found 2^31 slots, 16 GiB, reaching NumPy's MemoryError; 2^40 slots, 8 TiB, fit no machine)."""
    import scree.bridges

    a = scree.from_offsets(np.zeros((5, 0), np.float32), np.array([0, 5]))
    with pytest.raises((OutOfMemoryError, scree.ArgumentError), match="max_length=1099511627776"):
        scree.bridges.to_hf_padded(a, max_length=2 ** 40)


def test_strided_torch_bfloat16_view_moves_to_jax(rng):
    """A strided or broadcast torch view is exported dense: JAX refused to import it and NumPy, the
    fallback, has no bfloat16 (a bare TypeError before; tools/fuzz)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    base = torch.from_numpy(rng.standard_normal(28).astype(np.float32)).to(torch.bfloat16)
    for view in (base[::2], base[:1].expand(14)):
        a = scree.from_lengths(view, [1, 3, 10])
        b = a.to("jax")
        np.testing.assert_array_equal(np.asarray(b.values).astype(np.float32), view.float().numpy())


def test_empty_lengths_of_another_framework_keep_their_dtype():
    """[] means no sequences whatever NumPy makes of it, but an empty float or bool array from
    another framework is still not integer lengths (tools/fuzz: MLX lengths for torch values)."""
    torch = pytest.importorskip("torch")
    mx = pytest.importorskip("mlx.core")
    values = torch.zeros((0, 2))
    assert scree.from_lengths(values, []).num_sequences == 0
    for lengths in (mx.array(np.zeros(0, np.float32)), mx.array(np.zeros(0, bool)), np.zeros(0, np.float64)):
        with pytest.raises(scree.DTypeError, match="lengths must be integers"):
            scree.from_lengths(values, lengths)


def test_mlx_float64_attention_is_float64_accurate(rng):
    """MLX float64 runs the compiled kernels (MLX's own ops lost ~5e-7 relative on large values)."""
    mx = pytest.importorskip("mlx.core")
    x = [rng.standard_normal((7, 1, 4)) for _ in range(3)]
    x[2] *= 1e26
    want = reference(*(scree.from_lengths(a, [3, 4]) for a in x), causal=True).values
    got = scree.varlen_attention(*(scree.from_lengths(mx.array(a, dtype=mx.float64), [3, 4]) for a in x),
                                 causal=True).values
    assert got.dtype == mx.float64
    np.testing.assert_allclose(np.array(got), want, rtol=1e-12, atol=0)


# ---- found by the fuzz campaign over the issue-15 ops (seed 15, 20k cases) --------------------------
def test_truncate_past_int64_is_no_bound():
    """a.truncate(2**63) raised NumPy's bare OverflowError."""
    a = scree.from_lengths(np.arange(6.0).reshape(3, 2), [2, 1])
    out = a.truncate(2**63)
    np.testing.assert_array_equal(out.values, a.values)
    np.testing.assert_array_equal(out.host_offsets, a.host_offsets)


def test_unsigned_torch_ops_without_a_kernel_are_typed():
    """min / argmin of uint16 / uint64 torch values (bitwise_not) and their arithmetic (add) raised
    torch's NotImplementedError: now scree.UnsupportedError naming the op and dtype."""
    torch = pytest.importorskip("torch")
    for dt in (torch.uint16, torch.uint64):
        a = scree.from_lengths(torch.arange(4).to(dt).reshape(4, 1), [3, 1])
        for call, want in ((a.min, [[0], [3]]), (a.argmin, [[0], [0]]), (lambda: (a * 2 + a).values, [[0], [3], [6], [9]])):
            try:
                got = call()
            except scree.UnsupportedError as e:
                assert "kernel" in str(e) and str(dt).split(".")[1] in str(e)
            else:  # a torch that has the kernel must give the right answer
                np.testing.assert_array_equal(got.to(torch.int64).numpy(), want)

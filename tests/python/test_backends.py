"""One Array surface, every backend: the same random Arrays (length-0 sequences included) go through
every public function on every installed backend (NumPy, torch, JAX, MLX) and must agree with the
NumPy result to tolerance. Then what only some frameworks have: jax.jit (one compilation per
shape, not per offsets value), jax.vmap, jax.grad / mx.grad / torch autograd, the pytree, the 4x4
`Array.to` matrix (zero-copy where DLPack allows), and typed errors for mixed backends/devices.

Nothing here is written per backend: a backend is a name, native arrays are made with
scree._backends.get(name).from_numpy, and results come back to NumPy through `host`.

JAX runs with its defaults (jax_enable_x64 off): 64-bit dtypes are canonicalised to 32 bits, so
the expected dtype of a JAX result is the canonical one (`want_dtype`) and float64 inputs are
compared at float32 tolerance.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

import scree
from scree import _backends, bridges
from scree.kernels import reference
from cases import LENGTH_CASES, stable_seed


def _try_import(module: str) -> tuple[Any, str | None]:
    try:
        return importlib.import_module(module), None
    except Exception as e:  # noqa: BLE001 - any import failure means "not installed here"
        return None, f"{module} cannot be imported here: {type(e).__name__}: {e}"


torch, _TORCH_WHY = _try_import("torch")
jax, _JAX_WHY = _try_import("jax")
jnp = importlib.import_module("jax.numpy") if jax is not None else None
mx, _MLX_WHY = _try_import("mlx.core")

_WHY = {"numpy": None, "torch": _TORCH_WHY, "jax": _JAX_WHY, "mlx": _MLX_WHY}
ALL = ["numpy", "torch", "jax", "mlx"]
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(_WHY[b] is not None, reason=_WHY[b] or "")) for b in ALL]
OTHERS = [p for p in BACKENDS if p.values[0] != "numpy"]

needs_jax = pytest.mark.skipif(jax is None, reason=_JAX_WHY or "")
needs_mlx = pytest.mark.skipif(mx is None, reason=_MLX_WHY or "")
needs_torch = pytest.mark.skipif(torch is None, reason=_TORCH_WHY or "")

# A spread of layouts with length-0 sequences in every position, and one long sequence.
CASES = ["empty_batch", "one_empty", "all_empty", "mixed", "empties_between", "leading_trailing_empty",
         "long_and_short"]
# JAX compiles every eager op once per new shape (~50 ms each on 2 cores); it gets fewer layouts so
# the module stays fast. Every layout still runs on the other backends, and JAX sees the empty
# batch and a long sequence among short and empty ones.
JAX_CASES = ["empty_batch", "long_and_short"]


def grid(cases: list[str], jax_cases: list[str]) -> list[Any]:
    """(backend, case) parameters: every case on every backend, JAX only on `jax_cases`."""
    return [pytest.param(b, c, marks=p.marks, id=f"{b}-{c}")
            for p in BACKENDS for b in p.values for c in (jax_cases if b == "jax" else cases)]


SURFACE = grid(CASES, JAX_CASES)
DTYPES = ["float32", "float64", "float16", "int32", "int64"]
TOL = {"float64": 1e-12, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}


@pytest.fixture(scope="module", autouse=True)
def _torch_one_thread():
    # tiny torch ops are fastest on one thread on this 2-core machine (see conftest.py)
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- helpers ---------------------------------------------------------------------------------------

def native(backend: str, a: Any) -> Any:
    """A host NumPy array as a native array of `backend`."""
    return _backends.get(backend).from_numpy(np.ascontiguousarray(a))


def host(x: Any) -> np.ndarray:
    """Any native array as host NumPy; bfloat16 widened to float32 (exactly)."""
    ns = _backends.of(x)
    if ns.dtype_name(x) == "bfloat16":
        x = ns.astype(x, "float32")
    if ns.name == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(ns.to_numpy(x))


def want_dtype(backend: str, dt: str) -> str:
    """The dtype a backend gives for a requested one (JAX without x64: 32-bit)."""
    if backend == "jax":
        return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dt))).name
    return dt


def tol(dt: str) -> float:
    return TOL.get(dt, 0.0)


def random_host(shape: tuple, dt: str, rng: np.random.Generator) -> np.ndarray:
    if dt.startswith("int"):
        a = rng.integers(-1000, 1001, size=shape).astype(dt)
    else:
        a = (rng.standard_normal(shape) * 2).astype(dt)
    if a.size and not a.any():
        a.reshape(-1)[0] = 1
    return a


def numpy_array(lengths: list[int], feature: tuple = (3,), dt: str = "float32", seed: int = 0) -> scree.Array:
    rng = np.random.default_rng(seed)
    return scree.from_lengths(random_host((sum(lengths), *feature), dt, rng), list(lengths))


def default_device(backend: str) -> str:
    """Where `backend` puts a new array by default: the host, except JAX on a GPU machine."""
    return _backends.get(backend).device(native(backend, np.zeros(1, np.float32)))


def on(backend: str, ref: scree.Array, offsets_dtype: str = "int64") -> scree.Array:
    """The same Array (same values, same offsets) built natively on `backend`."""
    return scree.from_offsets(native(backend, ref.values), native(backend, ref.host_offsets.astype(offsets_dtype)))


def check(got: Any, want: Any, backend: str, what: str = "", rtol: float | None = None, scale: Any = None) -> None:
    """`got` (native, of `backend`) agrees with the NumPy result `want`: framework, dtype (as the
    backend canonicalises it), shape, values within the dtype's tolerance (NaN where NaN)."""
    assert _backends.of(got).name == backend, f"{what}: result is {_backends.of(got).name}, not {backend}"
    wd = want_dtype(backend, _backends.of(want).dtype_name(want))
    gd = _backends.of(got).dtype_name(got)
    assert gd == wd, f"{what}: dtype {gd}, expected {wd}"
    g, w = host(got), host(want)
    assert g.shape == w.shape, f"{what}: shape {g.shape} vs {w.shape}"
    if g.dtype != w.dtype and np.issubdtype(w.dtype, np.integer):  # JAX int64 -> int32: its own lowest
        w = np.where(w == np.iinfo(w.dtype).min, np.iinfo(g.dtype).min, w)
    t = tol(gd) if rtol is None else rtol
    if t == 0.0:
        np.testing.assert_array_equal(g, w, err_msg=what)
        return
    g64, w64 = g.astype(np.float64), w.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(g64), np.isnan(w64), err_msg=f"{what}: NaN pattern")
    ok = ~np.isnan(w64)
    s = np.abs(w64) if scale is None else np.broadcast_to(np.asarray(scale, np.float64), w64.shape)
    with np.errstate(invalid="ignore"):  # inf - inf where both are -inf (empty max): equal below
        bad = ok & (g64 != w64) & ~(np.abs(g64 - w64) <= t * (s + 1.0))
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.size} values off; worst |diff| {np.max(np.abs(g64 - w64)[ok])}"


def check_array(got: scree.Array, want: scree.Array, backend: str, what: str = "", rtol: float | None = None) -> None:
    assert isinstance(got, scree.Array) and got.backend == backend, what
    np.testing.assert_array_equal(got.host_offsets, want.host_offsets, err_msg=what)
    np.testing.assert_array_equal(host(got.offsets).astype(np.int64), want.host_offsets, err_msg=what)
    assert got.max_length == want.max_length and len(got) == len(want), what
    check(got.values, want.values, backend, what, rtol)


# ---- every public function, every backend, against NumPy ---------------------------------------------

@pytest.mark.parametrize("backend, case", SURFACE)
def test_layout_surface_matches_numpy(backend, case):
    lengths = LENGTH_CASES[case]
    ref = numpy_array(lengths, (3,), "float32", seed=stable_seed(case))
    n = len(lengths)

    # constructors
    arr = on(backend, ref)
    check_array(arr, ref, backend, "from_offsets")
    assert arr.backend == backend and arr.device == default_device(backend) and arr.total == ref.total
    assert arr.feature_shape == (3,) and arr.num_sequences == n and arr.max_length == ref.max_length
    check_array(on(backend, ref, "int32"), ref, backend, "from_offsets int32")
    check_array(scree.from_lengths(native(backend, ref.values), list(lengths)), ref, backend, "from_lengths list")
    check_array(scree.from_lengths(native(backend, ref.values), native(backend, np.asarray(lengths, np.int32))),
                ref, backend, "from_lengths native")
    cu = native(backend, ref.host_offsets.astype(np.int32))
    check_array(scree.from_cu_seqlens(native(backend, ref.values), cu), ref, backend, "from_cu_seqlens")
    if n:
        seqs = [native(backend, s) for s in ref.unpack()]
        check_array(scree.pack(seqs), ref, backend, "pack")
    for got, want in zip(scree.unpack(arr), ref.unpack()):
        check(got, want, backend, "unpack")
    for i in range(n):
        check(arr[i], ref[i], backend, f"arr[{i}]")

    # accessors
    check(arr.lengths, ref.lengths, backend, "lengths")
    check(arr.cu_seqlens(), ref.cu_seqlens(), backend, "cu_seqlens")
    for dt in ("int32", "int64"):
        check(arr.positions(dt), ref.positions(dt), backend, f"positions {dt}")
        check(arr.segment_ids(dt), ref.segment_ids(dt), backend, f"segment_ids {dt}")

    # padding both ways, to the longest sequence and beyond it
    for side, extra in (("right", 0), ("left", 2)):
        p, m = arr.to_padded(pad_value=-3, padding_side=side, max_length=ref.max_length + extra)
        wp, wm = ref.to_padded(pad_value=-3, padding_side=side, max_length=ref.max_length + extra)
        check(p, wp, backend, f"to_padded {side} +{extra}")
        check(m, wm, backend, f"mask {side} +{extra}")
        check_array(scree.from_padded(p, mask=m), ref, backend, f"from_padded mask {side}")
        check_array(scree.from_padded(p, mask=_backends.get(backend).astype(m, "int32")), ref, backend,
                    f"from_padded int mask {side}")
        check_array(scree.from_padded(p, lengths=list(lengths), padding_side=side), ref, backend,
                    f"from_padded lengths {side}")
        check_array(scree.from_padded(p, lengths=arr.lengths, padding_side=side), ref, backend,
                    f"from_padded native lengths {side}")
    p, _ = arr.to_padded()
    check_array(scree.from_padded(p), scree.from_padded(ref.to_padded()[0]), backend, "from_padded full")

    # sequence selection
    rng = np.random.default_rng(stable_seed(case, "pick"))
    picks = rng.integers(-n, n, size=2 * n + 1).tolist() if n else []
    sel = rng.random(n) < 0.5
    for index in (slice(None), slice(1, None), slice(None, None, 2), slice(None, None, -1), slice(5, 5)):
        check_array(arr[index], ref[index], backend, f"slice {index}")
    check_array(arr[picks], ref[picks], backend, "fancy list")
    check_array(arr[native(backend, np.asarray(picks, np.int64))], ref[picks], backend, "fancy native")
    check_array(arr[sel], ref[sel], backend, "bool numpy")
    check_array(arr[native(backend, sel)], ref[sel], backend, "bool native")

    # reductions
    for op in ("sum", "mean", "max"):
        check(getattr(arr, op)(), getattr(ref, op)(), backend, op, scale=_abs_sum_scale(ref, op))

    # with_values / map
    check_array(arr.map(lambda v: v * 2 + 1), ref.map(lambda v: v * 2 + 1), backend, "map")
    new = random_host((ref.total, 2), "float32", rng)
    check_array(arr.with_values(native(backend, new)), ref.with_values(new), backend, "with_values")

    # bridges
    cu_b, max_b = bridges.to_cu_seqlens(arr)
    cu_n, max_n = bridges.to_cu_seqlens(ref)
    check(cu_b, cu_n, backend, "to_cu_seqlens")
    assert max_b == max_n
    cu_b, max_b = bridges.cu_seqlens_from_lengths(native(backend, np.asarray(lengths, np.int64)))
    check(cu_b, bridges.cu_seqlens_from_lengths(np.asarray(lengths, np.int64))[0], backend, "cu_seqlens_from_lengths")
    assert max_b == max_n
    check_array(bridges.from_position_ids(arr.values, arr.positions()), bridges.from_position_ids(ref.values, ref.positions()),
                backend, "from_position_ids")
    x, am = bridges.to_hf_padded(arr, padding_side="left")
    wx, wam = bridges.to_hf_padded(ref, padding_side="left")
    check(x, wx, backend, "to_hf_padded")
    check(am, wam, backend, "to_hf_padded mask")
    check_array(bridges.from_hf_padded(x, am), ref, backend, "from_hf_padded")


def _abs_sum_scale(ref: scree.Array, op: str) -> np.ndarray:
    """Per-output magnitude a float reduction's rounding error scales with: sum (or mean) of |x|."""
    if op == "max":
        return np.abs(host(ref.max()))
    a = ref.map(lambda v: np.abs(v).astype(np.float64))
    s = host(a.sum())
    if op == "mean":
        lens = np.maximum(np.diff(ref.host_offsets), 1).reshape(-1, *(1,) * len(ref.feature_shape))
        s = s / lens
    return s


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dtypes_match_numpy(backend, dt):
    """Padding, reductions and selection keep every dtype (as the backend has it)."""
    ref = numpy_array([4, 0, 7, 1], (2, 3), dt, seed=stable_seed(dt))
    arr = on(backend, ref)
    p, m = arr.to_padded(pad_value=7, max_length=9)
    wp, wm = ref.to_padded(pad_value=7, max_length=9)
    check(p, wp, backend, "to_padded")
    check(m, wm, backend, "mask")
    check_array(scree.from_padded(p, mask=m), ref, backend, "from_padded")
    check_array(arr[[3, 0, 2]], ref[[3, 0, 2]], backend, "gather")
    for op in ("sum", "mean", "max"):
        if op == "mean" and dt.startswith("int"):
            with pytest.raises(scree.DTypeError):
                arr.mean()
            continue
        check(getattr(arr, op)(), getattr(ref, op)(), backend, op, scale=_abs_sum_scale(ref, op))


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_propagates_nan_and_empty_reductions(backend):
    ref = scree.from_lengths(np.array([1.0, np.nan, 2.0, 5.0], np.float32), [3, 0, 1])
    arr = on(backend, ref)
    for op in ("sum", "mean", "max"):
        check(getattr(arr, op)(), getattr(ref, op)(), backend, op)
    empty = numpy_array([], (3, 5), "float32")
    for op in ("sum", "mean", "max"):
        check(getattr(on(backend, empty), op)(), getattr(empty, op)(), backend, f"empty {op}")


@pytest.mark.parametrize("backend, case", grid(["one_empty", "mixed", "empties_between", "leading_trailing_empty"],
                                                ["empties_between"]))
def test_concat_sequences_matches_numpy(backend, case):
    lengths = LENGTH_CASES[case]
    rng = np.random.default_rng(stable_seed(case, "concat"))
    parts = [numpy_array(lengths, (4,), "float32", seed=stable_seed(case, 1)),
             numpy_array(rng.permutation(lengths).tolist(), (4,), "float32", seed=stable_seed(case, 2)),
             numpy_array([0] * len(lengths), (4,), "float32"),
             numpy_array(rng.integers(0, 3, len(lengths)).tolist(), (4,), "float32", seed=stable_seed(case, 3))]
    want = scree.concat_sequences(parts)
    # NumPy (the C++ pack path) against a plain per-sequence loop
    for i in range(len(lengths)):
        np.testing.assert_array_equal(want[i], np.concatenate([p[i] for p in parts]))
    check_array(scree.concat_sequences([on(backend, p) for p in parts]), want, backend, "concat_sequences")
    # the reference, on NumPy too, agrees bit for bit
    check_array(reference.concat_sequences(parts), want, "numpy", "reference.concat_sequences")


ATTN_OPTIONS = [dict(), dict(causal=True), dict(window=(2, 1), softcap=3.0), dict(causal=True, window=(1, -1))]


@pytest.mark.parametrize("opts", ATTN_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_attention_matches_numpy(backend, opts):
    """scree.varlen_attention and the reference, GQA with q and k lengths that differ (bottom-right
    causal alignment) and length-0 sequences, against the NumPy reference in float64."""
    rng = np.random.default_rng(stable_seed("attn", str(opts)))
    # few distinct (Lq, Lk) pairs: eager JAX compiles the per-sequence reference once per pair
    lq, lk = [3, 0, 3, 2, 3], [4, 2, 4, 0, 4]
    q = scree.from_lengths(random_host((sum(lq), 4, 8), "float32", rng), lq)
    k = scree.from_lengths(random_host((sum(lk), 2, 8), "float32", rng), lk)
    v = scree.from_lengths(random_host((sum(lk), 2, 8), "float32", rng), lk)
    want, want_lse = reference.varlen_attention(q, k, v, return_lse=True, **opts)
    qb, kb, vb = (on(backend, a) for a in (q, k, v))
    for fn in (scree.varlen_attention, reference.varlen_attention):
        out, lse = fn(qb, kb, vb, return_lse=True, **opts)
        check_array(out, want, backend, fn.__module__, rtol=2e-5)
        check(lse, want_lse, backend, f"{fn.__module__} lse", rtol=2e-5)


# ---- Array.to: the 4x4 matrix ----------------------------------------------------------------------------

def data_ptr(x: Any) -> int:
    ns = _backends.of(x)
    if ns.name == "mlx":
        return ns.data_ptr(x)
    if ns.name == "jax":
        return int(x.unsafe_buffer_pointer())
    if ns.name == "torch":
        return int(x.data_ptr())
    return int(x.__array_interface__["data"][0])


# (source, target) pairs that DLPack makes zero-copy on the CPU for float32 values whatever their
# alignment (Array.to's docstring has the rules). Into JAX it is zero-copy only for 64-byte aligned
# buffers (test_to_jax_is_zero_copy_for_aligned_buffers); into MLX it always copies.
ZERO_COPY = {("numpy", "torch"), ("torch", "numpy"), ("jax", "numpy"), ("jax", "torch"),
             ("mlx", "numpy"), ("mlx", "torch")}


@pytest.mark.parametrize("target", BACKENDS)
@pytest.mark.parametrize("source", BACKENDS)
def test_to_every_backend(source, target):
    ref = numpy_array([3, 0, 4, 1], (2,), "float32", seed=21)
    arr = on(source, ref)
    out = arr.to(target)
    check_array(out, ref, target, f"{source}->{target}")
    # DLPack keeps data where it is (JAX on a GPU -> a CUDA torch tensor); otherwise the default.
    assert out.device in (default_device(target), arr.device, "cpu"), (out.device, arr.device)
    check(out.sum(), ref.sum(), target, f"{source}->{target} sum")
    if source == target:
        assert out is arr
    elif (source, target) in ZERO_COPY and arr.device == "cpu":  # device -> host always copies
        assert data_ptr(out.values) == data_ptr(arr.values), f"{source}->{target} copied"
    # offsets keep their dtype (up to JAX's canonicalisation) and values round-trip back exactly
    assert _backends.of(out.offsets).dtype_name(out.offsets) == want_dtype(target, want_dtype(source, "int64"))
    back = out.to(source)
    check_array(back, ref, source, f"{source}->{target}->{source}")
    # explicit device: the CPU (MLX: the default device)
    check_array(arr.to(target, device="cpu"), ref, target, f"{source}->{target} device=cpu")


@needs_jax
def test_to_jax_is_zero_copy_for_aligned_buffers():
    """XLA shares a host buffer that is 64-byte aligned: torch's own allocations, or a NumPy array
    carved at an aligned address."""
    raw = np.zeros(16 * 3 + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    values = raw[start:start + 48].reshape(16, 3)
    values[:] = np.arange(48, dtype=np.float32).reshape(16, 3) + 1
    assert values.ctypes.data % 64 == 0
    arr = scree.from_lengths(values, [5, 0, 11])
    out = arr.to("jax")
    assert data_ptr(out.values) == data_ptr(values)
    check_array(out, arr, "jax", "aligned numpy -> jax")
    if torch is not None:
        t = scree.from_lengths(torch.randn(16, 3), [5, 0, 11])
        assert data_ptr(t.to("jax").values) == data_ptr(t.values)


@pytest.mark.parametrize("dt", ["float16", "int32", "int64", "float64", "bool"])
@pytest.mark.parametrize("target", OTHERS)
@pytest.mark.parametrize("source", BACKENDS)
def test_to_keeps_values_of_every_dtype(source, target, dt):
    rng = np.random.default_rng(stable_seed(dt))
    vals = rng.random((6, 2)) < 0.5 if dt == "bool" else random_host((6, 2), dt, rng)
    ref = scree.from_lengths(vals, [2, 0, 4])
    out = on(source, ref).to(target)
    assert out.backend == target
    got = host(out.values)
    assert got.dtype.name == want_dtype(target, want_dtype(source, dt))
    np.testing.assert_array_equal(got, vals.astype(got.dtype))


@pytest.mark.parametrize("target", [p for p in OTHERS if p.values[0] != "numpy"])
@pytest.mark.parametrize("source", [p for p in OTHERS])
def test_to_bfloat16_between_frameworks(source, target):
    """bfloat16 travels between torch, JAX and MLX (NumPy has no bfloat16: a typed error)."""
    vals = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    ns = _backends.get(source)
    arr = scree.from_lengths(ns.astype(native(source, vals), "bfloat16"), [1, 4])
    out = arr.to(target)
    assert _backends.of(out.values).dtype_name(out.values) == "bfloat16"
    np.testing.assert_array_equal(host(out.values), host(arr.values))
    with pytest.raises(scree.DTypeError, match="bfloat16"):
        arr.to("numpy")


@needs_torch
@pytest.mark.parametrize("target", OTHERS)
def test_to_from_torch_detaches(target):
    v = torch.randn(5, 3, requires_grad=True)
    arr = scree.from_lengths(v, [2, 3])
    if target == "torch":
        assert arr.to("torch") is arr
        return
    out = arr.to(target)
    np.testing.assert_array_equal(host(out.values), v.detach().numpy())


# ---- JAX: pytree, jit, grad, vmap ------------------------------------------------------------------

@needs_jax
def test_jax_pytree_leaves_and_tree_map():
    ref = numpy_array([3, 0, 2], (2,), "float32", seed=4)
    arr = on("jax", ref)
    leaves, treedef = jax.tree_util.tree_flatten(arr)
    assert len(leaves) == 2 and leaves[0] is arr.values and leaves[1] is arr.offsets
    doubled = jax.tree.map(lambda x: x * 2 if jnp.issubdtype(x.dtype, jnp.floating) else x, arr)
    assert isinstance(doubled, scree.Array) and doubled.backend == "jax"
    check_array(doubled, ref.map(lambda v: v * 2), "jax", "tree.map")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(arr)[0]]
    assert paths == [".values", ".offsets"]
    assert jax.tree_util.tree_unflatten(treedef, leaves).max_length == 3
    # JAX takes NumPy arrays as its own input (jax.test_util.check_grads feeds them back in): a
    # JAX Array adopts NumPy values; the other way round is a mix of frameworks
    adopted = arr.with_values(ref.values * 3)
    assert adopted.backend == "jax" and isinstance(adopted.values, jax.Array)
    with pytest.raises(scree.BackendError, match="jax"):
        ref.with_values(arr.values)


@needs_jax
def test_jax_jit_compiles_once_per_shape_not_per_offsets():
    """Same (total, n), different offsets (and a different max_length): one trace. Each result is
    still right for its own offsets."""
    traces = []

    @jax.jit
    def f(a: scree.Array):
        traces.append(1)
        p, m = a.to_padded(pad_value=-1.0, max_length=8)
        return (a.sum(), a.mean(), a.max(), a.positions(), a.segment_ids(), a.lengths, a.cu_seqlens(), p, m,
                scree.concat_sequences([a, a]).values)

    for lengths in ([3, 0, 4, 1], [1, 1, 1, 5], [0, 0, 8, 0], [2, 2, 2, 2]):
        ref = numpy_array(lengths, (3,), "float32", seed=sum(i * n for i, n in enumerate(lengths)))
        got = f(on("jax", ref))
        want = (ref.sum(), ref.mean(), ref.max(), ref.positions(), ref.segment_ids(), ref.lengths, ref.cu_seqlens(),
                *ref.to_padded(pad_value=-1.0, max_length=8), scree.concat_sequences([ref, ref]).values)
        for i, (g, w) in enumerate(zip(got, want)):
            check(g, w, "jax", f"jit output {i} for {lengths}", scale=np.abs(host(ref.values)).sum())
    assert len(traces) == 1, f"traced {len(traces)} times"
    f(on("jax", numpy_array([3, 0, 4, 1, 2], (3,), "float32")))  # a new shape (n) traces again
    assert len(traces) == 2


@needs_jax
def test_jax_jit_attention_masked_path_and_errors():
    rng = np.random.default_rng(8)
    lq, lk = [3, 0, 5, 2], [4, 2, 5, 0]
    q = scree.from_lengths(random_host((sum(lq), 4, 8), "float32", rng), lq)
    k = scree.from_lengths(random_host((sum(lk), 2, 8), "float32", rng), lk)
    v = scree.from_lengths(random_host((sum(lk), 2, 8), "float32", rng), lk)
    # the compiled kernel (XLA FFI, where built) and the reference's masked all-tokens path (one
    # option set for the reference: XLA takes ~1 s to compile it here; the eager test covers all)
    for fn, options in ((scree.varlen_attention, ATTN_OPTIONS), (reference.varlen_attention, ATTN_OPTIONS[2:3])):
        for opts in options:
            want, want_lse = reference.varlen_attention(q, k, v, return_lse=True, **opts)
            f = jax.jit(lambda a, b, c: fn(a, b, c, return_lse=True, **opts))
            out, lse = f(*(on("jax", x) for x in (q, k, v)))
            check(out.values, want.values, "jax", f"jit {fn.__module__} {opts}", rtol=2e-5)
            check(lse, want_lse, "jax", f"jit {fn.__module__} lse {opts}", rtol=2e-5)
    arr = on("jax", q)
    with pytest.raises(scree.UnsupportedError, match="max_length"):
        jax.jit(lambda a: a.to_padded()[0])(arr)
    with pytest.raises(scree.UnsupportedError, match="traced"):
        jax.jit(lambda a: a[0])(arr)
    with pytest.raises(scree.UnsupportedError, match="validate=False"):
        jax.jit(lambda v_, o: scree.from_offsets(v_, o).sum())(arr.values, arr.offsets)
    # validate=False inside jit is the documented way to build an Array from traced parts
    got = jax.jit(lambda v_, o: scree.from_offsets(v_, o, validate=False).sum())(arr.values, arr.offsets)
    check(got, q.sum(), "jax", "from_offsets(validate=False) under jit")


@needs_jax
def test_jax_grad_through_values_padding_reductions_attention():
    ref = numpy_array([3, 0, 4], (3,), "float32", seed=5)
    arr = on("jax", ref)
    w = np.random.default_rng(1).standard_normal((3, 5, 3)).astype(np.float32)

    def loss(values):
        a = arr.with_values(values)
        p, _ = a.to_padded(max_length=5)
        return (p * w).sum() + a.sum().sum()

    m = ref.to_padded(max_length=5)[1]
    check(jax.jit(jax.grad(loss))(arr.values), w[m] + 1.0, "jax", "jit(grad) to_padded + sum")
    # eagerly, and with the whole Array as the argument (integer offsets need allow_int): the
    # gradient is an Array
    g = jax.grad(lambda values: (arr.with_values(values).to_padded(max_length=5)[0] * w).sum())(arr.values)
    check(g, w[m], "jax", "eager grad to_padded")
    ga = jax.grad(lambda a: (a.to_padded(max_length=5)[0] * w).sum(), allow_int=True)(arr)
    assert isinstance(ga, scree.Array)
    check(ga.values, w[m], "jax", "grad w.r.t. Array")
    # host offsets (the per-sequence loop; jit only to compile it once rather than op by op) ...
    _check_attention_grad("jax", lambda f, x, arrays: jax.jit(jax.grad(lambda qv: f(qv, *arrays)))(x))
    # ... and offsets traced (Arrays as jit arguments: the masked all-tokens path)
    _check_attention_grad("jax", lambda f, x, arrays: jax.jit(jax.grad(f))(x, *arrays))


def _check_attention_grad(backend: str, grad: Any) -> None:
    """d/dq sum(out * W) of the reference attention against central finite differences of the
    NumPy float64 reference along random directions. grad(f, qv, (q, k, v)) differentiates
    f(qv, q, k, v) in its first argument."""
    rng = np.random.default_rng(11)
    lq = lk = [3, 0, 4]
    q = scree.from_lengths(random_host((7, 2, 4), "float64", rng), lq)
    k = scree.from_lengths(random_host((7, 1, 4), "float64", rng), lk)
    v = scree.from_lengths(random_host((7, 1, 4), "float64", rng), lk)
    W = random_host((7, 2, 4), "float64", rng)
    kb, vb, qb = (on(backend, x.map(lambda t: t.astype(np.float32))) for x in (k, v, q))
    Wb = native(backend, W.astype(np.float32))

    def loss_b(qv, qa, ka, va):
        out = reference.varlen_attention(qa.with_values(qv), ka, va, causal=True, upcast=False)
        return (out.values * Wb).sum()

    g = host(grad(loss_b, qb.values, (qb, kb, vb))).astype(np.float64)

    def loss_np(qv):
        return float((reference.varlen_attention(q.with_values(qv), k, v, causal=True).values * W).sum())

    eps = 1e-5
    for _ in range(3):
        d = rng.standard_normal(q.values.shape)
        fd = (loss_np(q.values + eps * d) - loss_np(q.values - eps * d)) / (2 * eps)
        assert abs(float((g * d).sum()) - fd) <= 1e-3 * (abs(fd) + 1), (backend, float((g * d).sum()), fd)


@needs_jax
def test_jax_vmap_over_a_batch_of_arrays():
    """Arrays of one (total, n) stacked leaf-wise (jax.tree.map) go through jax.vmap."""
    refs = [numpy_array(ls, (2,), "float32", seed=i) for i, ls in enumerate(([2, 0, 3], [1, 4, 0], [5, 0, 0]))]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(on("jax", r) for r in refs))

    def per_example(a):
        h = a.map(lambda t: t[:, None, :])
        return (a.sum(), a.positions(), a.to_padded(max_length=5)[0],
                scree.varlen_attention(h, h, h, causal=True).values,
                reference.varlen_attention(h, h, h, causal=True).values)

    sums, pos, padded, attn, attn_ref = jax.jit(jax.vmap(per_example))(stacked)
    eager_sums = jax.vmap(lambda a: a.sum())(stacked)  # vmap without jit too
    for i, r in enumerate(refs):
        check(eager_sums[i], r.sum(), "jax", f"eager vmap sum {i}")
        r3 = r.map(lambda t: t[:, None, :])
        want = reference.varlen_attention(r3, r3, r3, causal=True).values
        check(attn[i], want, "jax", f"vmap attention {i}", rtol=2e-5)
        check(attn_ref[i], want, "jax", f"vmap reference attention {i}", rtol=2e-5)
        check(sums[i], r.sum(), "jax", f"vmap sum {i}")
        check(pos[i], r.positions(), "jax", f"vmap positions {i}")
        check(padded[i], r.to_padded(max_length=5)[0], "jax", f"vmap to_padded {i}")


# ---- MLX and torch gradients ----------------------------------------------------------------------------

@needs_mlx
def test_mlx_grad_through_values_padding_reductions_attention():
    ref = numpy_array([3, 0, 4], (3,), "float32", seed=5)
    arr = on("mlx", ref)
    w = np.random.default_rng(1).standard_normal((3, 5, 3)).astype(np.float32)
    wb = mx.array(w)

    def loss(values):
        a = arr.with_values(values)
        p, _ = a.to_padded(max_length=5)
        both = scree.concat_sequences([a, a])
        return (p * wb).sum() + a.sum().sum() + both.values.sum()

    g = mx.grad(loss)(arr.values)
    m = ref.to_padded(max_length=5)[1]
    check(g, w[m] + 3.0, "mlx", "mx.grad to_padded + sum + concat_sequences")
    gmean = mx.grad(lambda values: arr.with_values(values).mean().sum())(arr.values)
    lens = np.repeat(np.diff(ref.host_offsets), np.diff(ref.host_offsets)).astype(np.float32)
    check(gmean, np.broadcast_to(1.0 / lens[:, None], (7, 3)).astype(np.float32), "mlx", "mx.grad mean")
    _check_attention_grad("mlx", lambda f, x, arrays: mx.grad(lambda qv: f(qv, *arrays))(x))


@needs_torch
def test_torch_attention_grad_matches_finite_differences():
    def grad(f, x, arrays):
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(x, *arrays), x)
        return g

    _check_attention_grad("torch", grad)


# ---- bad input: mixed backends and devices ------------------------------------------------------------

MIXES = [pytest.param(a.values[0], b.values[0], marks=[*a.marks, *b.marks], id=f"{a.values[0]}-{b.values[0]}")
         for a in BACKENDS for b in OTHERS if a.values[0] != b.values[0]]


@pytest.mark.parametrize("first, other", MIXES)
def test_mixing_backends_is_a_typed_error_naming_both(first, other):
    ref = numpy_array([2, 3], (2,), "float32", seed=1)
    a, b = on(first, ref), on(other, ref)
    with pytest.raises(scree.BackendError, match=f"offsets.*{other}|offsets.*{first}"):
        scree.from_offsets(a.values, b.offsets)
    with pytest.raises(scree.BackendError, match=r"sequences\[1\]"):
        scree.pack([a[0], b[1]])
    with pytest.raises(scree.BackendError, match=r"arrays\[1\]"):
        scree.concat_sequences([a, b])
    with pytest.raises(scree.BackendError):
        a.with_values(b.values)
    q = a.map(lambda t: _backends.of(t).reshape(t, (5, 1, 2)))
    k = b.map(lambda t: _backends.of(t).reshape(t, (5, 1, 2)))
    with pytest.raises(scree.BackendError, match="k"):
        scree.varlen_attention(q, k, q)
    with pytest.raises(scree.BackendError, match="mask"):
        scree.from_padded(a.to_padded()[0], mask=b.to_padded()[1])


@pytest.mark.parametrize("backend", OTHERS)
def test_unknown_device_is_a_typed_error(backend):
    arr = on(backend, numpy_array([1, 2], (), "float32"))
    with pytest.raises(scree.BackendError):
        arr.to("numpy", device="cuda:7")
    if backend != "torch":
        with pytest.raises(scree.BackendError):
            arr.to(backend, device="no-such-device:3")


@needs_jax
def test_jax_arrays_on_two_devices_are_a_typed_error():
    """Two CPU devices (XLA_FLAGS, so a fresh interpreter): values and offsets on different devices,
    or q and k on different devices, raise BackendError naming both devices."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, scree
        d0, d1 = jax.devices("cpu")[:2]
        v = jax.device_put(jnp.ones((5, 2)), d0)
        off = jax.device_put(jnp.array([0, 2, 5]), d1)
        try:
            scree.from_offsets(v, off)
        except scree.BackendError as e:
            print("ERR1", e)
        a = scree.from_offsets(v, jax.device_put(jnp.array([0, 2, 5]), d0))
        b = a.to(device="cpu:1")
        assert b.device == "cpu:1" and a.device == "cpu", (a.device, b.device)
        try:
            scree.concat_sequences([a, b])
        except scree.BackendError as e:
            print("ERR2", e)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("ERR1") and "offsets" in line and "cpu:1" in line for line in lines), proc.stdout
    assert any(line.startswith("ERR2") and "arrays[1]" in line and "cpu:1" in line for line in lines), proc.stdout


def test_concat_sequences_bad_arguments_name_the_culprit():
    a = numpy_array([2, 0, 3], (4,), "float32", seed=1)
    with pytest.raises(scree.ArgumentError):
        scree.concat_sequences([])
    with pytest.raises(scree.ArgumentError, match="list"):
        scree.concat_sequences(a)
    with pytest.raises(scree.BackendError, match=r"arrays\[1\]"):
        scree.concat_sequences([a, a.values])
    with pytest.raises(scree.ShapeError, match=r"arrays\[1\] has 2 sequences"):
        scree.concat_sequences([a, a[:2]])
    with pytest.raises(scree.ShapeError, match=r"arrays\[2\] has feature shape \(2,\)"):
        scree.concat_sequences([a, a, a.map(lambda v: v[:, :2])])
    with pytest.raises(scree.DTypeError, match=r"arrays\[1\] has dtype float64"):
        scree.concat_sequences([a, a.map(lambda v: v.astype(np.float64))])
    assert scree.concat_sequences([a]) is a
    assert scree.concat_sequences((x for x in [a, a])).lengths.tolist() == [4, 0, 6]

"""Shared edge-case data for the layout test suite: length lists, feature shapes, dtypes per
backend, the backends available here, and helpers that make fresh random (never all-zero) values,
build Arrays from them, and compare native arrays exactly or bit for bit. Plain module, no
fixtures (those live in conftest.py); imported by test_array.py, test_layout_kernels.py and
test_properties.py."""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np

import scree

try:
    import torch
except ImportError:  # the NumPy half of the suite runs without torch
    torch = None

# ---- backends and dtypes -------------------------------------------------------------------------

BACKENDS: list[str] = ["numpy"] + (["torch"] if torch is not None else [])

NUMPY_DTYPES = ["float32", "float64", "float16", "int32", "int64"]
TORCH_DTYPES = NUMPY_DTYPES + ["bfloat16"]
DTYPES = {"numpy": NUMPY_DTYPES, "torch": TORCH_DTYPES}
FLOAT_DTYPES = {"float32", "float64", "float16", "bfloat16"}
INT_DTYPES = {"int32", "int64"}

# (backend, dtype) pairs that exist here, for parametrize.
BACKEND_DTYPES: list[tuple[str, str]] = [(b, d) for b in BACKENDS for d in DTYPES[b]]

# ---- layouts -------------------------------------------------------------------------------------

LENGTH_CASES: dict[str, list[int]] = {
    "empty_batch": [],
    "one_empty": [0],
    "one_token": [1],
    "all_empty": [0, 0, 0],
    "mixed": [4, 2, 7],
    "empties_between": [1, 0, 3, 0],
    "leading_trailing_empty": [0, 5, 0],
    "odd": [3, 5, 7, 9, 11],
    "long": [1000],
    "many_short": [1, 2, 1, 3, 1, 1, 2] * 9 + [1],
    "long_and_short": [1, 777, 0, 2, 1],
}
LENGTH_IDS = list(LENGTH_CASES)
NONEMPTY_BATCH_IDS = [k for k, v in LENGTH_CASES.items() if v]

FEATURE_SHAPES: list[tuple[int, ...]] = [(), (8,), (3, 5)]
FEATURE_IDS = ["scalar", "f8", "f3x5"]

# Pad values representable exactly in every dtype above (int and 16-bit floats included).
PAD_VALUES = [0, 7, -3]


def stable_seed(*parts: Any) -> int:
    """A deterministic seed from test parameters (hash() of str is salted per process)."""
    return zlib.crc32(repr(parts).encode())


# ---- values --------------------------------------------------------------------------------------

def random_numpy(shape: Sequence[int], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Fresh random host values of `dtype` (as float32 for bfloat16, which NumPy lacks); never
    all zero when non-empty. Floats are O(1) normals (so 16-bit sums of 1000 terms stay finite),
    integers in [-1000, 1000]."""
    shape = tuple(shape)
    if dtype in INT_DTYPES:
        a = rng.integers(-1000, 1001, size=shape).astype(dtype)
    else:
        a = (rng.standard_normal(shape) * 2.0).astype("float32" if dtype == "bfloat16" else dtype)
    if a.size and not np.any(a):
        a.reshape(-1)[0] = 1
    return a


def random_values(backend: str, shape: Sequence[int], dtype: str, rng: np.random.Generator) -> Any:
    """Fresh random native values (backend 'numpy' or 'torch'), never all zero when non-empty."""
    host = random_numpy(shape, dtype, rng)
    if backend == "numpy":
        return host
    t = torch.from_numpy(np.ascontiguousarray(host))
    if dtype == "bfloat16":
        t = t.to(torch.bfloat16)
        if t.numel() and not bool(t.any()):
            t.reshape(-1)[0] = 1
    return t


def make_array(backend: str, lengths: Sequence[int], feature: Sequence[int] = (), dtype: str = "float32",
               seed: int = 0, offsets_dtype: str = "int64") -> scree.Array:
    """A fresh Array with the given layout over random values (zero-copy from_offsets)."""
    rng = np.random.default_rng(seed)
    lengths = list(lengths)
    values = random_values(backend, (sum(lengths), *feature), dtype, rng)
    offsets = np.zeros(len(lengths) + 1, dtype=offsets_dtype)
    np.cumsum(lengths, out=offsets[1:])
    if backend == "torch":
        offsets = torch.from_numpy(offsets)
    return scree.from_offsets(values, offsets)


def offsets_of(lengths: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=out[1:])
    return out


# ---- inspection ----------------------------------------------------------------------------------

def backend_of(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    raise TypeError(f"not a native array: {type(x)}")


def dtype_name(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return x.dtype.name
    return str(x.dtype).removeprefix("torch.")


def to_host(x: Any) -> np.ndarray:
    """A host NumPy copy/view of a native array; bfloat16 is widened to float32 (exactly)."""
    if isinstance(x, np.ndarray):
        return x
    x = x.detach()
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.cpu().numpy()


def native(backend: str, x: np.ndarray) -> Any:
    """x as an array of `backend` ('numpy', 'torch', 'jax', 'mlx'); the calling test is skipped where
    that framework is not installed."""
    import pytest

    if backend == "numpy":
        return x
    if backend == "torch":
        return pytest.importorskip("torch").from_numpy(np.ascontiguousarray(x))
    if backend == "jax":
        return pytest.importorskip("jax.numpy").asarray(x)
    return pytest.importorskip("mlx.core").array(x)


def host(x: Any) -> np.ndarray:
    """A host NumPy array of an Array's values or of a native array of any backend (torch bfloat16
    widened to float32, exactly)."""
    if isinstance(x, scree.Array):
        x = x.values
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return to_host(x)
    return np.asarray(x)


def data_ptr(x: Any) -> int:
    if isinstance(x, np.ndarray):
        return int(x.__array_interface__["data"][0])
    return int(x.data_ptr())


def shares_memory(a: Any, b: Any) -> bool:
    """Whether two native arrays (any mix of NumPy and torch CPU) overlap in memory."""
    def host(x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return x
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.view(torch.int16)
        return x.numpy()
    return bool(np.shares_memory(host(a), host(b)))


def _bits(x: Any) -> np.ndarray:
    """The raw bytes of x's elements in logical (row-major) order, one row of itemsize bytes each."""
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
    else:
        t = x.detach().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        a = t.numpy()
    return a.reshape(-1).view(np.uint8).reshape(-1, a.itemsize) if a.size else np.zeros((0, a.itemsize), np.uint8)


def assert_identical(actual: Any, expected: Any, what: str = "") -> None:
    """Same framework, dtype, shape and the same bits element for element (NaN-safe)."""
    assert backend_of(actual) == backend_of(expected), f"{what}: {backend_of(actual)} vs {backend_of(expected)}"
    assert dtype_name(actual) == dtype_name(expected), f"{what}: dtype {dtype_name(actual)} vs {dtype_name(expected)}"
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    ba, be = _bits(actual), _bits(expected)
    if not np.array_equal(ba, be):
        rows = np.flatnonzero(np.any(ba != be, axis=1))
        flat_a, flat_e = to_host(actual).reshape(-1), to_host(expected).reshape(-1)
        i = int(rows[0])
        raise AssertionError(f"{what}: {len(rows)} elements differ; first at flat index {i}: "
                             f"{flat_a[i]!r} vs {flat_e[i]!r}")


def assert_arrays_identical(actual: scree.Array, expected: scree.Array, what: str = "") -> None:
    """Two Arrays hold the same layout (offsets values, host offsets) and bit-identical values."""
    assert actual.backend == expected.backend, what
    np.testing.assert_array_equal(actual.host_offsets, expected.host_offsets, err_msg=what)
    np.testing.assert_array_equal(to_host(actual.offsets).astype(np.int64), actual.host_offsets, err_msg=what)
    assert actual.max_length == expected.max_length, what
    assert actual.num_sequences == expected.num_sequences, what
    assert_identical(actual.values, expected.values, what)


# Unit roundoff of each dtype's own rounding, and of the accumulator the C++ kernels use for it
# (float32 for 16-bit floats, the dtype itself otherwise); the reference accumulates in float64.
ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "float32": 2.0 ** -24, "float64": 2.0 ** -53}
ACCUM_ROUNDOFF = {"float16": 2.0 ** -24, "bfloat16": 2.0 ** -24, "float32": 2.0 ** -24, "float64": 2.0 ** -53}


def reduction_bound(arr: scree.Array, op: str) -> np.ndarray:
    """Per-output error bound between two correctly implemented float reductions that
    accumulate differently: recursive summation error n*u_acc*sum|x| (both sides), plus one
    rounding to the output dtype on each side (2 * u_out * |result|, added by the caller)."""
    dt = dtype_name(arr.values)
    host = to_host(arr.values).astype(np.float64)
    off = arr.host_offsets
    n = arr.num_sequences
    abs_sum = np.zeros((n, *arr.feature_shape))
    for i in range(n):
        abs_sum[i] = np.abs(host[off[i]:off[i + 1]]).sum(axis=0)
    lens = np.diff(off).astype(np.float64).reshape((n,) + (1,) * len(arr.feature_shape))
    bound = (lens + 1) * ACCUM_ROUNDOFF[dt] * abs_sum * 2
    if op == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            bound = np.where(lens > 0, bound / np.maximum(lens, 1), 0.0)
    return bound


def assert_reduction_matches(actual: Any, expected: Any, arr: scree.Array, op: str, what: str = "") -> None:
    """A compiled reduction against the reference: exact for integers and for max (a selection,
    no arithmetic); within reduction_bound for float sum/mean; NaN exactly where the reference
    has NaN (mean of an empty sequence)."""
    assert backend_of(actual) == backend_of(expected), what
    assert dtype_name(actual) == dtype_name(expected), f"{what}: dtype {dtype_name(actual)} vs {dtype_name(expected)}"
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    dt = dtype_name(arr.values)
    if op == "max" or dt in INT_DTYPES:
        assert_identical(actual, expected, what)
        return
    a = to_host(actual).astype(np.float64)
    e = to_host(expected).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{what}: NaN pattern")
    ok = ~np.isnan(e)
    bound = reduction_bound(arr, op) + 2 * ROUNDOFF[dtype_name(actual)] * np.abs(e)
    err = np.abs(a - e)
    bad = ok & (err > bound)
    assert not bad.any(), (f"{what}: {int(bad.sum())} outputs off by more than the bound; worst "
                           f"{float(np.max(np.where(ok, err - bound, -np.inf)))} beyond it")


def make_cache(rng, lens, page_size, hk, d, layout="NHD", dtype=np.float32, spare=3):
    """A paged KV cache (k_pages, v_pages, page_table, kv_lens) as NumPy holding lens[i] tokens of
    sequence i: pages shuffled, `spare` unused pages, table entries past a sequence's pages garbage."""
    need = [-(-n // page_size) for n in lens]
    num_pages = sum(need) + spare
    order = rng.permutation(num_pages)
    width = max(need, default=0) + 1
    table = rng.integers(-5, 10 * num_pages, size=(len(lens), width))  # garbage past the used pages
    at = 0
    for i, k in enumerate(need):
        table[i, :k] = order[at:at + k]
        at += k
    shape = (num_pages, page_size, hk, d) if layout == "NHD" else (num_pages, hk, page_size, d)
    kp = (rng.standard_normal(shape) + 0.1).astype(dtype)
    vp = (rng.standard_normal(shape) + 0.1).astype(dtype)
    return kp, vp, table.astype(np.int32), np.asarray(lens, dtype=np.int32)

"""The scree.Array surface on every backend (NumPy, torch CPU): constructors and their zero-copy
promises, padding round trips, indexing, iteration, per-token index arrays, per-sequence
reductions, with_values/map, conversions between backends, repr, and autograd through torch
tensors that require grad. Expected values come from plain per-sequence Python/NumPy loops written
here, not from scree.kernels.reference (test_layout_kernels.py checks the kernels against that)."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from cases import (
    BACKEND_DTYPES,
    FEATURE_IDS,
    FEATURE_SHAPES,
    FLOAT_DTYPES,
    INT_DTYPES,
    LENGTH_CASES,
    LENGTH_IDS,
    NONEMPTY_BATCH_IDS,
    PAD_VALUES,
    assert_identical,
    backend_of,
    data_ptr,
    dtype_name,
    make_array,
    offsets_of,
    random_values,
    shares_memory,
    stable_seed,
    to_host,
    torch,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see conftest.py
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def native(backend: str, a: np.ndarray):
    """A host NumPy array as a native array of `backend` (zero-copy for torch)."""
    return a if backend == "numpy" else torch.from_numpy(a if a.flags.c_contiguous else a.copy())


def seqs_of(values: np.ndarray, lengths) -> list[np.ndarray]:
    off = offsets_of(lengths)
    return [values[off[i]:off[i + 1]] for i in range(len(lengths))]


# ---- constructors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", NONEMPTY_BATCH_IDS)
@pytest.mark.parametrize("feature", FEATURE_SHAPES, ids=FEATURE_IDS)
def test_pack_unpack_roundtrip(backend, case, feature, rng):
    lengths = LENGTH_CASES[case]
    seqs = [random_values(backend, (n, *feature), "float32", rng) for n in lengths]
    arr = scree.pack(seqs)
    assert isinstance(arr, scree.Array)
    assert arr.backend == backend and len(arr) == len(lengths)
    assert arr.total == sum(lengths) and arr.feature_shape == tuple(feature)
    np.testing.assert_array_equal(to_host(arr.lengths), lengths)
    assert arr.max_length == max(lengths)
    expected = np.concatenate([to_host(s) for s in seqs]) if sum(lengths) else np.zeros((0, *feature), np.float32)
    np.testing.assert_array_equal(to_host(arr.values), expected)
    out = scree.unpack(arr)
    assert len(out) == len(seqs)
    for got, want in zip(out, seqs):
        assert backend_of(got) == backend
        assert_identical(got, want)


def test_pack_integers_with_an_empty_sequence(backend, rng):
    seqs = [random_values(backend, (n, 2), "int32", rng) for n in (3, 0, 2)]
    arr = scree.pack(seqs)
    assert dtype_name(arr.values) == "int32"
    np.testing.assert_array_equal(to_host(arr.values)[3:], to_host(seqs[2]))


def test_unpack_is_zero_copy(backend, rng):
    arr = make_array(backend, [3, 0, 4], (2,), seed=1)
    for i, seq in enumerate(arr.unpack()):
        if seq.shape[0]:
            assert shares_memory(seq, arr.values), i
    assert data_ptr(arr.unpack()[2]) == data_ptr(arr.values) + 3 * 2 * 4


@pytest.mark.parametrize("offsets_dtype", ["int32", "int64"])
@pytest.mark.parametrize("case", LENGTH_IDS)
def test_from_offsets_zero_copy(backend, offsets_dtype, case, rng):
    lengths = LENGTH_CASES[case]
    values = random_values(backend, (sum(lengths), 3), "float32", rng)
    offsets = native(backend, offsets_of(lengths).astype(offsets_dtype))
    arr = scree.from_offsets(values, offsets)
    assert arr.values is values
    assert arr.offsets is offsets  # the offsets object itself is kept
    assert len(arr) == len(lengths)
    np.testing.assert_array_equal(arr.host_offsets, offsets_of(lengths))
    assert arr.max_length == max(lengths, default=0)
    for got, want in zip(arr, seqs_of(to_host(values), lengths)):
        np.testing.assert_array_equal(to_host(got), want)
    if offsets_dtype == "int32":
        assert arr.cu_seqlens() is offsets  # zero-copy FlashAttention view


def test_from_offsets_accepts_python_list(backend, rng):
    values = random_values(backend, (6,), "float64", rng)
    arr = scree.from_offsets(values, [0, 2, 2, 6])
    assert backend_of(arr.offsets) == backend
    np.testing.assert_array_equal(to_host(arr.lengths), [2, 0, 4])


def test_from_offsets_validate_false_trusts_caller(backend, rng):
    values = random_values(backend, (5, 2), "float32", rng)
    offsets = native(backend, np.array([0, 1, 5], np.int64))
    arr = scree.from_offsets(values, offsets, validate=False)
    assert arr.offsets is offsets and arr.max_length == 4
    with pytest.raises(scree.RaggedError):
        scree.from_offsets(values, native(backend, np.array([0, 6, 5], np.int64)))


@pytest.mark.parametrize("lengths_kind", ["list", "numpy", "native_int32"])
@pytest.mark.parametrize("case", LENGTH_IDS)
def test_from_lengths_zero_copy(backend, lengths_kind, case, rng):
    lengths = LENGTH_CASES[case]
    values = random_values(backend, (sum(lengths), 2, 2), "float16", rng)
    if lengths_kind == "list":
        given = list(lengths)
    elif lengths_kind == "numpy":
        given = np.asarray(lengths, dtype=np.int64)  # host lengths work for any backend
    else:
        given = native(backend, np.asarray(lengths, dtype=np.int32))
    arr = scree.from_lengths(values, given)
    assert arr.values is values
    np.testing.assert_array_equal(to_host(arr.offsets), offsets_of(lengths))
    assert dtype_name(arr.lengths) == "int64"
    np.testing.assert_array_equal(to_host(arr.lengths), lengths)
    assert arr.max_length == max(lengths, default=0)


def test_from_lengths_wrong_total_is_rejected(backend, rng):
    values = random_values(backend, (5,), "float32", rng)
    with pytest.raises(scree.RaggedError):
        scree.from_lengths(values, [2, 2])
    with pytest.raises(scree.RaggedError):
        scree.from_lengths(values, [3, -1, 3])


@pytest.mark.parametrize("with_max", [False, True])
def test_from_cu_seqlens_zero_copy(backend, with_max, rng):
    lengths = [3, 0, 5, 1]
    values = random_values(backend, (9, 4, 8), "float32", rng)
    cu = native(backend, offsets_of(lengths).astype(np.int32))
    arr = scree.from_cu_seqlens(values, cu, max_seqlen=7 if with_max else None)
    assert arr.values is values and arr.offsets is cu and arr.cu_seqlens() is cu
    assert data_ptr(arr.values) == data_ptr(values)
    assert arr.max_length == (7 if with_max else 5)
    with pytest.raises(scree.ArgumentError):
        scree.from_cu_seqlens(values, cu, max_seqlen=4)  # shorter than the longest sequence


def test_from_cu_seqlens_trusted_with_max_seqlen(backend, rng):
    values = random_values(backend, (4, 2), "float32", rng)
    cu = native(backend, np.array([0, 1, 4], np.int32))
    arr = scree.from_cu_seqlens(values, cu, max_seqlen=3, validate=False)
    assert arr.offsets is cu and arr.max_length == 3 and len(arr) == 2


def test_array_constructor_directly(backend, rng):
    values = random_values(backend, (4, 3), "int64", rng)
    arr = scree.Array(values, native(backend, np.array([0, 4, 4], np.int64)))
    assert arr.total == 4 and arr.num_sequences == 2 and arr.max_length == 4
    assert arr.dtype == values.dtype and arr.device == "cpu"
    with pytest.raises(scree.ShapeError):
        scree.Array(native(backend, np.array(1.5)), native(backend, np.array([0], np.int64)))


# ---- padding ---------------------------------------------------------------------------------------

def expected_padded(arr: scree.Array, pad, side: str, length: int):
    """(padded, mask) as host NumPy, built with a plain loop over sequences."""
    host = to_host(arr.values)
    n = arr.num_sequences
    padded = np.full((n, length, *arr.feature_shape), pad, dtype=host.dtype)
    mask = np.zeros((n, length), dtype=bool)
    for i, seq in enumerate(seqs_of(host, np.diff(arr.host_offsets))):
        k = len(seq)
        sl = slice(0, k) if side == "right" else slice(length - k, length)
        padded[i, sl] = seq
        mask[i, sl] = True
    return padded, mask


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("extra", [None, 0, 3])
@pytest.mark.parametrize("case", LENGTH_IDS)
def test_to_padded(backend, side, extra, case):
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (2,), "float32", seed=stable_seed(case, side))
    length = arr.max_length if extra is None else arr.max_length + extra
    for pad in PAD_VALUES:
        padded, mask = arr.to_padded(pad_value=pad, padding_side=side,
                                     max_length=None if extra is None else length)
        assert backend_of(padded) == backend and backend_of(mask) == backend
        assert tuple(padded.shape) == (len(lengths), length, 2)
        assert dtype_name(padded) == "float32" and dtype_name(mask) == "bool"
        want_p, want_m = expected_padded(arr, pad, side, length)
        np.testing.assert_array_equal(to_host(mask), want_m, err_msg=f"pad={pad}")
        np.testing.assert_array_equal(to_host(padded), want_p, err_msg=f"pad={pad}")
        np.testing.assert_array_equal(to_host(mask).sum(axis=1), lengths)


@pytest.mark.parametrize("backend_dtype", BACKEND_DTYPES, ids=[f"{b}-{d}" for b, d in BACKEND_DTYPES])
def test_to_padded_every_dtype_keeps_dtype_and_pad(backend_dtype):
    backend, dt = backend_dtype
    arr = make_array(backend, [2, 0, 3], (3,), dt, seed=5)
    padded, mask = arr.to_padded(pad_value=-3, max_length=4)
    assert dtype_name(padded) == dt
    want_p, want_m = expected_padded(arr, -3, "right", 4)
    np.testing.assert_array_equal(to_host(padded), want_p)
    np.testing.assert_array_equal(to_host(mask), want_m)


def test_to_padded_nan_pad(backend):
    arr = make_array(backend, [1, 3], (), "float64", seed=2)
    padded, mask = arr.to_padded(pad_value=float("nan"))
    host = to_host(padded)
    assert np.isnan(host[~to_host(mask)]).all() and not np.isnan(host[to_host(mask)]).any()


def test_to_padded_max_length_too_short(backend):
    arr = make_array(backend, [2, 5], (), seed=3)
    with pytest.raises(scree.ShapeError):
        arr.to_padded(max_length=4)
    with pytest.raises(scree.ArgumentError):
        arr.to_padded(padding_side="middle")


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("extra", [0, 2])
@pytest.mark.parametrize("case", LENGTH_IDS)
def test_from_padded_roundtrip(backend, side, extra, case):
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (3,), "float64", seed=stable_seed(case, side, extra))
    padded, mask = arr.to_padded(pad_value=7, padding_side=side, max_length=arr.max_length + extra)
    for how in ("mask", "int_mask", "lengths", "native_lengths"):
        if how == "mask":
            back = scree.from_padded(padded, mask=mask)
        elif how == "int_mask":
            back = scree.from_padded(padded, mask=native(backend, to_host(mask).astype(np.int32)))
        elif how == "lengths":
            back = scree.from_padded(padded, lengths=list(lengths), padding_side=side)
        else:
            back = scree.from_padded(padded, lengths=arr.lengths, padding_side=side)
        assert back.backend == backend, how
        np.testing.assert_array_equal(back.host_offsets, arr.host_offsets, err_msg=how)
        np.testing.assert_array_equal(to_host(back.offsets), arr.host_offsets, err_msg=how)
        assert back.max_length == arr.max_length, how
        assert_identical(back.values, arr.values, how)


def test_from_padded_neither_mask_nor_lengths(backend, rng):
    padded = random_values(backend, (3, 4, 2), "float32", rng)
    arr = scree.from_padded(padded)
    np.testing.assert_array_equal(to_host(arr.lengths), [4, 4, 4])
    assert arr.max_length == 4
    np.testing.assert_array_equal(to_host(arr.values), to_host(padded).reshape(12, 2))


def test_from_padded_scattered_mask(backend, rng):
    """A mask with holes: tokens are taken where it is true, in order."""
    padded = random_values(backend, (2, 5), "int64", rng)
    m = np.array([[1, 0, 1, 0, 1], [0, 0, 0, 0, 0]], dtype=bool)
    arr = scree.from_padded(padded, mask=native(backend, m))
    np.testing.assert_array_equal(to_host(arr.lengths), [3, 0])
    np.testing.assert_array_equal(to_host(arr.values), to_host(padded)[0, [0, 2, 4]])


def test_from_padded_bad_arguments(backend, rng):
    padded = random_values(backend, (2, 3), "float32", rng)
    m = native(backend, np.ones((2, 3), bool))
    with pytest.raises(scree.ArgumentError):
        scree.from_padded(padded, mask=m, lengths=[1, 1])
    with pytest.raises(scree.ShapeError):
        scree.from_padded(padded, mask=native(backend, np.ones((2, 2), bool)))
    with pytest.raises(scree.ShapeError):
        scree.from_padded(padded, lengths=[1, 2, 3])


# ---- indexing, iteration, len ----------------------------------------------------------------------

def expected_seqs(arr: scree.Array) -> list[np.ndarray]:
    return seqs_of(to_host(arr.values), np.diff(arr.host_offsets))


def assert_array_has(arr: scree.Array, seqs: list[np.ndarray], backend: str) -> None:
    assert arr.backend == backend
    assert len(arr) == len(seqs)
    np.testing.assert_array_equal(to_host(arr.lengths), [len(s) for s in seqs])
    np.testing.assert_array_equal(to_host(arr.offsets), offsets_of([len(s) for s in seqs]))
    assert arr.max_length == max((len(s) for s in seqs), default=0)
    for got, want in zip(arr, seqs):
        np.testing.assert_array_equal(to_host(got), want)


@pytest.mark.parametrize("case", NONEMPTY_BATCH_IDS)
def test_int_indexing(backend, case):
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (2,), "float32", seed=stable_seed(case))
    want = expected_seqs(arr)
    n = len(lengths)
    for i in list(range(n)) + [-1, -n]:
        got = arr[i]
        assert backend_of(got) == backend
        np.testing.assert_array_equal(to_host(got), want[i])
        if got.shape[0]:
            assert shares_memory(got, arr.values)  # a view
    assert_identical(arr[np.int64(n - 1)], arr[n - 1])
    for bad in (n, -n - 1):
        with pytest.raises(IndexError):
            arr[bad]


def test_zero_d_integer_index_acts_like_int(backend):
    arr = make_array(backend, [2, 0, 3], (), seed=4)
    assert_identical(arr[np.array(2)], arr[2])
    if backend == "torch":
        assert_identical(arr[torch.tensor(-3)], arr[0])


SLICES = [slice(None), slice(1, None), slice(None, -1), slice(2, 1), slice(5, 5), slice(0, 0),
          slice(None, None, 2), slice(1, None, 3), slice(None, None, -1), slice(-2, None, -2), slice(100, 200)]


@pytest.mark.parametrize("case", LENGTH_IDS)
def test_slicing(backend, case):
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (3,), "float32", seed=stable_seed(case))
    want = expected_seqs(arr)
    for sl in SLICES:
        sub = arr[sl]
        assert isinstance(sub, scree.Array), sl
        assert_array_has(sub, want[sl], backend)
        if sl.step in (None, 1) and sub.total:
            assert shares_memory(sub.values, arr.values), sl  # contiguous slices are views


@pytest.mark.parametrize("kind", ["list", "numpy_int64", "numpy_int32", "native", "bool_numpy", "bool_native"])
@pytest.mark.parametrize("case", LENGTH_IDS)
def test_fancy_indexing(backend, kind, case, rng):
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (2,), "int64", seed=stable_seed(case, kind))
    n = len(lengths)
    want_all = expected_seqs(arr)
    if kind.startswith("bool"):
        sel = rng.random(n) < 0.5
        index = sel if kind == "bool_numpy" else native(backend, sel)
        want = [want_all[i] for i in np.flatnonzero(sel)]
    else:
        picks = rng.integers(-n, n, size=2 * n + 1).tolist() if n else []
        if kind == "list":
            index = picks
        elif kind.startswith("numpy"):
            index = np.asarray(picks, dtype=kind.split("_")[1])
        else:
            index = native(backend, np.asarray(picks, dtype=np.int64))
        want = [want_all[i] for i in picks]
    sub = arr[index]
    assert_array_has(sub, want, backend)
    assert dtype_name(sub.values) == "int64"


def test_empty_index_list(backend):
    arr = make_array(backend, [3, 1], (4,), seed=6)
    sub = arr[[]]
    assert len(sub) == 0 and sub.total == 0 and sub.feature_shape == (4,) and sub.max_length == 0
    np.testing.assert_array_equal(to_host(sub.offsets), [0])


def test_bad_indices(backend):
    arr = make_array(backend, [3, 1], (), seed=7)
    with pytest.raises(IndexError):
        arr[[0, 2]]
    with pytest.raises(scree.ShapeError):
        arr[np.array([True, False, True])]
    with pytest.raises(scree.ArgumentError):
        arr[np.array([0.5])]


@pytest.mark.parametrize("case", LENGTH_IDS)
def test_iteration_and_len(backend, case):
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (3, 5), "float16", seed=stable_seed(case))
    assert len(arr) == len(lengths) == arr.num_sequences
    items = list(arr)
    assert len(items) == len(lengths)
    for got, want, n in zip(items, expected_seqs(arr), lengths):
        assert backend_of(got) == backend and tuple(got.shape) == (n, 3, 5)
        np.testing.assert_array_equal(to_host(got), want)


# ---- positions / segment ids -------------------------------------------------------------------------

@pytest.mark.parametrize("dt", ["int32", "int64"])
@pytest.mark.parametrize("case", LENGTH_IDS)
def test_positions_and_segment_ids(backend, dt, case):
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (2,), seed=stable_seed(case))
    pos, seg = arr.positions(dt), arr.segment_ids(dt)
    assert backend_of(pos) == backend and dtype_name(pos) == dt and tuple(pos.shape) == (sum(lengths),)
    assert backend_of(seg) == backend and dtype_name(seg) == dt and tuple(seg.shape) == (sum(lengths),)
    want_pos = [p for n in lengths for p in range(n)]
    want_seg = [i for i, n in enumerate(lengths) for _ in range(n)]
    np.testing.assert_array_equal(to_host(pos), want_pos)
    np.testing.assert_array_equal(to_host(seg), want_seg)


def test_positions_default_dtype_and_bad_dtype(backend):
    arr = make_array(backend, [2, 3], seed=8)
    assert dtype_name(arr.positions()) == "int64" and dtype_name(arr.segment_ids()) == "int64"
    with pytest.raises(scree.ArgumentError):
        arr.positions("float32")
    with pytest.raises(scree.ArgumentError):
        arr.segment_ids("int16")


# ---- reductions --------------------------------------------------------------------------------------

def expected_reduction(arr: scree.Array, op: str) -> np.ndarray:
    """Per-sequence reduction by a Python loop over sequences, in float64/int64 on the host."""
    host = to_host(arr.values)
    is_int = dtype_name(arr.values) in INT_DTYPES
    out = []
    for seq in seqs_of(host, np.diff(arr.host_offsets)):
        if op == "sum":
            out.append(seq.astype(np.int64 if is_int else np.float64).sum(axis=0))
        elif op == "mean":
            out.append(seq.astype(np.float64).mean(axis=0) if len(seq) else np.full(arr.feature_shape, np.nan))
        elif len(seq):
            out.append(seq.max(axis=0).astype(np.float64 if not is_int else np.int64))
        else:
            low = np.iinfo(dtype_name(arr.values)).min if is_int else -np.inf
            out.append(np.full(arr.feature_shape, low))
    return np.array(out).reshape((arr.num_sequences, *arr.feature_shape))


TOL = {"float64": 1e-12, "float32": 2e-5, "float16": 3e-3, "bfloat16": 2e-2}


@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@pytest.mark.parametrize("case", LENGTH_IDS)
@pytest.mark.parametrize("backend_dtype", BACKEND_DTYPES, ids=[f"{b}-{d}" for b, d in BACKEND_DTYPES])
def test_reductions(backend_dtype, case, op):
    backend, dt = backend_dtype
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (3,), dt, seed=stable_seed(case, dt))
    if op == "mean" and dt in INT_DTYPES:
        with pytest.raises(scree.DTypeError):
            arr.mean()
        return
    out = getattr(arr, op)()
    assert backend_of(out) == backend
    assert tuple(out.shape) == (len(lengths), 3)
    want_dt = "int64" if (op == "sum" and dt in INT_DTYPES) else dt
    assert dtype_name(out) == want_dt
    got, want = to_host(out), expected_reduction(arr, op)
    empty = np.asarray(lengths) == 0
    if op == "sum":
        assert (got[empty] == 0).all()
    elif op == "mean":
        assert np.isnan(got[empty].astype(np.float64)).all()
        assert not np.isnan(got[~empty].astype(np.float64)).any()
    elif dt in FLOAT_DTYPES:
        assert (got[empty] == -np.inf).all()
    else:
        assert (got[empty] == np.iinfo(dt).min).all()
    if dt in INT_DTYPES or op == "max":
        np.testing.assert_array_equal(got, want)
    else:
        scale = expected_reduction(arr.map(lambda v: abs(v)), "sum" if op == "sum" else "mean")
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=TOL[dt],
                                   atol=float(TOL[dt] * np.nanmax(scale, initial=1.0)), equal_nan=True)


def test_reductions_of_empty_batch_and_feature_shapes(backend):
    arr = make_array(backend, [], (3, 5), "float32", seed=9)
    for op in ("sum", "mean", "max"):
        out = getattr(arr, op)()
        assert tuple(out.shape) == (0, 3, 5) and backend_of(out) == backend


def test_max_propagates_nan(backend):
    values = native(backend, np.array([1.0, np.nan, 2.0, 5.0], np.float32))
    arr = scree.from_lengths(values, [3, 1])
    got = to_host(arr.max())
    assert np.isnan(got[0]) and got[1] == 5.0


# ---- with_values, map, layout accessors -----------------------------------------------------------------

def test_with_values_and_map(backend, rng):
    arr = make_array(backend, [2, 0, 3], (4,), "float32", seed=10)
    new = random_values(backend, (5, 7), "float64", rng)
    w = arr.with_values(new)
    assert w.values is new and w.offsets is arr.offsets and w.max_length == arr.max_length
    assert w.feature_shape == (7,)
    np.testing.assert_array_equal(to_host(w[2]), to_host(new)[2:5])
    m = arr.map(lambda v: v * 2 + 1)
    assert m.offsets is arr.offsets
    np.testing.assert_array_equal(to_host(m.values), to_host(arr.values) * 2 + 1)
    with pytest.raises(scree.ShapeError):
        arr.with_values(random_values(backend, (4, 4), "float32", rng))
    with pytest.raises(scree.ShapeError):
        arr.map(lambda v: v[:-1])


@pytest.mark.parametrize("offsets_dtype", ["int32", "int64"])
@pytest.mark.parametrize("case", LENGTH_IDS)
def test_layout_accessors(backend, offsets_dtype, case):
    lengths = LENGTH_CASES[case]
    arr = make_array(backend, lengths, (2,), seed=stable_seed(case), offsets_dtype=offsets_dtype)
    cu = arr.cu_seqlens()
    assert backend_of(cu) == backend and dtype_name(cu) == "int32"
    np.testing.assert_array_equal(to_host(cu), offsets_of(lengths))
    assert arr.cu_seqlens() is cu  # cached
    if offsets_dtype == "int32":
        assert cu is arr.offsets
    lens = arr.lengths
    assert backend_of(lens) == backend and dtype_name(lens) == "int64"
    np.testing.assert_array_equal(to_host(lens), lengths)
    assert isinstance(arr.max_length, int) and arr.max_length == max(lengths, default=0)
    assert arr.host_offsets.dtype == np.int64
    np.testing.assert_array_equal(arr.host_offsets, offsets_of(lengths))
    assert arr.total == sum(lengths) and arr.feature_shape == (2,) and arr.backend == backend


# ---- conversions ---------------------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("offsets_dtype", ["int32", "int64"])
@pytest.mark.parametrize("dt", ["float32", "float16", "int32", "int64", "float64"])
def test_to_other_backend_zero_copy(offsets_dtype, dt):
    arr = make_array("numpy", [3, 0, 4], (2,), dt, seed=11, offsets_dtype=offsets_dtype)
    t = arr.to("torch")
    assert t.backend == "torch" and isinstance(t.values, torch.Tensor) and isinstance(t.offsets, torch.Tensor)
    assert t.device == "cpu"
    assert shares_memory(t.values, arr.values) and shares_memory(t.offsets, arr.offsets)
    assert data_ptr(t.values) == data_ptr(arr.values)
    assert dtype_name(t.values) == dt and dtype_name(t.offsets) == offsets_dtype
    assert t.max_length == 4 and len(t) == 3
    back = t.to("numpy")
    assert back.backend == "numpy" and isinstance(back.values, np.ndarray)
    assert shares_memory(back.values, arr.values) and shares_memory(back.offsets, arr.offsets)
    assert_identical(back.values, arr.values)
    np.testing.assert_array_equal(to_host(t.sum()), to_host(arr.sum()))


def test_to_same_backend_is_identity(backend):
    arr = make_array(backend, [1, 2], seed=12)
    assert arr.to(backend) is arr
    assert arr.to() is arr
    assert arr.to(device="cpu") is arr
    with pytest.raises(scree.BackendError):
        arr.to("no-such-framework")


# ---- repr ------------------------------------------------------------------------------------------------

def test_repr(backend):
    arr = make_array(backend, [3, 0, 4], (2,), "int32", seed=13)
    r = repr(arr)
    assert r.startswith("scree.Array(")
    for part in (f"backend={backend}", "n=3", "total=7", "lengths=[3, 0, 4]", "feature_shape=(2,)", "dtype=int32"):
        assert part in r, (part, r)
    many = make_array(backend, list(range(1, 11)), (), seed=14)
    assert "..." in repr(many) and "lengths=[1, 2, 3, 4, 5, 6, 7, 8, ...]" in repr(many)
    assert "n=0" in repr(make_array(backend, [], (), seed=15))


# ---- autograd ----------------------------------------------------------------------------------------------

def grad_values(lengths, feature=(3,), dtype=None):
    torch.manual_seed(sum(lengths) + len(lengths))
    v = torch.randn(sum(lengths), *feature, dtype=dtype or torch.float64, requires_grad=True)
    return v, scree.from_lengths(v, lengths)


@needs_torch
@pytest.mark.parametrize("side", ["right", "left"])
def test_to_padded_autograd(side):
    v, arr = grad_values([3, 0, 4])
    padded, mask = arr.to_padded(pad_value=5.0, padding_side=side, max_length=6)
    assert padded.requires_grad and not mask.requires_grad
    weights = torch.arange(1.0, 7.0, dtype=torch.float64)[None, :, None].expand(3, 6, 3)
    (padded * weights).sum().backward()
    want = torch.cat([weights[i][mask[i]] for i in range(3)])
    torch.testing.assert_close(v.grad, want, rtol=0, atol=0)
    np.testing.assert_array_equal(padded.detach().numpy()[~mask.numpy()], 5.0)


@needs_torch
@pytest.mark.parametrize("how", ["mask", "lengths", "neither"])
def test_from_padded_autograd(how):
    torch.manual_seed(1)
    padded = torch.randn(2, 4, 3, requires_grad=True)
    m = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    if how == "mask":
        arr = scree.from_padded(padded, mask=m)
    elif how == "lengths":
        arr = scree.from_padded(padded, lengths=[2, 3], padding_side="left")
        m = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    else:
        arr = scree.from_padded(padded)
        m = torch.ones(2, 4, dtype=torch.bool)
    assert arr.values.requires_grad
    torch.testing.assert_close(arr.values.detach(), padded.detach()[m], rtol=0, atol=0)
    w = torch.randn(arr.values.shape)
    (arr.values * w).sum().backward()
    want = torch.zeros(2, 4, 3)
    want[m] = w
    torch.testing.assert_close(padded.grad, want, rtol=0, atol=0)


@needs_torch
def test_reductions_autograd():
    v, arr = grad_values([3, 0, 4])
    (g,) = torch.autograd.grad(arr.sum().sum(), v)
    torch.testing.assert_close(g, torch.ones_like(v))
    (g,) = torch.autograd.grad(arr.mean()[[0, 2]].sum(), v)
    want = torch.tensor([1 / 3] * 3 + [1 / 4] * 4, dtype=torch.float64)[:, None].expand(7, 3)
    torch.testing.assert_close(g, want)
    (g,) = torch.autograd.grad(arr.max()[[0, 2]].sum(), v)
    assert g.sum().item() == pytest.approx(6.0)  # one winner per (sequence, feature)
    vd = v.detach()
    winners = torch.stack([vd[0:3].argmax(0), vd[3:7].argmax(0) + 3])
    for f in range(3):
        assert set(torch.nonzero(g[:, f]).flatten().tolist()) == set(winners[:, f].tolist())


@needs_torch
def test_pack_and_gather_autograd():
    torch.manual_seed(2)
    a = torch.randn(3, 2, requires_grad=True)
    b = torch.randn(2, 2, requires_grad=True)
    arr = scree.pack([a, b])
    assert arr.values.requires_grad
    sub = arr[[1, 1]]
    (sub.values * 3).sum().backward()
    torch.testing.assert_close(b.grad, torch.full((2, 2), 6.0))
    assert a.grad is None or bool((a.grad == 0).all())


@needs_torch
def test_no_grad_context_uses_kernels_and_detaches():
    v, arr = grad_values([2, 3])
    with torch.no_grad():
        padded, _ = arr.to_padded()
        s = arr.sum()
    assert not padded.requires_grad and not s.requires_grad
    torch.testing.assert_close(s, torch.stack([v.detach()[:2].sum(0), v.detach()[2:].sum(0)]))

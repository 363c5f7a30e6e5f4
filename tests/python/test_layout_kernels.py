"""Every compiled layout kernel path (host NumPy arrays and torch CPU tensors -> scree._C) against
the readable spec, scree.kernels.reference, on both backends, every dtype and every case in
cases.py. Copies (pack, gather, pad, unpad, positions, segment ids, max) must agree bit for bit;
float sum/mean agree within a rounding bound (the C++ kernels accumulate 16-bit floats in float32
and float32 in float32; the reference accumulates in float64). Large, skewed inputs (> 1 MiB of
traffic) exercise the multi-threaded kernels, with SCREE_NUM_THREADS unset and set.

The `compiled_only` fixture replaces the dispatcher's handle on the reference with a stub that
raises, so a test fails loudly if a host input ever fell back to the reference (which would make
the comparison vacuous)."""

from __future__ import annotations

import numpy as np
import pytest

import scree
import scree.kernels.layout as layout_dispatch
from scree.kernels import reference
from cases import (
    BACKEND_DTYPES,
    BACKENDS,
    FEATURE_SHAPES,
    INT_DTYPES,
    LENGTH_CASES,
    LENGTH_IDS,
    NONEMPTY_BATCH_IDS,
    assert_arrays_identical,
    assert_identical,
    assert_reduction_matches,
    dtype_name,
    make_array,
    offsets_of,
    random_values,
    stable_seed,
    to_host,
    torch,
)

BD_IDS = [f"{b}-{d}" for b, d in BACKEND_DTYPES]

# The reference runs on torch ops; their intra-op threads only cost time here (they are not what
# is tested, and on a busy 2-core box every tiny parallel region waits on the scheduler).
pytestmark = pytest.mark.usefixtures("torch_one_thread")


class _NoReference:
    """Stands in for scree.kernels.reference inside the dispatcher: private helpers pass through,
    public reference ops raise (a host input must never reach them)."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            return getattr(reference, name)

        def fallback(*args, **kwargs):
            raise AssertionError(f"host input fell back to scree.kernels.reference.{name}")
        return fallback


@pytest.fixture
def compiled_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout_dispatch, "reference", _NoReference())


def native(backend: str, a: np.ndarray):
    return a if backend == "numpy" else torch.from_numpy(a if a.flags.c_contiguous else a.copy())


def test_compiled_only_fixture_catches_fallback(compiled_only):
    """The guard itself works: the autograd path (which must use the reference) is caught."""
    if torch is None:
        pytest.skip("torch is not installed; the only fallback path to provoke is torch autograd")
    v = torch.ones(3, 2, requires_grad=True)
    with pytest.raises(AssertionError, match="fell back"):
        scree.from_lengths(v, [1, 2]).to_padded()


# ---- per-case comparisons ---------------------------------------------------------------------------
# Each test takes one (backend, dtype, length case) and loops over every feature shape in cases.py.

def arrays_for(tag: str, backend: str, dt: str, case: str):
    """(feature, Array) for every feature shape, with fresh random values per test and shape."""
    for feature in FEATURE_SHAPES:
        yield feature, make_array(backend, LENGTH_CASES[case], feature, dt, seed=stable_seed(tag, case, dt, feature))


@pytest.mark.parametrize("case", NONEMPTY_BATCH_IDS)
@pytest.mark.parametrize("backend_dtype", BACKEND_DTYPES, ids=BD_IDS)
def test_pack(backend_dtype, case, compiled_only, monkeypatch):
    # Many small sequences normally go to the framework's concatenation (cheaper than the binding's
    # per-array overhead); force the compiled kernel so that it is the thing compared here.
    monkeypatch.setattr(layout_dispatch, "_PACK_MIN_BYTES_PER_SEQUENCE", 0)
    backend, dt = backend_dtype
    for feature, arr in arrays_for("pack", backend, dt, case):
        seqs = list(arr)
        got = scree.pack(seqs)
        assert_arrays_identical(got, reference.pack(seqs), f"pack {feature}")
        assert_identical(got.values, arr.values, f"pack of unpack {feature}")


@pytest.mark.parametrize("case", LENGTH_IDS)
@pytest.mark.parametrize("backend_dtype", BACKEND_DTYPES, ids=BD_IDS)
def test_gather(backend_dtype, case, compiled_only):
    backend, dt = backend_dtype
    for feature, arr in arrays_for("gather", backend, dt, case):
        n = len(arr)
        rng = np.random.default_rng(stable_seed("gather", case, dt, feature))
        picks = rng.integers(-n, n, size=3 * n + 2) if n else np.zeros(0, np.int64)
        for what, index in [("random", picks), ("reversed", np.arange(n)[::-1].copy()),
                             ("empty", np.zeros(0, np.int64)), ("mask", rng.random(n) < 0.5)]:
            got = arr[index]
            wrapped = np.flatnonzero(index) if index.dtype == bool else np.where(index < 0, index + n, index)
            assert_arrays_identical(got, reference.gather(arr, wrapped.astype(np.int64)), f"gather {what} {feature}")
        for sl in (slice(None, None, 2), slice(None, None, -1)):
            assert_arrays_identical(arr[sl], reference.gather(arr, np.arange(n)[sl].astype(np.int64)),
                                    f"gather {sl} {feature}")


@pytest.mark.parametrize("offsets_dtype", ["int32", "int64"])
@pytest.mark.parametrize("case", LENGTH_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_positions_and_segment_ids(backend, case, offsets_dtype, compiled_only):
    arr = make_array(backend, LENGTH_CASES[case], (2,), "float32", seed=stable_seed("pos", case),
                     offsets_dtype=offsets_dtype)
    for dt in ("int32", "int64"):
        assert_identical(arr.positions(dt), reference.positions(arr, dt), f"positions {dt}")
        assert_identical(arr.segment_ids(dt), reference.segment_ids(arr, dt), f"segment_ids {dt}")


@pytest.mark.parametrize("case", LENGTH_IDS)
@pytest.mark.parametrize("backend_dtype", BACKEND_DTYPES, ids=BD_IDS)
def test_to_padded(backend_dtype, case, compiled_only):
    backend, dt = backend_dtype
    for feature, arr in arrays_for("pad", backend, dt, case):
        # both sides, with and without extra length; pad values zero, positive and negative
        for side, max_length, pad in (("right", None, 0), ("right", arr.max_length + 3, 7),
                                      ("left", None, -3), ("left", arr.max_length + 3, 7)):
            got = arr.to_padded(pad_value=pad, padding_side=side, max_length=max_length)
            want = reference.to_padded(arr, pad, side, max_length)
            what = f"to_padded feature={feature} side={side} max_length={max_length} pad={pad}"
            assert_identical(got[0], want[0], what + " padded")
            assert_identical(got[1], want[1], what + " mask")


@pytest.mark.parametrize("case", LENGTH_IDS)
@pytest.mark.parametrize("backend_dtype", BACKEND_DTYPES, ids=BD_IDS)
def test_from_padded(backend_dtype, case, compiled_only):
    backend, dt = backend_dtype
    for feature, arr in arrays_for("unpad", backend, dt, case):
        lengths = np.diff(arr.host_offsets)
        for side in ("right", "left"):
            padded, mask = reference.to_padded(arr, 7, side, arr.max_length + 2)
            if side == "right":
                variants = {"bool mask": dict(mask=mask), "list lengths": dict(lengths=lengths.tolist())}
            else:
                variants = {"uint8 mask": dict(mask=native(backend, to_host(mask).astype(np.uint8))),
                            "native lengths": dict(lengths=arr.lengths, padding_side=side)}
            for what, kwargs in variants.items():
                what = f"from_padded {feature} {side} {what}"
                got = scree.from_padded(padded, **kwargs)
                assert_arrays_identical(got, reference.from_padded(padded, **kwargs), what)
                assert_identical(got.values, arr.values, what + " round trip")
            got = scree.from_padded(padded)
            assert_arrays_identical(got, reference.from_padded(padded), f"from_padded {feature} without mask or lengths")


@pytest.mark.parametrize("case", LENGTH_IDS)
@pytest.mark.parametrize("backend_dtype", BACKEND_DTYPES, ids=BD_IDS)
def test_reductions(backend_dtype, case, compiled_only):
    backend, dt = backend_dtype
    for feature, arr in arrays_for("reduce", backend, dt, case):
        for op in ("sum", "mean", "max"):
            if op == "mean" and dt in INT_DTYPES:
                with pytest.raises(scree.DTypeError):
                    arr.mean()
                with pytest.raises(scree.DTypeError):
                    reference.reduce(arr, "mean")
                continue
            assert_reduction_matches(getattr(arr, op)(), reference.reduce(arr, op), arr, op, f"{op} {dt} {feature}")


# ---- strided inputs: the dispatcher makes them contiguous before the kernels see them -------------------

@pytest.mark.parametrize("backend_dtype", BACKEND_DTYPES, ids=BD_IDS)
def test_non_contiguous_inputs(backend_dtype, compiled_only):
    backend, dt = backend_dtype
    rng = np.random.default_rng(stable_seed("strided", dt))
    lengths = [3, 0, 5, 1, 2]
    wide = random_values(backend, (11, 6), dt, rng)
    values = wide[:, ::2]  # (11, 3), not contiguous
    arr = scree.from_lengths(values, lengths)
    assert not (values.flags.c_contiguous if backend == "numpy" else values.is_contiguous())
    for side in ("right", "left"):
        got, want = arr.to_padded(7, side), reference.to_padded(arr, 7, side)
        assert_identical(got[0], want[0], f"to_padded {side}")
        assert_identical(got[1], want[1], f"mask {side}")
    assert_arrays_identical(arr[[4, 0, 2]], reference.gather(arr, np.array([4, 0, 2])), "gather")
    assert_arrays_identical(scree.pack(list(arr)), reference.pack(list(arr)), "pack")
    for op in ("sum", "max") + (() if dt in INT_DTYPES else ("mean",)):
        assert_reduction_matches(getattr(arr, op)(), reference.reduce(arr, op), arr, op, op)
    # padded and mask transposed from (L, n) storage
    padded_t = random_values(backend, (6, 5, 2), dt, rng).transpose(0, 1) if backend == "torch" else \
        random_values(backend, (6, 5, 2), dt, rng).transpose(1, 0, 2)
    mask_t = native(backend, (rng.random((6, 5)) < 0.5)).T
    assert_arrays_identical(scree.from_padded(padded_t, mask=mask_t),
                            reference.from_padded(padded_t, mask=mask_t), "from_padded mask")
    assert_arrays_identical(scree.from_padded(padded_t, lengths=[6, 0, 2, 1, 3], padding_side="left"),
                            reference.from_padded(padded_t, lengths=[6, 0, 2, 1, 3], padding_side="left"),
                            "from_padded lengths")


# ---- large inputs: the multi-threaded kernels -------------------------------------------------------------

def skewed_lengths(rng: np.random.Generator) -> np.ndarray:
    """~195k tokens: 160 long sequences, 300 short ones, 20 empty, one single token, shuffled;
    the longest is 1024 so padded copies stay ~30 MB."""
    return rng.permutation(np.concatenate([
        np.full(160, 1024), rng.integers(0, 200, 300), np.zeros(20, np.int64), [1]])).astype(np.int64)


@pytest.fixture(scope="module")
def large_inputs():
    """Per backend and dtype, one large Array (> 1 MiB, so the kernels run threaded)."""
    out = {}
    for backend in BACKENDS:
        for dt in ("float32", "int64", "bfloat16" if backend == "torch" else "float16"):
            rng = np.random.default_rng(stable_seed("large", backend, dt))
            lengths = skewed_lengths(rng)
            values = random_values(backend, (int(lengths.sum()), 16), dt, rng)
            out[backend, dt] = scree.from_offsets(values, native(backend, offsets_of(lengths)))
    return out


LARGE = [(b, d) for b in BACKENDS for d in ("float32", "int64", "bfloat16" if b == "torch" else "float16")]


def run_all_ops(arr: scree.Array, rng: np.random.Generator) -> dict:
    n = len(arr)
    index = rng.integers(-n, n, size=2 * n)
    padded_r, mask_r = arr.to_padded(-3, "right")
    padded_l, mask_l = arr.to_padded(-3, "left", max_length=arr.max_length + 1)
    res = {
        "pack": scree.pack(list(arr)),
        "gather": arr[index],
        "positions": arr.positions("int32"),
        "segment_ids": arr.segment_ids("int64"),
        "padded_right": padded_r, "mask_right": mask_r,
        "padded_left": padded_l, "mask_left": mask_l,
        "unpad_mask": scree.from_padded(padded_l, mask=mask_l),
        "unpad_lengths": scree.from_padded(padded_l, lengths=arr.lengths, padding_side="left"),
        "sum": arr.sum(), "max": arr.max(),
    }
    if dtype_name(arr.values) not in INT_DTYPES:
        res["mean"] = arr.mean()
    return res, index


@pytest.mark.parametrize("backend_dtype", LARGE, ids=[f"{b}-{d}" for b, d in LARGE])
def test_large_inputs_match_reference(backend_dtype, large_inputs, monkeypatch):
    monkeypatch.delenv("SCREE_NUM_THREADS", raising=False)  # default: all cores
    monkeypatch.setattr(layout_dispatch, "reference", _NoReference())
    monkeypatch.setattr(layout_dispatch, "_PACK_MIN_BYTES_PER_SEQUENCE", 0)  # compare the compiled pack
    arr = large_inputs[backend_dtype]
    itemsize = arr.values.itemsize if backend_dtype[0] == "numpy" else arr.values.element_size()
    assert arr.total * 16 * itemsize > 1 << 20  # above the kernels' 1 MiB threading threshold
    got, index = run_all_ops(arr, np.random.default_rng(0))
    monkeypatch.undo()
    n = len(arr)
    assert_arrays_identical(got["pack"], reference.pack(list(arr)), "pack")
    assert_arrays_identical(got["gather"], reference.gather(arr, np.where(index < 0, index + n, index)), "gather")
    assert_identical(got["positions"], reference.positions(arr, "int32"), "positions")
    assert_identical(got["segment_ids"], reference.segment_ids(arr, "int64"), "segment_ids")
    for side, ml in (("right", None), ("left", arr.max_length + 1)):
        want_p, want_m = reference.to_padded(arr, -3, side, ml)
        assert_identical(got[f"padded_{side}"], want_p, f"padded {side}")
        assert_identical(got[f"mask_{side}"], want_m, f"mask {side}")
    assert_identical(got["unpad_mask"].values, arr.values, "from_padded mask")
    assert_identical(got["unpad_lengths"].values, arr.values, "from_padded lengths")
    np.testing.assert_array_equal(got["unpad_mask"].host_offsets, arr.host_offsets)
    for op in ("sum", "max", "mean"):
        if op in got:
            assert_reduction_matches(got[op], reference.reduce(arr, op), arr, op, op)


@pytest.mark.parametrize("threads", [None, "1", "3"])
@pytest.mark.parametrize("row", [(), (3,)], ids=["int8_rows", "3_float32"])
def test_to_padded_cuts_long_blocks_into_pieces(row, threads, monkeypatch):
    """Fewer sequences than cores, padded long: pad cuts each sequence's block into ~4 MiB pieces
    (pack.cpp), each filling, copying and marking its own rows. Pieces that end inside the data,
    inside the padding, on its edges, a last piece of one row, an empty sequence and a full one,
    both sides, zero and non-zero pad values, against the reference bit for bit."""
    if threads is None:
        monkeypatch.delenv("SCREE_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("SCREE_NUM_THREADS", threads)
    monkeypatch.setattr(layout_dispatch, "reference", _NoReference())
    dt = "int8" if not row else "float32"
    max_length = 9_000_001 if not row else 1_000_003  # blocks of ~18 / ~13 MB: 5 / 4 pieces
    lengths = np.array([3_000_001, 0, max_length, 2_250_007] if not row else [1, 700_001, 0, max_length], np.int64)
    rng = np.random.default_rng(stable_seed("pad pieces", dt))
    values = rng.integers(-100, 100, size=(int(lengths.sum()), *row)).astype(dt)
    arr = scree.from_offsets(values, offsets_of(lengths))
    got = {(side, pad): arr.to_padded(pad_value=pad, padding_side=side, max_length=max_length)
           for side in ("right", "left") for pad in (0, 5)}
    monkeypatch.undo()
    for (side, pad), (padded, mask) in got.items():
        want_p, want_m = reference.to_padded(arr, pad, side, max_length)
        assert_identical(padded, want_p, f"padded {side} pad={pad}")
        assert_identical(mask, want_m, f"mask {side} pad={pad}")


@pytest.mark.parametrize("threads", [None, "1", "3"])
def test_few_long_sequences_split_by_rows(threads, monkeypatch):
    """pack, from_padded (lengths), gather (pack.cpp's copy_rows), positions and segment_ids
    (segments.cpp) split the output's rows evenly over the threads, so a range may start and end
    inside a sequence and skip empty ones: one long sequence between empty and one-token ones,
    against the reference bit for bit."""
    if threads is None:
        monkeypatch.delenv("SCREE_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("SCREE_NUM_THREADS", threads)
    monkeypatch.setattr(layout_dispatch, "reference", _NoReference())
    monkeypatch.setattr(layout_dispatch, "_PACK_MIN_BYTES_PER_SEQUENCE", 0)  # compare the compiled pack
    lengths = np.array([0, 1, 700_001, 0, 0, 3, 250_000, 0], np.int64)
    rng = np.random.default_rng(stable_seed("copy rows"))
    arr = scree.from_offsets(rng.integers(-100, 100, size=(int(lengths.sum()), 3)).astype("float32"),
                             offsets_of(lengths))
    index = np.array([2, 7, 6, 2, 1, 0, 5], np.int64)
    padded = reference.to_padded(arr, 7, "left", 700_003)[0]
    got = {"pack": scree.pack(list(arr)), "gather": arr[index],
           "unpad": scree.from_padded(padded, lengths=lengths.tolist(), padding_side="left"),
           "positions": arr.positions("int32"), "segment_ids": arr.segment_ids("int64")}
    monkeypatch.undo()
    assert_arrays_identical(got["pack"], reference.pack(list(arr)), "pack")
    assert_arrays_identical(got["gather"], reference.gather(arr, index), "gather")
    assert_identical(got["unpad"].values, arr.values, "from_padded")
    assert_identical(got["positions"], reference.positions(arr, "int32"), "positions")
    assert_identical(got["segment_ids"], reference.segment_ids(arr, "int64"), "segment_ids")


@pytest.fixture(scope="module")
def default_thread_results(large_inputs):
    """run_all_ops on each large input with SCREE_NUM_THREADS unset, computed once per input."""
    cache: dict = {}

    def get(key):
        if key not in cache:
            with pytest.MonkeyPatch.context() as mp:
                mp.delenv("SCREE_NUM_THREADS", raising=False)
                cache[key] = run_all_ops(large_inputs[key], np.random.default_rng(1))[0]
        return cache[key]
    return get


@pytest.mark.parametrize("threads", ["1", "5"])
@pytest.mark.parametrize("backend_dtype", LARGE, ids=[f"{b}-{d}" for b, d in LARGE])
def test_thread_count_does_not_change_results(backend_dtype, threads, large_inputs, default_thread_results,
                                              monkeypatch):
    """Each kernel splits work by sequence (weighted by length), so the bits of every output —
    sums included — are the same for any thread count: one thread (the serial path), the
    default (all cores), and more threads than cores."""
    arr = large_inputs[backend_dtype]
    base = default_thread_results(backend_dtype)
    monkeypatch.setenv("SCREE_NUM_THREADS", threads)
    other, _ = run_all_ops(arr, np.random.default_rng(1))
    assert base.keys() == other.keys()
    for key in base:
        if isinstance(base[key], scree.Array):
            assert_arrays_identical(other[key], base[key], f"{key} with {threads} threads")
        else:
            assert_identical(other[key], base[key], f"{key} with {threads} threads")

"""Hypothesis property tests of the ragged layout on every backend: random length lists (zeros,
ones and the empty batch included) and random feature shapes. Round trips (pack/unpack,
to_padded/from_padded on both sides, with mask or lengths), gather and slicing agreeing with
Python list indexing, the positions/segment_ids invariants, the layout invariants, and the
offsets validation: valid int32/int64 offsets are accepted, corrupted ones (shuffled, non-zero
start, wrong end, negative) raise scree.RaggedError. Example counts come from the hypothesis
profile registered in conftest.py ("ci" by default)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st

import scree
from cases import (
    BACKENDS,
    DTYPES,
    assert_identical,
    make_array,
    offsets_of,
    random_values,
    to_host,
    torch,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see conftest.py

# Lengths lean on the edge values 0 and 1; batches may be empty.
length_st = st.one_of(st.sampled_from([0, 1]), st.integers(0, 40))
lengths_st = st.lists(length_st, min_size=0, max_size=12)
nonempty_lengths_st = st.lists(length_st, min_size=1, max_size=12)
feature_st = st.sampled_from([(), (1,), (3,), (2, 3), (4, 1, 2)])
seed_st = st.integers(0, 2 ** 32 - 1)
backend_st = st.sampled_from(BACKENDS)
backend_dtype_st = backend_st.flatmap(lambda b: st.tuples(st.just(b), st.sampled_from(DTYPES[b])))


def native(backend: str, a: np.ndarray):
    return a if backend == "numpy" else torch.from_numpy(a if a.flags.c_contiguous else a.copy())


def host_seqs(arr: scree.Array) -> list[np.ndarray]:
    h = to_host(arr.values)
    off = arr.host_offsets
    return [h[off[i]:off[i + 1]] for i in range(len(arr))]


def assert_layout_invariants(arr: scree.Array) -> None:
    off = to_host(arr.offsets).astype(np.int64)
    np.testing.assert_array_equal(off, arr.host_offsets)
    assert off.ndim == 1 and len(off) == len(arr) + 1
    assert off[0] == 0
    assert off[-1] == arr.total == arr.values.shape[0]
    assert np.all(np.diff(off) >= 0)
    lens = to_host(arr.lengths)
    np.testing.assert_array_equal(lens, np.diff(off))
    assert arr.max_length == (int(lens.max()) if len(lens) else 0)


# ---- round trips -------------------------------------------------------------------------------------

@given(backend_dtype=backend_dtype_st, lengths=nonempty_lengths_st, feature=feature_st, seed=seed_st)
def test_pack_unpack_identity(backend_dtype, lengths, feature, seed):
    backend, dt = backend_dtype
    rng = np.random.default_rng(seed)
    seqs = [random_values(backend, (n, *feature), dt, rng) for n in lengths]
    arr = scree.pack(seqs)
    assert_layout_invariants(arr)
    np.testing.assert_array_equal(to_host(arr.lengths), lengths)
    out = scree.unpack(arr)
    assert len(out) == len(seqs)
    for got, want in zip(out, seqs):
        assert_identical(got, want)
    # and back: packing the unpacked views reproduces the values bit for bit
    assert_identical(scree.pack(out).values, arr.values)


@given(backend_dtype=backend_dtype_st, lengths=lengths_st, feature=feature_st, seed=seed_st,
       side=st.sampled_from(["right", "left"]), extra=st.integers(0, 3),
       how=st.sampled_from(["mask", "lengths", "native_lengths"]), pad=st.sampled_from([0, 7, -3]))
def test_padded_roundtrip(backend_dtype, lengths, feature, seed, side, extra, how, pad):
    backend, dt = backend_dtype
    arr = make_array(backend, lengths, feature, dt, seed=seed)
    padded, mask = arr.to_padded(pad_value=pad, padding_side=side, max_length=arr.max_length + extra)
    assert tuple(padded.shape) == (len(lengths), arr.max_length + extra, *feature)
    m = to_host(mask)
    np.testing.assert_array_equal(m.sum(axis=1), lengths)
    if side == "right":
        assert all(not m[i, n:].any() and m[i, :n].all() for i, n in enumerate(lengths))
    else:
        L = m.shape[1]
        assert all(not m[i, :L - n].any() and m[i, L - n:].all() for i, n in enumerate(lengths))
    assert (to_host(padded)[~m] == pad).all()
    if how == "mask":
        back = scree.from_padded(padded, mask=mask)
    elif how == "lengths":
        back = scree.from_padded(padded, lengths=list(lengths), padding_side=side)
    else:
        back = scree.from_padded(padded, lengths=arr.lengths, padding_side=side)
    assert_layout_invariants(back)
    np.testing.assert_array_equal(back.host_offsets, arr.host_offsets)
    assert_identical(back.values, arr.values)


@given(backend=backend_st, n=st.integers(0, 6), L=st.integers(0, 6), feature=feature_st, seed=seed_st)
def test_from_padded_full_rows_then_to_padded_is_identity(backend, n, L, feature, seed):
    padded = random_values(backend, (n, L, *feature), "float32", np.random.default_rng(seed))
    arr = scree.from_padded(padded)
    assert_layout_invariants(arr)
    np.testing.assert_array_equal(to_host(arr.lengths), [L] * n)
    back, mask = arr.to_padded(max_length=L)
    assert_identical(back, padded)
    assert to_host(mask).all()


# ---- gather and slicing ---------------------------------------------------------------------------------

@given(backend=backend_st, lengths=lengths_st, feature=feature_st, seed=seed_st, data=st.data())
def test_gather_matches_list_indexing(backend, lengths, feature, seed, data):
    arr = make_array(backend, lengths, feature, "float32", seed=seed)
    n = len(lengths)
    seqs = host_seqs(arr)
    picks = data.draw(st.lists(st.integers(-n, n - 1), max_size=15) if n else st.just([]), label="picks")
    for index in (picks, np.asarray(picks, dtype=np.int64), native(backend, np.asarray(picks, dtype=np.int64))):
        sub = arr[index]
        assert_layout_invariants(sub)
        np.testing.assert_array_equal(to_host(sub.lengths), [len(seqs[i]) for i in picks])
        for got, i in zip(sub, picks):
            np.testing.assert_array_equal(to_host(got), seqs[i])
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="mask"), dtype=bool)
    sub = arr[mask]
    assert_layout_invariants(sub)
    assert [to_host(s).tolist() for s in sub] == [s.tolist() for s, keep in zip(seqs, mask) if keep]


@given(backend=backend_st, lengths=lengths_st, seed=seed_st,
       start=st.none() | st.integers(-15, 15), stop=st.none() | st.integers(-15, 15),
       step=st.none() | st.integers(-4, 4).filter(lambda s: s != 0))
def test_slicing_matches_list_slicing(backend, lengths, seed, start, stop, step):
    arr = make_array(backend, lengths, (2,), "int64", seed=seed)
    sl = slice(start, stop, step)
    sub = arr[sl]
    want = host_seqs(arr)[sl]
    assert_layout_invariants(sub)
    assert len(sub) == len(want)
    for got, w in zip(sub, want):
        np.testing.assert_array_equal(to_host(got), w)
    # a slice equals gathering the same indices
    idx = list(range(len(lengths)))[sl]
    assert_identical(sub.values, arr[idx].values)
    np.testing.assert_array_equal(sub.host_offsets, arr[idx].host_offsets)
    # and every element agrees with int indexing
    for k, i in enumerate(idx):
        assert_identical(sub[k], arr[i])


# ---- positions / segment ids ---------------------------------------------------------------------------

@given(backend=backend_st, lengths=lengths_st, dt=st.sampled_from(["int32", "int64"]), seed=seed_st)
def test_positions_segment_ids_invariants(backend, lengths, dt, seed):
    arr = make_array(backend, lengths, (), "float32", seed=seed)
    pos = to_host(arr.positions(dt)).astype(np.int64)
    seg = to_host(arr.segment_ids(dt)).astype(np.int64)
    total = sum(lengths)
    assert pos.shape == seg.shape == (total,)
    lens = np.asarray(lengths, dtype=np.int64)
    if total:
        assert np.all(np.diff(seg) >= 0)  # non-decreasing
        assert seg.min() >= 0 and seg.max() < len(lengths)
        assert np.all(pos >= 0) and np.all(pos < lens[seg])  # positions < lengths[segment]
        # positions count up from 0 inside each sequence
        starts = arr.host_offsets[:-1][seg]
        np.testing.assert_array_equal(pos, np.arange(total) - starts)
    np.testing.assert_array_equal(np.bincount(seg, minlength=len(lengths)), lens)


# ---- layout invariants and validation ------------------------------------------------------------------

@given(backend=backend_st, lengths=lengths_st, feature=feature_st, seed=seed_st,
       offsets_dtype=st.sampled_from(["int32", "int64"]))
def test_from_offsets_accepts_valid_offsets(backend, lengths, feature, seed, offsets_dtype):
    rng = np.random.default_rng(seed)
    values = random_values(backend, (sum(lengths), *feature), "float32", rng)
    offsets = native(backend, offsets_of(lengths).astype(offsets_dtype))
    arr = scree.from_offsets(values, offsets)
    assert arr.offsets is offsets and arr.values is values
    assert_layout_invariants(arr)
    assert arr.max_length == max(lengths, default=0)
    assert arr.feature_shape == tuple(feature)
    np.testing.assert_array_equal(to_host(arr.cu_seqlens()), offsets_of(lengths))
    # validate=False trusts the caller; the lazily derived layout must still be right
    trusted = scree.from_offsets(values, offsets, validate=False)
    assert trusted.offsets is offsets
    assert_layout_invariants(trusted)


@st.composite
def corrupted_offsets(draw):
    """(total, bad offsets, how): a valid layout for `total` rows, broken one way."""
    lengths = draw(st.lists(length_st, min_size=1, max_size=10))
    off = offsets_of(lengths)
    total = int(off[-1])
    how = draw(st.sampled_from(["shuffled", "nonzero_start", "negative_start", "wrong_end", "dip"]))
    bad = off.copy()
    if how == "shuffled":
        assume(len(np.unique(off)) >= 2)
        perm = draw(st.permutations(list(range(len(off)))))
        bad = off[np.asarray(perm)]
        assume(not (bad[0] == 0 and bad[-1] == total and np.all(np.diff(bad) >= 0)))
    elif how == "nonzero_start":
        bad[0] = draw(st.integers(1, 50))
    elif how == "negative_start":
        bad[0] = -draw(st.integers(1, 50))
    elif how == "wrong_end":
        bad[-1] = total + draw(st.integers(-50, 50).filter(lambda d: d != 0))
    else:  # one interior offset dips below its predecessor
        assume(len(off) >= 3 and total >= 1)
        i = draw(st.integers(1, len(off) - 2))
        assume(off[i - 1] >= 1 or off[i + 1] > off[i])
        bad[i] = off[i - 1] - draw(st.integers(1, 5)) if off[i - 1] >= 1 else off[i + 1] + draw(st.integers(1, 5))
        assume(not np.all(np.diff(bad) >= 0) or bad[0] != 0 or bad[-1] != total)
    return total, bad, how


@given(backend=backend_st, bad=corrupted_offsets(), offsets_dtype=st.sampled_from(["int32", "int64"]),
       feature=feature_st, seed=seed_st)
def test_from_offsets_rejects_invalid_offsets(backend, bad, offsets_dtype, feature, seed):
    total, offsets, how = bad
    note(f"{how}: total={total} offsets={offsets.tolist()}")
    values = random_values(backend, (total, *feature), "float32", np.random.default_rng(seed))
    with pytest.raises(scree.RaggedError):
        scree.from_offsets(values, native(backend, offsets.astype(offsets_dtype)))
    with pytest.raises(scree.RaggedError):
        scree.from_cu_seqlens(values, native(backend, offsets.astype(np.int32)))


@given(backend=backend_st, lengths=st.lists(st.integers(-5, 5), min_size=1, max_size=8), seed=seed_st)
def test_from_lengths_rejects_negative_or_mismatched(backend, lengths, seed):
    assume(min(lengths) < 0)
    values = random_values(backend, (max(sum(lengths), 0), 2), "float64", np.random.default_rng(seed))
    with pytest.raises(scree.RaggedError):
        scree.from_lengths(values, lengths)


@given(backend_dtype=backend_dtype_st, lengths=lengths_st, feature=feature_st, seed=seed_st)
def test_layout_invariants_hold_after_every_operation(backend_dtype, lengths, feature, seed):
    backend, dt = backend_dtype
    arr = make_array(backend, lengths, feature, dt, seed=seed)
    assert_layout_invariants(arr)
    n = len(arr)
    derived = [arr[::-1], arr[1:], arr[: n // 2], arr.with_values(arr.values), arr.map(lambda v: v),
               scree.from_padded(*arr.to_padded()), scree.from_padded(arr.to_padded()[0], lengths=arr.lengths)]
    if n:
        derived.append(scree.pack(list(arr)))
    if backend == "numpy" and torch is not None:
        derived.append(arr.to("torch"))
    elif backend == "torch" and dt != "bfloat16":
        derived.append(arr.to("numpy"))
    for d in derived:
        assert_layout_invariants(d)
    assert [len(s) for s in derived[0]] == list(reversed(lengths))

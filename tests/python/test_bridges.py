"""scree.bridges: HuggingFace padded batches (bit-exact round trips, right and left padding),
torch.nested jagged/strided tensors (zero-copy where the layouts coincide), FlashAttention
cu_seqlens, and packed rows described by position_ids."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scree
from scree import bridges

RNG = np.random.default_rng(7)


# ---- helpers -----------------------------------------------------------------------------------

def host(x) -> np.ndarray:
    """A NumPy copy/view of a NumPy array or a (possibly grad-requiring) CPU tensor. bfloat16 is
    returned as its raw 16-bit pattern."""
    if isinstance(x, torch.Tensor):
        x = x.detach().contiguous()
        if x.dtype == torch.bfloat16:
            return x.view(torch.int16).numpy().view(np.uint16)
        return x.numpy()
    return np.asarray(x)


def bits(x) -> np.ndarray:
    """Raw bit patterns (unsigned ints), so NaN payloads, -0.0 and subnormals compare exactly."""
    a = np.ascontiguousarray(host(x))
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def make_hf_batch(lengths, L, feature, dtype, side, rng):
    """(x (B, L, *feature) with random tokens and junk padding, mask (B, L) int64, tokens (total,
    *feature) in order). Tokens include -0.0, a subnormal and a NaN to catch any recomputation."""
    B = len(lengths)
    np_dtype = np.float32 if dtype == "bfloat16" else np.dtype(dtype)
    x = (rng.standard_normal((B, L, *feature)) * 10).astype(np_dtype)
    junk = np.array([np.nan, np.inf, -np.inf, 6.5e4, -1.0, 12345.0], dtype=np_dtype)
    mask = np.zeros((B, L), dtype=np.int64)
    for i, n in enumerate(lengths):
        cols = np.arange(n) if side == "right" else np.arange(L - n, L)
        mask[i, cols] = 1
    pad_slots = mask == 0
    x[pad_slots] = junk[rng.integers(0, len(junk), size=(int(pad_slots.sum()),))].reshape(-1, *([1] * len(feature)))
    token_slots = np.argwhere(mask == 1)
    if len(token_slots):
        specials = np.array([-0.0, np.finfo(np_dtype).tiny / 4, np.nan], dtype=np_dtype)
        for s, (i, j) in zip(specials, token_slots[: len(specials)]):
            x[i, j] = s
    tokens = x[mask == 1]
    return x, mask, tokens


def to_backend(a: np.ndarray, backend: str, dtype: str | None = None):
    if backend == "numpy":
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype == "bfloat16":
        t = t.to(torch.bfloat16)
    if backend == "torch-grad" and t.is_floating_point():
        t.requires_grad_(True)  # takes the reference (framework-ops) path
    return t


# ---- HuggingFace padded batches ------------------------------------------------------------------

HF_CASES = [
    # (lengths, L): always one empty row and one full row
    ([3, 0, 5, 1], 5),
    ([0, 7], 7),
    ([4], 4),
    ([2, 6, 0, 6, 3], 6),
]


@pytest.mark.parametrize("backend, dtype", [
    ("numpy", "float32"), ("numpy", "float64"), ("numpy", "float16"),
    ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"), ("torch", "float64"),
    ("torch-grad", "float32"),
])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("feature", [(), (3,), (2, 3)], ids=["f0", "f3", "f2x3"])
@pytest.mark.parametrize("case", range(len(HF_CASES)))
def test_hf_round_trip_bit_exact(backend, dtype, side, feature, case):
    lengths, L = HF_CASES[case]
    rng = np.random.default_rng(zlib.crc32(repr((backend, dtype, side, feature, case)).encode()))
    x_np, mask_np, tokens_np = make_hf_batch(lengths, L, feature, dtype, side, rng)
    x = to_backend(x_np, backend, dtype)
    mask = to_backend(mask_np, backend)
    if dtype == "bfloat16":  # the reference tokens are the bf16 ones
        tokens_np = x[torch.from_numpy(mask_np) == 1]

    arr = bridges.from_hf_padded(x, mask)
    assert arr.backend == ("numpy" if backend == "numpy" else "torch")
    assert host(arr.lengths).tolist() == lengths
    assert arr.max_length == max(lengths)
    assert tuple(arr.feature_shape) == feature
    assert np.array_equal(bits(arr.values), bits(tokens_np)), "tokens were not copied bit-exactly"
    # each sequence is exactly its row's tokens, in order
    for i, seq in enumerate(arr):
        row = x_np[i][mask_np[i] == 1] if dtype != "bfloat16" else x[i][torch.from_numpy(mask_np[i]) == 1]
        assert np.array_equal(bits(seq), bits(row))

    padded, mask2 = bridges.to_hf_padded(arr, padding_side=side)
    assert tuple(padded.shape) == tuple(x.shape)
    assert host(mask2).dtype == np.int64
    np.testing.assert_array_equal(host(mask2), mask_np)
    tok = mask_np == 1
    assert np.array_equal(bits(host(padded)[tok]), bits(host(x)[tok]))
    # pad slots hold pad_value (0 by default), not the input's junk
    assert (host(padded)[~tok] == 0).all()


@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-grad"])
def test_hf_pad_value_and_max_length(backend):
    lengths, L = [2, 0, 3], 3
    x_np, mask_np, tokens_np = make_hf_batch(lengths, L, (4,), "float32", "left", RNG)
    arr = bridges.from_hf_padded(to_backend(x_np, backend), to_backend(mask_np, backend))
    padded, mask = bridges.to_hf_padded(arr, padding_side="left", pad_value=-7.5, max_length=6)
    padded, mask = host(padded), host(mask)
    assert padded.shape == (3, 6, 4) and mask.shape == (3, 6)
    expected_mask = np.zeros((3, 6), np.int64)
    expected_mask[0, 4:] = 1
    expected_mask[2, 3:] = 1
    np.testing.assert_array_equal(mask, expected_mask)
    assert np.array_equal(bits(padded[mask == 1]), bits(tokens_np))
    assert (padded[mask == 0] == -7.5).all()


def test_hf_bool_and_float_masks_agree():
    """attention_mask may be int64 (tokenizers), bool or float 0/1: same Array."""
    x_np, mask_np, tokens = make_hf_batch([1, 4, 0], 4, (2,), "float32", "right", RNG)
    ref = bridges.from_hf_padded(x_np, mask_np)
    for m in (mask_np.astype(bool), mask_np.astype(np.float32), mask_np.astype(np.int32)):
        a = bridges.from_hf_padded(x_np, m)
        assert np.array_equal(bits(a.values), bits(ref.values))
        np.testing.assert_array_equal(host(a.offsets), host(ref.offsets))
    t = bridges.from_hf_padded(torch.from_numpy(x_np), torch.from_numpy(mask_np).bool())
    assert np.array_equal(bits(t.values), bits(tokens))


def test_hf_all_rows_empty():
    x_np, mask_np, _ = make_hf_batch([0, 0], 3, (2,), "float32", "right", RNG)
    arr = bridges.from_hf_padded(x_np, mask_np)
    assert len(arr) == 2 and arr.total == 0 and arr.max_length == 0
    padded, mask = bridges.to_hf_padded(arr, max_length=3)
    assert padded.shape == (2, 3, 2) and not mask.any() and (padded == 0).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    extra=st.integers(0, 3),
    side=st.sampled_from(["right", "left"]),
    backend=st.sampled_from(["numpy", "torch"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_hf_round_trip_property(lengths, extra, side, backend, seed):
    L = max(lengths) + extra
    x_np, mask_np, tokens = make_hf_batch(lengths, L, (3,), "float32", side, np.random.default_rng(seed))
    arr = bridges.from_hf_padded(to_backend(x_np, backend), to_backend(mask_np, backend))
    assert np.array_equal(bits(arr.values), bits(tokens))
    padded, mask = bridges.to_hf_padded(arr, padding_side=side, max_length=L)
    np.testing.assert_array_equal(host(mask), mask_np)
    assert np.array_equal(bits(host(padded)[mask_np == 1]), bits(x_np[mask_np == 1]))


# ---- torch.nested ---------------------------------------------------------------------------------------

def _torch_arr(lengths, feature=(3,), dtype=torch.float32, offsets_dtype=None):
    seqs = [torch.randn(n, *feature, dtype=dtype) + 2.0 for n in lengths]
    arr = scree.pack(seqs)
    if offsets_dtype is not None:
        arr = scree.from_offsets(arr.values, arr.offsets.to(offsets_dtype))
    return arr, seqs


@pytest.mark.parametrize("feature", [(), (3,), (2, 4)], ids=["f0", "f3", "f2x4"])
def test_to_torch_nested_is_zero_copy_jagged(feature):
    arr, seqs = _torch_arr([2, 0, 5, 1], feature)
    nt = bridges.to_torch_nested(arr)
    assert nt.is_nested and nt.layout == torch.jagged
    assert nt.size(0) == 4
    assert nt.values().data_ptr() == arr.values.data_ptr()
    assert nt.offsets().data_ptr() == arr.offsets.data_ptr()
    for got, want in zip(nt.unbind(), seqs):
        assert torch.equal(got, want)
    # writes through the nested tensor are visible in the Array: the same memory
    nt.values()[0].fill_(123.0)
    assert (arr.values[0] == 123.0).all()


def test_to_torch_nested_from_numpy_array_is_zero_copy():
    arr = scree.pack([RNG.standard_normal((3, 2)), RNG.standard_normal((1, 2))])
    nt = bridges.to_torch_nested(arr)
    assert nt.values().data_ptr() == arr.values.__array_interface__["data"][0]
    assert [tuple(t.shape) for t in nt.unbind()] == [(3, 2), (1, 2)]
    np.testing.assert_array_equal(nt.values().numpy(), arr.values)


def test_to_torch_nested_int32_offsets():
    arr, seqs = _torch_arr([3, 4], offsets_dtype=torch.int32)
    nt = bridges.to_torch_nested(arr)
    assert nt.offsets().dtype == torch.int64
    assert nt.offsets().tolist() == [0, 3, 7]
    assert nt.values().data_ptr() == arr.values.data_ptr()
    for got, want in zip(nt.unbind(), seqs):
        assert torch.equal(got, want)


def test_from_torch_nested_jagged_zero_copy_round_trip():
    arr, seqs = _torch_arr([4, 1, 0, 3])
    nt = bridges.to_torch_nested(arr)
    back = bridges.from_torch_nested(nt)
    assert isinstance(back, scree.Array)
    assert back.values.data_ptr() == arr.values.data_ptr()
    assert back.offsets.data_ptr() == arr.offsets.data_ptr()
    assert torch.equal(back.offsets, arr.offsets)
    assert back.max_length == 4 and len(back) == 4
    assert host(back.lengths).tolist() == [4, 1, 0, 3]


def test_from_torch_nested_jagged_built_by_torch():
    seqs = [torch.randn(2, 3) + 1, torch.randn(5, 3) - 1]
    nt = torch.nested.nested_tensor(seqs, layout=torch.jagged)
    arr = bridges.from_torch_nested(nt)
    assert arr.values.data_ptr() == nt.values().data_ptr()
    assert host(arr.lengths).tolist() == [2, 5]
    assert torch.equal(arr.values, torch.cat(seqs))


def test_from_torch_nested_strided_packs():
    seqs = [torch.randn(2, 3) + 1, torch.randn(5, 3) - 1, torch.randn(1, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "nested tensors are in prototype stage"
        nt = torch.nested.nested_tensor(seqs)
    assert nt.layout == torch.strided
    arr = bridges.from_torch_nested(nt)
    assert host(arr.lengths).tolist() == [2, 5, 1]
    assert torch.equal(arr.values, torch.cat(seqs))
    for got, want in zip(arr, seqs):
        assert torch.equal(got, want)


def test_nested_ops_then_back():
    arr, seqs = _torch_arr([3, 0, 2])
    nt = bridges.to_torch_nested(arr)
    out = bridges.from_torch_nested((nt.sin() * 2.0 + 1.0))
    assert torch.equal(out.offsets, arr.offsets)
    torch.testing.assert_close(out.values, arr.values.sin() * 2.0 + 1.0, rtol=0, atol=0)
    for got, want in zip(out, seqs):
        torch.testing.assert_close(got, want.sin() * 2.0 + 1.0, rtol=0, atol=0)


def test_nested_gradients_flow_back_to_the_sequences():
    seqs = [(torch.randn(2, 3) + 1).requires_grad_(), (torch.randn(1, 3) - 1).requires_grad_()]
    arr = scree.pack(seqs)
    out = bridges.from_torch_nested(bridges.to_torch_nested(arr) * 3.0)
    (out.values * torch.arange(1.0, 4.0)).sum().backward()
    for s in seqs:
        torch.testing.assert_close(s.grad, torch.arange(1.0, 4.0).expand_as(s) * 3.0)


def test_from_torch_nested_holes_and_transpose_are_unsupported():
    base = torch.randn(3, 5, 2) + 1
    holes = torch.nested.narrow(base, 1, torch.tensor([0, 1, 0]), torch.tensor([2, 3, 1]), layout=torch.jagged)
    with pytest.raises(scree.UnsupportedError, match="holes"):
        bridges.from_torch_nested(holes)
    ok = bridges.from_torch_nested(holes.contiguous())
    assert host(ok.lengths).tolist() == [2, 3, 1]
    assert torch.equal(ok[1], base[1, 1:4])
    arr, _ = _torch_arr([2, 3])
    with pytest.raises(scree.UnsupportedError, match="dimension 1"):
        bridges.from_torch_nested(bridges.to_torch_nested(arr).transpose(1, 2))


# ---- cu_seqlens -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_to_cu_seqlens_int64_offsets(backend):
    values = to_backend(RNG.standard_normal((9, 2)).astype(np.float32), backend)
    arr = scree.from_lengths(values, [4, 0, 5])
    cu, max_seqlen = bridges.to_cu_seqlens(arr)
    assert host(cu).dtype == np.int32
    assert host(cu).tolist() == [0, 4, 4, 9]
    assert max_seqlen == 5 and isinstance(max_seqlen, int)
    cu2, _ = bridges.to_cu_seqlens(arr)
    assert cu2 is cu  # converted once, cached


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_cu_seqlens_int32_zero_copy_both_ways(backend):
    values = to_backend(RNG.standard_normal((7, 2)).astype(np.float32), backend)
    cu_in = to_backend(np.array([0, 3, 3, 7], dtype=np.int32), backend)
    arr = bridges.from_cu_seqlens(values, cu_in, max_seqlen=4)
    assert arr.offsets is cu_in and arr.values is values
    assert arr.max_length == 4 and len(arr) == 3
    cu, max_seqlen = bridges.to_cu_seqlens(arr)
    assert cu is cu_in and max_seqlen == 4
    # the same function is exported at top level
    assert scree.from_cu_seqlens is bridges.from_cu_seqlens


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_from_cu_seqlens_without_max_computes_it(backend):
    values = to_backend(RNG.standard_normal((7, 2)).astype(np.float32), backend)
    arr = bridges.from_cu_seqlens(values, to_backend(np.array([0, 1, 7], dtype=np.int32), backend))
    assert arr.max_length == 6
    assert [int(s.shape[0]) for s in arr] == [1, 6]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_cu_seqlens_from_lengths(backend):
    lengths = to_backend(np.array([3, 0, 2, 6], dtype=np.int64), backend)
    cu, max_seqlen = bridges.cu_seqlens_from_lengths(lengths)
    assert type(cu) is type(lengths)
    assert host(cu).dtype == np.int32
    assert host(cu).tolist() == [0, 3, 3, 5, 11]
    assert max_seqlen == 6
    cu32, m32 = bridges.cu_seqlens_from_lengths(to_backend(np.array([5], dtype=np.int32), backend))
    assert host(cu32).tolist() == [0, 5] and m32 == 5
    cu0, m0 = bridges.cu_seqlens_from_lengths(to_backend(np.array([], dtype=np.int64), backend))
    assert host(cu0).tolist() == [0] and m0 == 0


def test_cu_seqlens_round_trip_through_padded():
    """cu_seqlens -> Array -> padded -> Array -> cu_seqlens reproduces everything."""
    values = torch.randn(10, 4) + 0.5
    cu = torch.tensor([0, 2, 2, 9, 10], dtype=torch.int32)
    arr = bridges.from_cu_seqlens(values, cu)
    padded, mask = arr.to_padded()
    back = scree.from_padded(padded, mask=mask)
    cu2, m2 = bridges.to_cu_seqlens(back)
    assert torch.equal(cu2, cu) and m2 == 7
    assert torch.equal(back.values, values)


# ---- position_ids ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("batched", [False, True], ids=["(total,)", "(1,total)"])
def test_from_position_ids(backend, batched):
    lengths = [3, 1, 1, 4, 2]
    pos = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
    if batched:
        pos = pos[None]
    values = to_backend(RNG.standard_normal((sum(lengths), 3)).astype(np.float32), backend)
    arr = bridges.from_position_ids(values, to_backend(pos, backend))
    assert arr.values is values
    assert host(arr.lengths).tolist() == lengths
    assert host(arr.offsets).tolist() == [0, 3, 4, 5, 9, 11]
    assert arr.max_length == 4
    # positions() of the result reproduces the position_ids
    np.testing.assert_array_equal(host(arr.positions()), pos.reshape(-1))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_from_position_ids_int32_and_single_sequence(backend):
    values = to_backend(RNG.standard_normal((5,)).astype(np.float32), backend)
    arr = bridges.from_position_ids(values, to_backend(np.arange(5, dtype=np.int32), backend))
    assert host(arr.lengths).tolist() == [5]
    arr0 = bridges.from_position_ids(to_backend(np.zeros((0, 2), np.float32), backend),
                                     to_backend(np.zeros((0,), np.int64), backend))
    assert len(arr0) == 0 and arr0.total == 0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("pos, index", [
    ([0, 1, 3, 0, 1], 2),       # gap
    ([0, 1, 2, 1, 2], 3),       # restart not at 0
    ([0, 1, 1, 2, 3], 2),       # repeat
    ([0, 1, 2, 0, -1], 4),      # negative
])
def test_from_position_ids_bad_raise_ragged_error(backend, pos, index):
    values = to_backend(RNG.standard_normal((5, 2)).astype(np.float32), backend)
    with pytest.raises(scree.RaggedError, match=f"index {index} has {pos[index]}"):
        bridges.from_position_ids(values, to_backend(np.array(pos, np.int64), backend))
    with pytest.raises(scree.RaggedError, match="start at 0"):
        bridges.from_position_ids(values, to_backend(np.array([2, 3, 0, 1, 2], np.int64), backend))

"""The CPU forward's path for items of few query rows (src/cpu/attention/fwd_few_rows.h: a decode
step's one query, the last rows of a sequence; up to 4 rows in the AVX-512 fp32 build, 2 with AVX2,
1 in the portable build) against the fp64 reference with FlashAttention's rule, on fresh random
inputs: key lengths 0, 1, on and across the 96-key block, long; q longer than k (bottom-right
causal rows that see nothing); a sequence whose last item is one row (193 rows: a 192-row block and
one); GQA; head dims with and without whole vectors (3, 80 / 48, 64); every option; every input
dtype; K and V read in place with row strides that are not Hk x D. The path serves calls that ask
for no lse (inference: no grad, no return_lse), so these calls ask for none; the direct call writes
into a NaN-poisoned output: every row written, rows that see no key 0. A call that asks for lse,
or records a gradient, keeps the blocked kernel (the backward recomputes its scores), checked last.
cpu_isa_worker.py runs decode cases (split over keys too) under each build."""

from __future__ import annotations

import pytest

import scree

torch = pytest.importorskip("torch", reason="torch is not installed")

from attention_checks import (assert_fa_close, assert_lse_close, c_varlen_fwd, fresh_seed, fwd_grads,  # noqa: E402
                              generator, poisoned, random_qkv, random_values, reference_pair)

LENGTHS = {  # (q lengths, k lengths)
    "decode": ([1, 1, 1, 1, 1, 1, 1], [0, 1, 5, 96, 97, 300, 1000]),
    "few": ([2, 3, 4, 4, 3], [3, 150, 2, 193, 0]),
    "last_row": ([193, 1], [193, 250]),
}
OPTIONS = {
    "plain": {},
    "causal": {"causal": True},
    "window": {"window": (40, 3)},
    "causal_left": {"causal": True, "window": (100, None)},
    "softcap": {"softcap": 3.0, "scale": 0.4},
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _forward(q, k, v, opts):
    """Out values of an inference call (no grad, no lse: the few-rows path's calls)."""
    with torch.no_grad():
        return scree.varlen_attention(q, k, v, **opts).values


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
def test_few_rows_match_fp64_reference(dtype, opts, lengths):
    seed = fresh_seed()
    lq, lk = lengths
    q, k, v = random_qkv(lq, lk, 4, 2, 64, 64, DTYPES[dtype], "cpu", seed)
    ref64, low = reference_pair(q, k, v, None, opts)
    assert_fa_close(f"{dtype} out", _forward(q, k, v, opts), ref64[0], low[0], seed=seed)


@pytest.mark.parametrize("d,dv", [(3, 5), (80, 48), (64, 64)])
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
def test_few_rows_direct_call_writes_every_row(d, dv, opts):
    seed = fresh_seed()
    lq, lk = LENGTHS["few"][0] + [1, 1], LENGTHS["few"][1] + [0, 97]
    q, k, v = random_qkv(lq, lk, 4, 4, d, dv, torch.float32, "cpu", seed)
    ref64, low = reference_pair(q, k, v, None, opts)
    out = poisoned((q.total, 4, dv), torch.float32, "cpu")
    c_varlen_fwd(q, k, v, out, None, opts)
    assert not torch.isnan(out).any(), "a row was never written"
    empty = torch.isneginf(ref64[1]).T
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert_fa_close(f"d {d} dv {dv} direct out", out, ref64[0], low[0], seed=seed)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_few_rows_read_strided_heads_in_place(dtype):
    """K and V as head slices of wider tensors (row strides 2 x Hk x D), the decode step of a packed
    KV cache whose heads interleave with others."""
    seed = fresh_seed()
    gen = generator(seed, "cpu")
    lq, lk = [1, 2, 1], [300, 50, 97]
    hq, hk, d = 8, 2, 64
    wide_k = random_values((sum(lk), 2 * hk, d), DTYPES[dtype], "cpu", gen)
    wide_v = random_values((sum(lk), 2 * hk, d), DTYPES[dtype], "cpu", gen)
    q = scree.from_lengths(random_values((sum(lq), hq, d), DTYPES[dtype], "cpu", gen), lq)
    k = scree.from_lengths(wide_k[:, 1::2], lk)
    v = k.with_values(wide_v[:, :hk])
    assert k.values.stride(0) == 2 * hk * d and not k.values.is_contiguous()
    for opts in ({}, {"causal": True}):
        ref64, low = reference_pair(q, k, v, None, opts)
        assert_fa_close(f"{dtype} strided out", _forward(q, k, v, opts), ref64[0], low[0], seed=seed)


@pytest.mark.parametrize("hq,hk", [(8, 1), (6, 2), (4, 4), (20, 5)])
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
def test_few_rows_heads_merged(hq, hk, opts):
    """The items of adjacent query heads are merged up to 16 rows, across kv heads too
    (group_few_rows_heads: 20 heads of one row in items of 16 and 4 heads, of 4 kv heads and of
    one; 3-row sequences in items of 5 heads, 4-row ones of 4, in the AVX-512 build); every head's
    rows reach its own output, read from its own kv head's keys and values."""
    seed = fresh_seed()
    lq, lk = [1, 2, 1, 3, 4, 1], [0, 130, 97, 5, 40, 1]
    q, k, v = random_qkv(lq, lk, hq, hk, 64, 32, torch.float32, "cpu", seed)
    ref64, low = reference_pair(q, k, v, None, opts)
    assert_fa_close(f"{hq}/{hk} out", _forward(q, k, v, opts), ref64[0], low[0], seed=seed)


@pytest.mark.parametrize("threads", [1, 2, 4, 7])
@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"causal": True, "window": (1000, None)},
                                  {"softcap": 3.0, "scale": 0.4}], ids=["plain", "causal", "window", "softcap"])
def test_few_rows_split_over_keys(threads, opts):
    """Long items split over their keys (split_few_rows_keys: an item costing more than half a
    thread's share, in parts of at least 384 keys, the last part shorter) and the parts' results
    combined (combine_few_rows_parts), on 1 thread (never split) to 7; one long sequence's decode
    step, 4-row and 2-row tails beside short ones, GQA 8/2, key lengths not a multiple of the
    96-key block; bf16 too. The direct call writes every row into a NaN-poisoned output."""
    seed = fresh_seed()
    lq, lk = [1, 4, 1, 2, 1], [5003, 2301, 97, 1500, 0]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = random_qkv(lq, lk, 8, 2, 64, 64, dtype, "cpu", seed)
            ref64, low = reference_pair(q, k, v, None, opts)
            assert_fa_close(f"{dtype} split out", _forward(q, k, v, opts), ref64[0], low[0], seed=seed)
        out = poisoned((q.total, 8, 64), torch.bfloat16, "cpu")
        c_varlen_fwd(q, k, v, out, None, opts)
        assert not torch.isnan(out).any(), "a row was never written"
        assert_fa_close("split direct out", out, ref64[0], low[0], seed=seed)
    finally:
        torch.set_num_threads(before)


def test_calls_that_ask_for_lse_keep_the_blocked_kernel():
    """One-query rows under GQA through autograd (lse kept for the backward): the forward keeps the
    blocked kernel, whose scores the backward recomputes, and the gradients meet the FA rule; the
    inference call on the same inputs takes the few-rows path and meets it too. (The reason for
    the split: tools/fuzz_attention_kernels.py --device cpu --seed 4703 --replay 11, sharp fp32
    softmaxes, put dk at 3.04x the rule's bound with the few-rows forward under the backward, 1.33x
    with the blocked one, the known float32 tail of README's accuracy paragraph.)"""
    seed = fresh_seed()
    lq, lk = [1, 1, 0, 1, 1], [143, 72, 167, 16, 227]
    q, k, v = random_qkv(lq, lk, 12, 3, 128, 128, torch.float32, "cpu", seed)
    dout = random_values((q.total, 12, 128), torch.float32, "cpu", generator(seed + 1, "cpu"))
    ref64, low = reference_pair(q, k, v, dout, {})
    got = fwd_grads(scree.varlen_attention, q, k, v, dout, {})
    assert_fa_close("lse call out", got[0], ref64[0], low[0], seed=seed)
    assert_lse_close("lse call lse", got[1], ref64[1], low[1], seed=seed)
    for name, g, r, lo in zip(("dq", "dk", "dv"), got[2], ref64[2], low[2]):
        assert_fa_close(f"lse call {name}", g, r, lo, rtol=3.0, seed=seed)
    assert_fa_close("inference out", _forward(q, k, v, {}), ref64[0], low[0], seed=seed)

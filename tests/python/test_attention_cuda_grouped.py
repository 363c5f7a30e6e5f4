"""The Hopper forward's head-grouped tiles (issue 18's GQA part; src/cuda/attention/sm90/
head_group_tiles.h): one 128-row query tile holds the G = Hq / Hk query heads of one KV head for
128 / G tokens, row r being token r / G of head r % G. Against the fp64 reference with
FlashAttention's rule on fresh random inputs, forced (SCREE_SM90_TILES=grouped) over every length
mix of the packed tiles' tests, with G = 2, 3 (128 rows not a multiple: two rows a tile unused),
4, 8 and 32 (4 tokens a tile); the backward runs on the grouped forward's out and lse. Unforced,
calls of few queries against many keys (speculative-decoding verification, small prefill chunks)
take them and give the forced order's bits; equal lengths keep the other orders. Direct calls into
NaN-poisoned outputs (every row written once, rows that see no key 0 / -inf), strided q and out
(a fused qkv slice, heads-major storage). Skipped without an sm_90 device and the Hopper kernels."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import scree  # noqa: E402

from attention_checks import (  # noqa: E402
    TILE_OPTIONS, check_against_references, check_direct_forward, check_fwd_bwd, cuda_path, fresh_seed, fwd_grads,
    generator, hopper_kernels, random_qkv, random_values, reference_pair,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]

DEV = "cuda"
_rng = np.random.default_rng(37)  # fixed lengths per run; values fresh per test
_verify_q = _rng.integers(1, 17, 24).tolist()
_verify_k = (_rng.integers(300, 1500, 24) + np.asarray(_verify_q)).tolist()
LENGTHS = {  # (q lengths, k lengths)
    "mixed_0_300": (_rng.integers(0, 301, 30).tolist(),) * 2,
    "tiny_1_64": (_rng.integers(1, 65, 40).tolist(),) * 2,
    "verify": (_verify_q, _verify_k),  # a few new tokens against a long cache (bottom-right causal)
    "q_longer": ([300, 5, 700, 64, 1], [100, 0, 128, 64, 0]),
    "empties": ([0, 5, 0, 0, 9, 0, 33, 0], [4, 5, 0, 6, 9, 600, 33, 0]),
    "tile_edges": ([31, 32, 33, 63, 64, 65, 127, 128, 129], [40, 32, 700, 63, 64, 300, 127, 128, 129]),
}
OPTIONS = TILE_OPTIONS
HEADS = {"g2": (4, 2), "g3": (6, 2), "g4": (8, 2), "g8": (8, 1), "g32": (32, 1)}  # (Hq, Hk)


needs_hopper = pytest.mark.skipif(not torch.cuda.is_available() or not hopper_kernels(),
                                  reason="head-grouped tiles are the Hopper forward's (sm_90 device, d 64/128 kernels)")


@needs_hopper
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("lengths", list(LENGTHS), ids=list(LENGTHS))
@pytest.mark.parametrize("heads", list(HEADS.values()), ids=list(HEADS))
@pytest.mark.parametrize("d", [64, 128])
def test_grouped_tiles_match_the_reference(d, heads, lengths, opts, monkeypatch):
    lq, lk = LENGTHS[lengths]
    hq, hk = heads
    seed = fresh_seed()
    dtype = torch.bfloat16 if seed % 2 else torch.float16
    q, k, v = random_qkv(lq, lk, hq, hk, d, d, dtype, DEV, seed)
    ref64, low = reference_pair(q, k, v, None, opts)
    monkeypatch.setenv("SCREE_SM90_TILES", "grouped")
    with cuda_path("sm90"):
        got = fwd_grads(scree.varlen_attention, q, k, v, None, opts)
    check_against_references(f"[grouped tiles G={hq // hk} {dtype}]", got, ref64, low, seed,
                             softcap=bool(opts.get("softcap")))


@needs_hopper
@pytest.mark.parametrize("lengths", ["verify", "mixed_0_300", "empties"])
@pytest.mark.parametrize("opts", [{}, {"causal": True}], ids=["plain", "causal"])
def test_backward_on_the_grouped_forward(lengths, opts, monkeypatch):
    """The backward (its own tile order) on the grouped forward's out and lse: gradients within the rule."""
    lq, lk = LENGTHS[lengths]
    monkeypatch.setenv("SCREE_SM90_TILES", "grouped")
    with cuda_path("sm90"):
        check_fwd_bwd("[grouped tiles] fwd+bwd", lq, lk, 8, 2, opts)


@needs_hopper
@pytest.mark.parametrize("heads", [(8, 2), (6, 2), (32, 1)], ids=["g4", "g3", "g32"])
@pytest.mark.parametrize("lengths", ["verify", "empties", "tile_edges"])
@pytest.mark.parametrize("opts", [{}, {"causal": True, "window": (12, None)}], ids=["plain", "causal_left"])
def test_direct_call_writes_every_row(heads, lengths, opts, monkeypatch):
    lq, lk = LENGTHS[lengths]
    hq, hk = heads
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, hq, hk, 128, 128, torch.bfloat16, DEV, seed)
    monkeypatch.setenv("SCREE_SM90_TILES", "grouped")
    with cuda_path("sm90"):
        check_direct_forward(f"[grouped tiles G={hq // hk}]", q, k, v, opts, seed)


@needs_hopper
@pytest.mark.parametrize("storage", ["fused_qkv", "heads_major"])
def test_strided_q_and_out(storage, monkeypatch):
    """q as a slice of a fused (T, Hq + 2 Hk, D) projection (row stride (Hq + 2 Hk) D), or as a view of
    heads-major (Hq, T, D) storage (head stride T x D): the grouped tile's Q box follows the strides."""
    lq, lk = LENGTHS["verify"]
    hq, hk, d = 8, 2, 128
    seed = fresh_seed()
    gen = generator(seed, DEV)
    tq = sum(lq)
    if storage == "fused_qkv":
        qv = random_values((tq, hq + 2 * hk, d), torch.bfloat16, DEV, gen)[:, :hq]
    else:
        qv = random_values((hq, tq, d), torch.bfloat16, DEV, gen).transpose(0, 1)
    q = scree.from_lengths(qv, lq)
    _, k, v = random_qkv(lq, lk, hq, hk, d, d, torch.bfloat16, DEV, seed + 1)
    opts = {"causal": True}
    ref64, low = reference_pair(q, k, v, None, opts)
    monkeypatch.setenv("SCREE_SM90_TILES", "grouped")
    with cuda_path("sm90"):
        got = fwd_grads(scree.varlen_attention, q, k, v, None, opts)
    check_against_references(f"[grouped tiles, {storage} q]", got, ref64, low, seed)


@needs_hopper
def test_auto_order_groups_few_queries_against_many_keys(monkeypatch):
    """Unforced: GQA calls whose longest query sequence is <= 64 and longest key sequence > 256 run
    grouped tiles (the forced order's bits); equal lengths keep the packed or sequence order, and
    so does MHA (G = 1) on verify lengths."""
    monkeypatch.delenv("SCREE_SM90_TILES", raising=False)
    cases = [(LENGTHS["verify"], (8, 2), "grouped"), (LENGTHS["verify"], (8, 8), "packed"),
             (LENGTHS["tiny_1_64"], (8, 2), "packed"), (([700] + _verify_q, [700] + _verify_k), (8, 2), "sequence")]
    for (lq, lk), (hq, hk), want in cases:
        q, k, v = random_qkv(lq, lk, hq, hk, 128, 128, torch.bfloat16, DEV, fresh_seed())
        with cuda_path("sm90"):
            auto = scree.varlen_attention(q, k, v, causal=True).values
            forced = {}
            for tiles in ("grouped", "packed", "sequence"):
                monkeypatch.setenv("SCREE_SM90_TILES", tiles)
                forced[tiles] = scree.varlen_attention(q, k, v, causal=True).values
            monkeypatch.delenv("SCREE_SM90_TILES")
        assert torch.equal(auto, forced[want]), (hq, hk, max(lq), max(lk), want)


@needs_hopper
@pytest.mark.parametrize("lengths", ["verify", "mixed_0_300", "empties", "tile_edges"])
@pytest.mark.parametrize("heads", [(8, 2), (32, 4)], ids=["g4", "g8"])
def test_longest_first_order_gives_the_same_bits(lengths, heads, monkeypatch):
    """The grouped tiles' default longest-first order (sequence_rank.cuh: sorted on the device by key
    blocks) computes every tile as the input order (SCREE_SM90_GROUPED_ORDER=input) does: the same
    bits, out and lse, also into NaN-poisoned outputs through the direct call."""
    lq, lk = LENGTHS[lengths]
    hq, hk = heads
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, hq, hk, 128, 128, torch.bfloat16, DEV, seed)
    monkeypatch.setenv("SCREE_SM90_TILES", "grouped")
    runs = {}
    with cuda_path("sm90"):
        for order in ("input", "longest"):
            monkeypatch.setenv("SCREE_SM90_GROUPED_ORDER", order)
            runs[order] = fwd_grads(scree.varlen_attention, q, k, v, None, {"causal": True})
        check_direct_forward("[grouped tiles, longest first]", q, k, v, {"causal": True}, seed)
    assert torch.equal(runs["input"][0], runs["longest"][0]) and torch.equal(runs["input"][1], runs["longest"][1]), \
        f"seed {seed}: the longest-first order changed the output"


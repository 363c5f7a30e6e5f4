"""The Hopper forward's 192-row query tiles at head dim 64 (issue 18; src/cuda/attention/sm90/fwd_rows.h):
three consumer warpgroups of 64 rows over per-sequence tiles of packed K/V, with and without their
turns, against the fp64 reference with FlashAttention's rule, and against the 128-row tiles
(SCREE_SM90_FWD_ROWS=128 / 192, SCREE_SM90_FWD_TURNS, read at every call) on the same fresh random
inputs.

Lengths: 0, 1, odd, around one and two 192-row tiles (191, 192, 193, 383, 385), longer than two
key blocks, q and k lengths that differ both ways, empty sequences between others; causal, windows,
softcap (the unfolded score map), GQA; the direct call into NaN-poisoned outputs (every row
written, rows that see no key 0 / -inf) and the backward on the 192-row forward's out and lse.
Skipped without an sm_90 device and the Hopper kernels (elsewhere the variables change nothing)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import scree  # noqa: E402

from attention_checks import (  # noqa: E402
    TILE_OPTIONS, check_against_references, check_direct_forward, check_fwd_bwd, cuda_path, fresh_seed, fwd_grads,
    hopper_kernels, random_qkv, reference_pair,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]

DEV = "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LENGTHS = {  # (q lengths, k lengths); each batch's longest is past the packed order's 128 (sequence tiles)
    "edges": ([191, 0, 1, 192, 7, 193, 385, 129], [191, 0, 1, 192, 7, 193, 385, 129]),
    "long_odd": ([1001, 3, 383, 250], [1001, 3, 383, 250]),
    "q_longer": ([300, 5, 700, 64, 1], [100, 0, 128, 64, 9]),
    "k_longer": ([200, 17, 0, 150], [640, 300, 40, 129]),
}
# (rows, turns): the 128-row tiles, and the 192-row tiles with and without turns
ROWS = {"128": ("128", "0"), "192": ("192", "0"), "192_turns": ("192", "1")}

needs_hopper = pytest.mark.skipif(not torch.cuda.is_available() or not hopper_kernels(),
                                  reason="192-row tiles are the Hopper forward's (sm_90 device, d 64 kernels)")


def _rows(monkeypatch, rows: str, turns: str) -> None:
    monkeypatch.delenv("SCREE_SM90_TILES", raising=False)
    monkeypatch.setenv("SCREE_SM90_FWD_ROWS", rows)
    monkeypatch.setenv("SCREE_SM90_FWD_TURNS", turns)


@needs_hopper
@pytest.mark.parametrize("opts", list(TILE_OPTIONS.values()), ids=list(TILE_OPTIONS))
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_row_counts_match_the_reference(dtype, lengths, opts, monkeypatch):
    lq, lk = lengths
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 8, 2, 64, 64, dtype, DEV, seed)
    ref64, low = reference_pair(q, k, v, None, opts)
    outs = {}
    for name, (rows, turns) in ROWS.items():
        _rows(monkeypatch, rows, turns)
        with cuda_path("sm90"):
            got = fwd_grads(scree.varlen_attention, q, k, v, None, opts)
        check_against_references(f"[{name} rows]", got, ref64, low, seed, softcap=bool(opts.get("softcap")))
        outs[name] = got[0]
    # A row's keys fall into the same 128-key blocks whatever the query tile: the same bits.
    assert torch.equal(outs["128"], outs["192"]), f"seed {seed}: 192-row tiles differ from 128-row ones"
    assert torch.equal(outs["192"], outs["192_turns"]), f"seed {seed}: the turns changed the output"


@needs_hopper
@pytest.mark.parametrize("rows", ["192", "192_turns"])
@pytest.mark.parametrize("lengths", ["edges", "q_longer", "k_longer"])
@pytest.mark.parametrize("opts", [{}, {"causal": True, "window": (12, None)}], ids=["plain", "causal_left"])
def test_direct_call_writes_every_row(rows, lengths, opts, monkeypatch):
    lq, lk = LENGTHS[lengths]
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 4, 2, 64, 64, torch.bfloat16, DEV, seed)
    _rows(monkeypatch, *ROWS[rows])
    with cuda_path("sm90"):
        check_direct_forward(f"[{rows} rows]", q, k, v, opts, seed)


@needs_hopper
@pytest.mark.parametrize("lengths", ["edges", "k_longer"])
@pytest.mark.parametrize("opts", [{}, {"causal": True}], ids=["plain", "causal"])
def test_backward_on_the_192_row_forward(lengths, opts, monkeypatch):
    lq, lk = LENGTHS[lengths]
    _rows(monkeypatch, "192", "0")
    with cuda_path("sm90"):
        check_fwd_bwd("[192 rows] fwd+bwd", lq, lk, 8, 2, opts, d=64)


@needs_hopper
@pytest.mark.parametrize("lq,causal", [([700, 3, 250], False), ([700, 3, 250], True), ([512, 40, 300], True)],
                         ids=["long", "long_causal", "short_causal"])
def test_unforced_choice_gives_the_forced_bits(lq, causal, monkeypatch):
    """Unforced, a d64 call takes 192 rows, or 128 where it is causal over sequences of at most 512
    (fwd_rows.h; the choice itself is tested in tests/cpp/test_sm90_fwd_rows.cpp): its output has
    every row written and equals both forced settings' to the bit (a row's keys fall in the same
    128-key blocks whatever the query tile)."""
    q, k, v = random_qkv(lq, lq, 4, 4, 64, 64, torch.bfloat16, DEV, fresh_seed())
    monkeypatch.delenv("SCREE_SM90_TILES", raising=False)
    monkeypatch.delenv("SCREE_SM90_FWD_TURNS", raising=False)
    outs = {}
    for rows in (None, "128", "192"):
        if rows is None:
            monkeypatch.delenv("SCREE_SM90_FWD_ROWS", raising=False)
        else:
            monkeypatch.setenv("SCREE_SM90_FWD_ROWS", rows)
        with cuda_path("sm90"):
            outs[rows] = scree.varlen_attention(q, k, v, causal=causal).values
    assert not torch.isnan(outs[None]).any()
    assert torch.equal(outs[None], outs["128"]) and torch.equal(outs[None], outs["192"])

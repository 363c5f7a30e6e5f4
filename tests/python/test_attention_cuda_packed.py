"""The Hopper kernels' packed tiles (issue 18; src/cuda/attention/sm90/tile_packing.cuh): in the
forward several short sequences in one 128-row query tile, each row masked to its own sequence's
keys; in the backward several in one 128-key tile, each key masked to its own sequence's queries.
Against the fp64 reference with FlashAttention's rule, with the order forced both ways
(SCREE_SM90_TILES=packed / sequence, read at every call, by both passes) on the same fresh random
inputs.

Lengths: 0..300 mixed (packed tiles beside sequence tiles of the longer ones), 1..64, <= 64 with
edges (ends off the 8-row grid, keys of empty query sequences, no keys), 130 sequences
of one token (a tile of 128 of them and a second tile), sequences straddling the packed array's
128-row boundaries, q and k lengths that differ both ways (key spans past one block, keys of empty
query sequences inside a tile, queries past a packed tile's span over keys that fit one tile), empty
sequences between packed ones; causal, windows, softcap,
GQA; the direct call into NaN-poisoned outputs (every row written, rows seeing no key 0 / -inf),
the backward on the packed forward's out and lse, and the packed backward called directly into
NaN-poisoned gradients, default and deterministic (two deterministic runs give the same bits; keys
no query sees get zero gradients; where every sequence's keys fit one tile the kernel writes dq
itself, also into rows that are only 4-byte aligned). Skipped without an sm_90 device and the
Hopper kernels (elsewhere the variable changes nothing)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import scree  # noqa: E402

from attention_checks import (  # noqa: E402
    TILE_OPTIONS, c_args, c_varlen_bwd, c_varlen_fwd, check_against_references, check_backward_direct,
    check_direct_forward, check_fwd_bwd, cuda_path, fresh_seed, fwd_grads, generator, hopper_kernels, kernel_offsets,
    poisoned, random_qkv, random_values, reference_pair, stream_of,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]

DEV = "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_rng = np.random.default_rng(18)  # the lengths are fixed per run; values are fresh per test
_mixed = _rng.integers(0, 301, 40).tolist()
_tiny = _rng.integers(1, 65, 70).tolist()
_tiny_k = _rng.integers(0, 200, 70).tolist()
LENGTHS = {  # (q lengths, k lengths)
    "mixed_0_300": (_mixed, _mixed),
    "tiny_1_64": (_tiny, _tiny),
    "ones_130": ([1] * 130, [1] * 130),
    "straddle": ([100, 50, 60, 127, 1, 128, 129, 3, 77, 51], [100, 50, 60, 127, 1, 128, 129, 3, 77, 51]),
    "q_ne_k": (_tiny, _tiny_k),
    "k_shorter": ([40, 64, 3, 17, 90], [7, 1, 0, 17, 30]),
    "empties": ([0, 5, 0, 0, 9, 0, 33, 0], [4, 5, 0, 6, 9, 200, 33, 0]),
    # keys <= 128 (the backward writes dq itself), queries past a packed tile's 256 (sequence tiles)
    "long_q_short_k": ([300, 5, 700, 64, 1], [100, 0, 128, 64, 0]),
    # sequences ending off the 8-row grid, full 64-row runs, keys of empty query sequences, no keys
    "short_edges": ([63, 2, 64, 1, 7, 57, 64, 8, 56, 9, 0, 55, 33, 31, 1, 63, 0, 64],
                    [60, 5, 64, 0, 9, 50, 64, 8, 56, 3, 40, 64, 33, 31, 2, 63, 7, 64]),
}
OPTIONS = TILE_OPTIONS


needs_hopper = pytest.mark.skipif(not torch.cuda.is_available() or not hopper_kernels(),
                                  reason="the packed order is the Hopper forward's (sm_90 device, d 64/128 kernels)")


@needs_hopper
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_packed_and_sequence_tiles_match_the_reference(dtype, d, lengths, opts, monkeypatch):
    lq, lk = lengths
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 8, 2, d, d, dtype, DEV, seed)
    ref64, low = reference_pair(q, k, v, None, opts)
    for tiles in ("packed", "sequence"):
        monkeypatch.setenv("SCREE_SM90_TILES", tiles)
        with cuda_path("sm90"):
            got = fwd_grads(scree.varlen_attention, q, k, v, None, opts)
        check_against_references(f"[{tiles} tiles]", got, ref64, low, seed, softcap=bool(opts.get("softcap")))


@needs_hopper
@pytest.mark.parametrize("lengths", ["mixed_0_300", "empties", "q_ne_k"])
@pytest.mark.parametrize("opts", [{}, {"causal": True, "window": (12, None)}], ids=["plain", "causal_left"])
def test_direct_call_writes_every_row(lengths, opts, monkeypatch):
    lq, lk = LENGTHS[lengths]
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 4, 2, 128, 128, torch.bfloat16, DEV, seed)
    monkeypatch.setenv("SCREE_SM90_TILES", "packed")
    with cuda_path("sm90"):
        check_direct_forward("[packed tiles]", q, k, v, opts, seed)


@needs_hopper
@pytest.mark.parametrize("lengths", ["mixed_0_300", "tiny_1_64", "q_ne_k"])
@pytest.mark.parametrize("opts", [{}, {"causal": True}], ids=["plain", "causal"])
def test_backward_on_the_packed_forward(lengths, opts, monkeypatch):
    lq, lk = LENGTHS[lengths]
    monkeypatch.setenv("SCREE_SM90_TILES", "packed")
    with cuda_path("sm90"):
        check_fwd_bwd("[packed tiles] fwd+bwd", lq, lk, 8, 2, opts)


@needs_hopper
@pytest.mark.parametrize("opts", [{}, {"causal": True, "window": (12, None)}, {"softcap": 4.0, "scale": 0.3}],
                         ids=["plain", "causal_left", "softcap"])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("d", [64, 128])
def test_packed_backward_direct(d, lengths, opts, monkeypatch):
    """The packed key tiles' backward into poisoned dq, dk, dv: every element written, close to the
    reference, zero for keys no query sees, and the same bits from two deterministic runs."""
    lq, lk = LENGTHS[lengths]
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 8, 2, d, d, torch.bfloat16, DEV, seed)
    dout = random_values((q.total, 8, d), torch.bfloat16, DEV, generator(seed + 1, DEV))
    ref64, low = reference_pair(q, k, v, dout, opts)
    monkeypatch.setenv("SCREE_SM90_TILES", "packed")
    out = torch.empty((q.total, 8, d), dtype=torch.bfloat16, device=DEV)
    lse = torch.empty((8, q.total), dtype=torch.float32, device=DEV)
    with cuda_path("sm90"):
        c_varlen_fwd(q, k, v, out, lse, opts)
        check_backward_direct("packed", dout, q, k, v, out, lse, opts, ref64, low, seed)


@needs_hopper
@pytest.mark.parametrize("d", [64, 128])
def test_direct_dq_rows_not_16_byte_aligned(d, monkeypatch):
    """Keys of every sequence within one tile: the backward stores dq from registers, 16-byte
    chunks only where dq's rows are 16-byte aligned; a dq whose rows are 4-byte aligned only (each
    head's row padded by two elements) gets the same bits, its padding untouched."""
    monkeypatch.delenv("SCREE_SM90_TILES", raising=False)  # k <= 128: packed key tiles unforced
    seed = fresh_seed()
    lengths = [1, 33, 0, 128, 64, 7, 100]
    q, k, v = random_qkv(lengths, lengths, 4, 2, d, d, torch.bfloat16, DEV, seed)
    dout = random_values((q.total, 4, d), torch.bfloat16, DEV, generator(seed + 1, DEV))
    out = torch.empty((q.total, 4, d), dtype=torch.bfloat16, device=DEV)
    lse = torch.empty((4, q.total), dtype=torch.float32, device=DEV)
    with cuda_path("sm90"):
        c_varlen_fwd(q, k, v, out, lse, {"causal": True})
        grads = []
        for width in (d, d + 2):
            dq = poisoned((q.total, 4, width), torch.bfloat16, DEV)
            dk, dv = (poisoned(a.values.shape, torch.bfloat16, DEV) for a in (k, v))
            c_varlen_bwd(dout, q, k, v, out, lse, dq[..., :d], dk, dv, {"causal": True})
            assert bool(torch.isnan(dq[..., d:]).all()), "the padding columns of dq were written"
            grads.append(dq[..., :d])
    assert torch.equal(grads[0], grads[1]), f"seed {seed}: strided dq differs from the contiguous one"
    assert not torch.isnan(grads[0]).any(), f"seed {seed}: a dq row was never written"


@needs_hopper
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_backward_workspace_has_no_dq_accumulator_when_keys_fit_one_tile(deterministic, monkeypatch):
    """Keys of every sequence within one packed tile: the kernel writes dq itself, so the
    workspace leaves out the float32 accumulator (Tq x Hq x D x 4 bytes) and, deterministic, its
    counters; the sizes-only formula (what scree.varlen_attention and JAX allocate) agrees with the
    one from the arrays. Sequence tiles, keys past one tile, or no bound (-1) count them."""
    from scree import _C
    monkeypatch.delenv("SCREE_SM90_TILES", raising=False)
    hq, d = 8, 128
    for lengths, direct in ((LENGTHS["tiny_1_64"][0], True), ([129] + LENGTHS["tiny_1_64"][0], False)):
        q, k, v = random_qkv(lengths, lengths, hq, 2, d, d, torch.bfloat16, DEV, fresh_seed())
        args = c_args(q, k, v, {"causal": True}, deterministic)
        sizes = (q.total, k.total, q.num_sequences, hq, d, deterministic)
        full = _C.cuda_bwd_workspace_bytes(*sizes)
        for tiles in (None, "sequence"):
            if tiles:
                monkeypatch.setenv("SCREE_SM90_TILES", tiles)
            with cuda_path("sm90"):
                exact = _C.varlen_bwd_workspace_bytes(q.values, k.values, v.values, kernel_offsets(q),
                                                      kernel_offsets(k), args)
                bound = _C.cuda_bwd_workspace_bytes(*sizes, "bfloat16", args.max_seqlen_k)
            assert exact == bound
            if direct and tiles is None:
                assert full - exact >= q.total * hq * d * 4 + (q.total * hq * 4 if deterministic else 0)
            else:
                assert exact == full
        monkeypatch.delenv("SCREE_SM90_TILES", raising=False)
    with pytest.raises(scree.DTypeError, match="int8"):
        _C.cuda_bwd_workspace_bytes(*sizes, "int8", 64)


@needs_hopper
def test_auto_order_takes_packed_tiles_for_short_sequences_only(monkeypatch):
    """Unforced, a batch whose longest sequence is short runs packed tiles and a long one sequence
    tiles: the unforced output equals the forced order's to the bit (the forward has no atomics;
    the two orders group a row's keys into different blocks, so they differ in the last bits)."""
    monkeypatch.delenv("SCREE_SM90_TILES", raising=False)
    for lq in (LENGTHS["tiny_1_64"][0], [700] + LENGTHS["tiny_1_64"][0]):
        q, k, v = random_qkv(lq, lq, 4, 4, 128, 128, torch.bfloat16, DEV, fresh_seed())
        with cuda_path("sm90"):
            auto = scree.varlen_attention(q, k, v).values
            forced = {}
            for tiles in ("packed", "sequence"):
                monkeypatch.setenv("SCREE_SM90_TILES", tiles)
                forced[tiles] = scree.varlen_attention(q, k, v).values
            monkeypatch.delenv("SCREE_SM90_TILES")
        assert torch.equal(auto, forced["packed" if max(lq) <= 128 else "sequence"])


@needs_hopper
@pytest.mark.parametrize("lengths", list(LENGTHS))
def test_schedule_covers_every_row_once(lengths, monkeypatch):
    """The schedule the device wrote (read back from the workspace, laid out as tile_packing.h says:
    the 16-byte counter, `capacity` int4 tiles, the count): every query row in exactly one tile, a
    packed tile's rows <= 128 and its key span <= 256, sequence tiles of 128 rows from m0."""
    from scree import _C
    lq, lk = LENGTHS[lengths]
    q, k, v = random_qkv(lq, lk, 2, 2, 64, 64, torch.bfloat16, DEV, fresh_seed())
    monkeypatch.setenv("SCREE_SM90_TILES", "packed")
    T, B = q.total, q.num_sequences
    ws = torch.full((_C.cuda_fwd_workspace_bytes(T, B),), 0xFF, dtype=torch.uint8, device=DEV)
    out = torch.empty_like(q.values)
    with cuda_path("sm90"):
        _C.varlen_fwd(q.values, k.values, v.values, kernel_offsets(q), kernel_offsets(k), out, None,
                      c_args(q, k, v, {}), ws, stream=stream_of(q.values))
    torch.cuda.synchronize()
    raw = ws.cpu().numpy()
    capacity = min(B, T) + 2 * -(-T // 128) + 1
    tiles = raw[16:16 + 16 * capacity].view(np.int32).reshape(capacity, 4)
    count = int(raw[16 + 16 * capacity:16 + 16 * capacity + 4].view(np.int32)[0])
    cq, ck = np.asarray(q.host_offsets), np.asarray(k.host_offsets)
    seen = np.zeros(T, np.int64)
    for first, end, m0, _ in tiles[:count]:
        assert 0 <= first < end <= B, (first, end)
        if end - first > 1:
            assert m0 == 0 and cq[end] - cq[first] <= 128 and ck[end] - ck[first] <= 256
            assert all(cq[b + 1] - cq[b] <= 128 for b in range(first, end))
            seen[cq[first]:cq[end]] += 1
        else:
            assert m0 % 128 == 0 and cq[first] + m0 < cq[first + 1]
            seen[cq[first] + m0:min(cq[first] + m0 + 128, cq[first + 1])] += 1
    assert (seen == 1).all(), f"rows covered {np.unique(seen)} times"
    if lengths in ("ones_130", "tiny_1_64"):  # short sequences do share tiles
        assert count < B / 2, (count, B)


@needs_hopper
@pytest.mark.parametrize("lengths", ["tiny_1_64", "q_ne_k", "empties"])
def test_kept_schedules_serve_later_calls(lengths, monkeypatch):
    """The forward's and the backward's packed schedules are packed by the first call over a layout
    pair and read by the later ones (kept with q's Layout, ready once a call wrote them): every call
    gives the first call's bits, close to the reference; a switch to sequence tiles in between
    leaves a kept schedule valid, and another k layout gets a schedule of its own."""
    from scree.kernels.attention import TileSchedule
    lq, lk = LENGTHS[lengths]
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 8, 2, 128, 128, torch.bfloat16, DEV, seed)
    dout = random_values((q.total, 8, 128), torch.bfloat16, DEV, generator(seed + 1, DEV))
    ref64, low = reference_pair(q, k, v, dout, {"causal": True})
    monkeypatch.setenv("SCREE_SM90_TILES", "sequence")
    with cuda_path("sm90"):
        fwd_grads(scree.varlen_attention, q, k, v, dout, {"causal": True})  # writes no schedule
        kept = list(q._layout.plans.get("tile_schedules", {}).values())
        assert kept and all(isinstance(s, TileSchedule) and not s.ready for s in kept)
        monkeypatch.setenv("SCREE_SM90_TILES", "packed")
        runs = [fwd_grads(scree.varlen_attention, q, k, v, dout, {"causal": True}) for _ in range(3)]
    kept = list(q._layout.plans["tile_schedules"].values())
    assert len(kept) == 2 and all(s.ready for s in kept), "the packed calls did not keep their schedules"
    check_against_references("[kept schedules]", runs[-1], ref64, low, seed)
    for run in runs[1:]:
        assert torch.equal(run[0], runs[0][0]) and all(torch.equal(a, b) for a, b in zip(run[2], runs[0][2])), \
            f"seed {seed}: a call reading the kept schedule differs from the call that packed it"
    # Another k layout (same q layout): a schedule of its own, not the first pair's.
    lk2 = [x + 1 for x in lk]
    k2 = scree.from_lengths(random_values((sum(lk2), 2, 128), torch.bfloat16, DEV, generator(seed + 2, DEV)), lk2)
    v2 = k2.with_values(random_values((sum(lk2), 2, 128), torch.bfloat16, DEV, generator(seed + 3, DEV)))
    ref2, low2 = reference_pair(q, k2, v2, None, {"causal": True})
    with cuda_path("sm90"), torch.no_grad():
        got = fwd_grads(scree.varlen_attention, q, k2, v2, None, {"causal": True})
    check_against_references("[second k layout]", got, ref2, low2, seed)


@needs_hopper
def test_schedule_argument_is_checked(monkeypatch):
    """scree._C's `schedule`: too small, misaligned, or said ready without one: a typed error, and
    nothing runs."""
    from scree import _C
    lq = LENGTHS["tiny_1_64"][0]
    q, k, v = random_qkv(lq, lq, 2, 2, 64, 64, torch.bfloat16, DEV, fresh_seed())
    monkeypatch.setenv("SCREE_SM90_TILES", "packed")
    need = _C.cuda_tile_schedule_bytes(q.total, q.num_sequences)
    assert need > 0
    out = torch.empty_like(q.values)
    call = lambda schedule, ready: _C.varlen_fwd(  # noqa: E731
        q.values, k.values, v.values, kernel_offsets(q), kernel_offsets(k), out, None, c_args(q, k, v, {}),
        None, None, stream_of(q.values), schedule, ready)
    buf = torch.zeros(need + 16, dtype=torch.uint8, device=DEV)
    with cuda_path("sm90"):
        with pytest.raises(scree.ArgumentError, match="tile schedule needs"):
            call(buf[:need - 16], False)
        with pytest.raises(scree.ArgumentError, match="not 16-byte aligned"):
            call(buf[1:need + 1], False)
        with pytest.raises(scree.ArgumentError, match="without a tile schedule"):
            call(None, True)
        assert call(buf[:need], False) is True and call(buf[:need], True) is True
    torch.cuda.synchronize()

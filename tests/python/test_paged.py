"""scree.PagedKV and scree.paged_attention (issue 17): attention over a paged KV cache against the
fp64 reference (kernels.reference.paged_attention, which reads the pages token by token) with
FlashAttention's tolerance rule, on fresh random inputs: page sizes 1, 16 and 64, sequences ending
exactly on a page boundary, empty sequences, pages in random order with padding entries holding
garbage, NHD and HND layouts, decode (one query), chunked prefill and both in one batch, GQA,
causal, windows, softcap; the table checks (typed errors naming the sequence; on a device, the
deferred verdict); KV append by slot mapping."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from cases import make_cache, native
from scree._paged import _PagedCheck
from scree.kernels import reference as R

BACKENDS = ["numpy", "torch"]


def on(backend, *xs):
    return tuple(native(backend, x) for x in xs)


def f64(x):
    return np.asarray(x.detach().double().numpy() if hasattr(x, "detach") else x, dtype=np.float64)


def assert_fa_close(got, ref64, low, extra=1e-5):
    err = np.abs(f64(got) - f64(ref64)).max(initial=0.0)
    base = np.abs(f64(low) - f64(ref64)).max(initial=0.0)
    assert err <= 2 * base + extra, f"error {err:.3g} vs the reference in the input dtype {base:.3g}"


CASES = {  # (kv lengths, query lengths): decode, chunked prefill, mixed, empty, page boundaries
    "decode": ([37, 64, 1, 130, 16], [1, 1, 1, 1, 1]),
    "prefill_chunks": ([37, 64, 130, 16], [37, 20, 7, 16]),
    "mixed": ([0, 64, 200, 3, 48], [0, 1, 33, 3, 1]),
    # queries in blocks of more than 4 row tiles: the CPU forward copies their values from the
    # pages into column panels item by item (fwd.cpp's v_panels)
    "long_prefill": ([130, 300], [100, 290]),
}
OPTIONS = {"plain": {}, "causal": {"causal": True}, "window": {"causal": True, "window": (24, None)},
           "softcap": {"softcap": 5.0, "scale": 0.2}}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
def test_paged_attention_matches_fp64_reference(backend, layout, page_size, case, opts):
    if backend == "torch":
        pytest.importorskip("torch")
    rng = np.random.default_rng()
    kv_lens, q_lens = CASES[case]
    hq, hk, d = 4, 2, 16
    kp, vp, table, lens = make_cache(rng, kv_lens, page_size, hk, d, layout)
    kv = scree.PagedKV(*on(backend, kp, vp, table, lens), layout=layout)
    qv = (rng.standard_normal((sum(q_lens), hq, d)) + 0.1).astype(np.float32)
    q = scree.from_lengths(native(backend, qv), q_lens)
    got = scree.paged_attention(q, kv, **opts, return_lse=True)
    kv64 = scree.PagedKV(kp.astype(np.float64), vp.astype(np.float64), table, lens, layout=layout)
    ref64 = R.paged_attention(scree.from_lengths(qv.astype(np.float64), q_lens), kv64, **opts, return_lse=True)
    low = R.paged_attention(scree.from_lengths(qv, q_lens), scree.PagedKV(kp, vp, table, lens, layout=layout),
                            **opts, return_lse=True, upcast=False)
    assert got[0].offsets is q.offsets
    assert_fa_close(got[0].values, ref64[0].values, low[0].values)
    finite = np.isfinite(f64(ref64[1]))
    assert np.array_equal(finite, np.isfinite(f64(got[1])))
    assert_fa_close(f64(got[1])[finite], f64(ref64[1])[finite], f64(low[1])[finite], extra=1e-4)


def test_paged_attention_equals_varlen_attention_on_the_same_tokens():
    """A cache whose pages hold exactly a packed K/V gives what varlen_attention gives on them."""
    rng = np.random.default_rng()
    lens, page = [16, 48, 32], 16
    k = (rng.standard_normal((96, 2, 8)) + 0.1).astype(np.float32)
    v = (rng.standard_normal((96, 2, 8)) + 0.1).astype(np.float32)
    kv = scree.PagedKV(k.reshape(6, page, 2, 8), v.reshape(6, page, 2, 8), np.array([[0, 0, 0], [1, 2, 3], [4, 5, 0]]),
                       np.array(lens))
    q = scree.from_lengths((rng.standard_normal((9, 4, 8)) + 0.1).astype(np.float32), [1, 5, 3])
    K = scree.from_lengths(k, lens)
    want = scree.varlen_attention(q, K, K.with_values(v), causal=True).values
    np.testing.assert_array_equal(scree.paged_attention(q, kv, causal=True).values, want)


# ---- the table checks -------------------------------------------------------------------------------
def _cache(rng, lens=(20, 7), page=16):
    return make_cache(rng, list(lens), page, 2, 8, spare=0)


def test_bad_tables_raise_naming_the_sequence():
    rng = np.random.default_rng(0)
    kp, vp, table, lens = _cache(rng)
    bad = table.copy()
    bad[1, 0] = 99
    with pytest.raises(scree.RaggedError, match="sequence 1: page 0 is page id 99"):
        scree.PagedKV(kp, vp, bad, lens)
    with pytest.raises(scree.RaggedError, match="sequence 0 holds 60 tokens, 4 pages"):
        scree.PagedKV(kp, vp, table, np.array([60, 7], np.int32))
    with pytest.raises(scree.RaggedError, match=r"kv_lens\[1\] = -2"):
        scree.PagedKV(kp, vp, table, np.array([20, -2], np.int32))
    with pytest.raises(scree.ShapeError, match="one per sequence"):
        scree.PagedKV(kp, vp, table, lens[:1])
    with pytest.raises(scree.ShapeError, match="num_pages, page_size, heads, head_dim"):
        scree.PagedKV(kp[0], vp, table, lens)
    with pytest.raises(scree.DTypeError, match="int32 or int64"):
        scree.PagedKV(kp, vp, table.astype(np.float32), lens)
    with pytest.raises(scree.ArgumentError, match="layout"):
        scree.PagedKV(kp, vp, table, lens, layout="NDH")
    with pytest.raises(scree.ShapeError, match="q has 1 sequences"):
        scree.paged_attention(scree.from_lengths(np.ones((1, 2, 8), np.float32), [1]), scree.PagedKV(kp, vp, table, lens))
    scree.PagedKV(kp, vp, bad, lens, validate=False)  # trusted: no check


def test_device_verdict_raises_with_the_sequence_named():
    """The deferred check (used for device tables) run on host arrays: its summary and verdict."""
    rng = np.random.default_rng(1)
    kp, vp, table, lens = _cache(rng)
    good = scree.PagedKV(kp, vp, table, lens, validate=False)
    check = _PagedCheck(good)
    check.verdict(check.readback.value())
    assert good.max_kv_len == 20
    bad_table = table.copy()
    bad_table[0, 1] = -1
    bad = scree.PagedKV(kp, vp, bad_table, lens, validate=False)
    check = _PagedCheck(bad)
    assert int(check.readback.value()[0]) == 1
    with pytest.raises(scree.RaggedError, match="sequence 0: page 1 is page id -1"):
        check.verdict(check.readback.value())


# ---- append ---------------------------------------------------------------------------------------
def on_device(backend, *xs):
    """on(), but torch tensors on the GPU ("torch-cuda"; skipped without one). JAX arrays go to
    JAX's default device, a GPU where one is visible."""
    if backend != "torch-cuda":
        return on(backend, *xs)
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    return tuple(t.cuda() for t in on("torch", *xs))


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "torch-cuda"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_append_writes_slots_and_skips_padding(backend, layout):
    pytest.importorskip(backend.split("-")[0])
    rng = np.random.default_rng()
    kp, vp, table, lens = make_cache(rng, [5, 17], 4, 2, 8, layout)
    kv = scree.PagedKV(*on_device(backend, kp, vp, table, lens), layout=layout)
    knew = rng.standard_normal((3, 2, 8)).astype(np.float32)
    vnew = rng.standard_normal((3, 2, 8)).astype(np.float32)
    slots = np.array([int(table[0, 1]) * 4 + 1, -1, int(table[1, 4]) * 4], np.int64)  # token 5 of seq 0, pad, 16 of 1
    out = kv.append(*on_device(backend, knew, vnew, slots))
    if backend != "jax":
        assert out is kv
    got_k = np.asarray(out.k_pages.cpu() if backend == "torch-cuda" else out.k_pages)
    want = kp.copy()
    for row, s in ((0, slots[0]), (2, slots[2])):
        if layout == "NHD":
            want[s // 4, s % 4] = knew[row]
        else:
            want[s // 4, :, s % 4] = knew[row]
    np.testing.assert_array_equal(got_k, want)
    with pytest.raises(scree.ArgumentError, match=f"slot {kp.shape[0] * 4 + 3}, past the cache's"):
        kv.append(*on_device(backend, knew[:2], vnew[:2], np.array([kp.shape[0] * 4 + 3, -1], np.int64)))
    with pytest.raises(scree.ShapeError, match="len\\(slot_mapping\\)"):
        kv.append(*on_device(backend, knew[:2], vnew[:2], slots))
    kv.append(*on_device(backend, knew[:1], vnew[:1], np.array([-1], np.int64)))  # padding only: nothing written


# ---- CUDA: the varlen kernels on the gathered tokens, the device check of the tables ----------------
def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    return torch


@pytest.mark.cuda
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_paged_attention_cuda_bf16(d, case):
    torch = _cuda()
    rng = np.random.default_rng()
    kv_lens, q_lens = CASES[case]
    kp, vp, table, lens = make_cache(rng, kv_lens, 16, 2, d)
    dev = lambda x: torch.from_numpy(x).cuda()  # noqa: E731
    kv = scree.PagedKV(dev(kp).bfloat16(), dev(vp).bfloat16(), dev(table), dev(lens))
    qv = (rng.standard_normal((sum(q_lens), 8, d)) + 0.1).astype(np.float32)
    q = scree.from_lengths(dev(qv).bfloat16(), q_lens)
    got = scree.paged_attention(q, kv, causal=True).values
    # the fp64 reference on the same (bf16-rounded) inputs, and the reference in bf16 for the FA rule
    kp16, vp16, q16 = (torch.from_numpy(x).bfloat16() for x in (kp, vp, qv))
    kv64 = scree.PagedKV(kp16.double().numpy(), vp16.double().numpy(), table, lens)
    ref64 = R.paged_attention(scree.from_lengths(q16.double().numpy(), q_lens), kv64, causal=True).values
    kvlow = scree.PagedKV(kp16, vp16, torch.from_numpy(table), torch.from_numpy(lens))
    low = R.paged_attention(scree.from_lengths(q16, q_lens), kvlow, causal=True, upcast=False).values
    assert_fa_close(got.float().cpu(), ref64, low.float(), extra=4e-3)


@pytest.mark.cuda
def test_bad_device_tables_raise_at_the_next_call_without_a_sync():
    torch = _cuda()
    rng = np.random.default_rng(2)
    kp, vp, table, lens = _cache(rng)
    table[1, 0] = 999
    parts = [torch.from_numpy(x).cuda() for x in (kp, vp, table, lens)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        kv = scree.PagedKV(*parts)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    with pytest.raises(scree.RaggedError, match="sequence 1: page 0 is page id 999"):
        scree.from_lengths(torch.zeros(3, 1, device="cuda"), [3])  # any later scree call polls
    assert kv.max_kv_len is None


DECODE = {  # (kv lengths, heads q, heads k, options)
    "gqa4_long": ([1, 300, 3000, 16, 0, 47], 8, 2, {}),           # one sequence split many ways, one empty
    "mha": ([700, 5, 64], 4, 4, {"softcap": 3.0}),
    "gqa8_window": ([2048, 100, 17], 16, 2, {"window": (50, 0)}),
    "gqa2_scale": ([33, 1000], 4, 2, {"scale": 0.05}),
    "gqa3_softcap_window": ([511, 512, 513, 64], 6, 2, {"softcap": 5.0, "window": (100, 0)}),  # tile edges
    "mqa20": ([129, 65, 1, 4097], 20, 1, {}),  # 20 query heads a kv head: two blocks of 16 rows
}


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("case", list(DECODE), ids=list(DECODE))
def test_cuda_decode_kernel_reads_the_pages(case, d, page_size, layout):
    """The CUDA paged decode (the pages read in place, keys split and merged by lse) against the
    fp64 reference, out and lse, with FlashAttention's rule."""
    torch = _cuda()
    from scree.kernels import paged
    rng = np.random.default_rng()
    kv_lens, hq, hk, opts = DECODE[case]
    kp, vp, table, lens = make_cache(rng, kv_lens, page_size, hk, d, layout)
    dev = lambda x: torch.from_numpy(x).cuda()  # noqa: E731
    for dt in (torch.bfloat16, torch.float16):
        kv = scree.PagedKV(dev(kp).to(dt), dev(vp).to(dt), dev(table), dev(lens), layout=layout)
        qv = (rng.standard_normal((len(kv_lens), hq, d)) + 0.1).astype(np.float32)
        q = scree.from_lengths(dev(qv).to(dt), [1] * len(kv_lens))
        assert paged.decode_serves(q, kv)
        out, lse = scree.paged_attention(q, kv, **opts, return_lse=True)
        kp16, vp16, q16 = (torch.from_numpy(x).to(dt) for x in (kp, vp, qv))
        kv64 = scree.PagedKV(kp16.double().numpy(), vp16.double().numpy(), table, lens, layout=layout)
        ref64 = R.paged_attention(scree.from_lengths(q16.double().numpy(), [1] * len(kv_lens)), kv64, **opts,
                                  return_lse=True)
        kvlow = scree.PagedKV(kp16, vp16, torch.from_numpy(table), torch.from_numpy(lens), layout=layout)
        low = R.paged_attention(scree.from_lengths(q16, [1] * len(kv_lens)), kvlow, **opts, return_lse=True,
                                upcast=False)
        assert_fa_close(out.values.float().cpu(), ref64[0].values, low[0].values.float(), extra=4e-3)
        finite = np.isfinite(f64(ref64[1]))
        assert np.array_equal(finite, np.isfinite(f64(lse.cpu())))
        assert_fa_close(f64(lse.cpu())[finite], f64(ref64[1])[finite], f64(low[1])[finite], extra=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_kernel_reads_the_pages_and_checks_an_unvalidated_table(backend):
    """Host arrays take the CPU kernel over the pages (scree._C.paged_fwd_cpu), which checks the
    table itself: a PagedKV built with validate=False and a bad page id still gives a RaggedError
    naming the sequence, never a read outside the cache."""
    if backend == "torch":
        pytest.importorskip("torch")
    from scree.kernels import paged
    rng = np.random.default_rng()
    kp, vp, table, lens = make_cache(rng, [40, 3, 17], 16, 2, 8)
    q = scree.from_lengths(native(backend, rng.standard_normal((6, 4, 8)).astype(np.float32)), [2, 3, 1])
    kv = scree.PagedKV(*on(backend, kp, vp, table, lens))
    assert paged.cpu_serves(q, kv)
    bad = table.copy()
    bad[2, 1] = 10 ** 6
    trusted = scree.PagedKV(*on(backend, kp, vp, bad, lens), validate=False)
    with pytest.raises(scree.RaggedError, match="sequence 2: page 1 is page id 1000000"):
        scree.paged_attention(q, trusted, causal=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unvalidated_empty_table_with_a_huge_length_is_an_error_not_a_crash(backend):
    """Found by fuzzing: a (n, 0) page table has a null data pointer in torch, and the CPU kernel
    took 'no table pointer' for 'not paged' and read a million rows of a 16-row cache (a segfault).
    The paged flag is explicit now, and the check names the sequence."""
    if backend == "torch":
        pytest.importorskip("torch")
    kp = np.ones((1, 16, 1, 8), np.float32)
    kv = scree.PagedKV(*on(backend, kp, kp, np.zeros((1, 0), np.int64), np.array([10 ** 6])), validate=False)
    q = scree.from_lengths(native(backend, np.ones((2, 3, 8), np.float32)), [2])
    with pytest.raises(scree.RaggedError, match="sequence 0 holds 1000000 tokens, 62500 pages of 16"):
        scree.paged_attention(q, kv, causal=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_head_dim_may_differ(backend):
    """v pages with their own head dim (Dv != D), on the CPU kernel and in append."""
    if backend == "torch":
        pytest.importorskip("torch")
    rng = np.random.default_rng()
    kp, vp, table, lens = make_cache(rng, [9, 30], 4, 2, 8)
    vp = (rng.standard_normal(vp.shape[:3] + (5,)) + 0.1).astype(np.float32)
    kv = scree.PagedKV(*on(backend, kp, vp, table, lens))
    qv = (rng.standard_normal((4, 4, 8)) + 0.1).astype(np.float32)
    got = scree.paged_attention(scree.from_lengths(native(backend, qv), [1, 3]), kv, causal=True).values
    assert tuple(got.shape) == (4, 4, 5)
    want = R.paged_attention(scree.from_lengths(qv, [1, 3]), scree.PagedKV(kp, vp, table, lens), causal=True).values
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    slots = np.array([int(table[0, 0]) * 4], np.int64)
    kv.append(*on(backend, np.ones((1, 2, 8), np.float32), np.ones((1, 2, 5), np.float32), slots))


PREFILL = {  # (kv lengths, query lengths, heads q, heads k, options): the Hopper forward over the pages
    "chunks_causal": ([300, 129, 1000, 16], [44, 129, 256, 1], 8, 2, {"causal": True}),
    "mixed_window_softcap": ([0, 700, 33, 256, 5], [0, 200, 1, 17, 5], 4, 4,
                             {"causal": True, "window": (64, 0), "softcap": 4.0}),
    "not_causal_mqa": ([513, 90], [100, 90], 6, 1, {}),
    # speculative-decoding verification: the forward's head-grouped tiles (forced below)
    "verify_gqa": ([700, 1300, 40, 515], [5, 16, 1, 9], 8, 2, {"causal": True}),
    "verify_mqa_window_softcap": ([300, 999, 257], [3, 8, 1], 8, 1, {"causal": True, "window": (100, 0), "softcap": 5.0}),
}


def poison_past_ends(pages, table, lens, page_size, layout):
    """NaN in every slot after a sequence's end in its last page (never-written cache memory)."""
    for i, n in enumerate(lens):
        if n % page_size:
            page, first = table[i, (n - 1) // page_size], n % page_size
            if layout == "NHD":
                pages[page, first:] = np.nan
            else:
                pages[page, :, first:] = np.nan


# (page size, loader): SCREE_SM90_PAGED_LOADER forces the producer's loader; TMA takes pages of 16,
# 32, 64, 128 and multiples of 128, cp.async any size (1: SGLang's token pool; 24: not a power of 2).
PAGED_LOADERS = [(ps, "copy") for ps in (1, 16, 24, 32, 64, 128, 256)] + [
    (ps, "tma") for ps in (16, 32, 64, 128, 256)]


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize(("page_size", "loader"), PAGED_LOADERS, ids=[f"{ps}-{ld}" for ps, ld in PAGED_LOADERS])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("case", list(PREFILL), ids=list(PREFILL))
def test_cuda_paged_forward_reads_the_pages(case, d, page_size, loader, layout, monkeypatch):
    """Chunked prefill and mixed batches on CUDA: the Hopper forward loads K/V tiles out of the
    pages (never the gather path) by each loader, against the fp64 reference with FlashAttention's
    rule; NaN in the unused slots of a sequence's last page must not reach the output."""
    torch = _cuda()
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the CUDA paged forward runs on Hopper")
    monkeypatch.setenv("SCREE_SM90_PAGED_LOADER", loader)
    if case.startswith("verify"):
        monkeypatch.setenv("SCREE_SM90_TILES", "grouped")  # what the auto rule picks for these (head_group_tiles.h)
    from scree import _paged_attention
    from scree.kernels import paged
    rng = np.random.default_rng()
    kv_lens, q_lens, hq, hk, opts = PREFILL[case]
    kp, vp, table, lens = make_cache(rng, kv_lens, page_size, hk, d, layout)
    poison_past_ends(kp, table, lens, page_size, layout)
    poison_past_ends(vp, table, lens, page_size, layout)
    monkeypatch.setattr(_paged_attention, "cached_kv", lambda kv: pytest.fail("took the gather path"))
    dev = lambda x: torch.from_numpy(x).cuda()  # noqa: E731
    tab = dev(table).long() if layout == "HND" else dev(table)  # int64 tables too
    for dt in (torch.bfloat16, torch.float16):
        kv = scree.PagedKV(dev(kp).to(dt), dev(vp).to(dt), tab, dev(lens), layout=layout)
        qv = (rng.standard_normal((sum(q_lens), hq, d)) + 0.1).astype(np.float32)
        q = scree.from_lengths(dev(qv).to(dt), q_lens)
        assert paged.cuda_serves(q, kv)
        out, lse = scree.paged_attention(q, kv, **opts, return_lse=True)
        kp16, vp16, q16 = (torch.from_numpy(x).to(dt) for x in (kp, vp, qv))
        kv64 = scree.PagedKV(kp16.double().numpy(), vp16.double().numpy(), table, lens, layout=layout)
        ref64 = R.paged_attention(scree.from_lengths(q16.double().numpy(), q_lens), kv64, **opts, return_lse=True)
        kvlow = scree.PagedKV(kp16, vp16, torch.from_numpy(table), torch.from_numpy(lens), layout=layout)
        low = R.paged_attention(scree.from_lengths(q16, q_lens), kvlow, **opts, return_lse=True, upcast=False)
        assert torch.isfinite(out.values).all()
        assert_fa_close(out.values.float().cpu(), ref64[0].values, low[0].values.float(), extra=4e-3)
        finite = np.isfinite(f64(ref64[1]))
        assert np.array_equal(finite, np.isfinite(f64(lse.cpu())))
        assert_fa_close(f64(lse.cpu())[finite], f64(ref64[1])[finite], f64(low[1])[finite], extra=1e-3)

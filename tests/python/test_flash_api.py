"""scree.integrations.flash_api (FlashAttention-2's Python API computed by scree) against the fp64
reference on torch CPU tensors: packed sequences (causal, windows, softcap, GQA, lengths 0, 1,
odd and q != k), paged caches through `block_table`, `flash_attn_with_kvcache` writing new tokens
into a shuffled paged cache and into a dense one before attending, the dense `flash_attn_func`,
and what the API has that scree does not (dropout, ALiBi, rotary, cache_batch_idx) raising."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import scree  # noqa: E402
from cases import make_cache  # noqa: E402
from scree.integrations import flash_api as fa  # noqa: E402
from scree.kernels import reference as R  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TOL = dict(rtol=1e-9, atol=1e-9)  # float64 end to end


def _rand(rng, *shape):
    return torch.from_numpy(rng.standard_normal(shape) + 0.1)


def _offsets(lengths):
    return torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)


@pytest.mark.parametrize("opts", [dict(causal=True), dict(causal=False, window_size=(3, 2)),
                                  dict(causal=True, window_size=(4, 0), softcap=1.5, softmax_scale=0.3)],
                         ids=["causal", "window", "window_softcap_scale"])
def test_varlen_matches_reference(rng, opts):
    q_lens, k_lens = [5, 0, 1, 9, 3], [7, 4, 1, 9, 12]
    q, k, v = _rand(rng, sum(q_lens), 4, 8), _rand(rng, sum(k_lens), 2, 8), _rand(rng, sum(k_lens), 2, 8)
    cu_q, cu_k = _offsets(q_lens), _offsets(k_lens)
    out, lse, _ = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), return_attn_probs=True,
                                           **opts)
    ws = opts.get("window_size")
    want, want_lse = R.varlen_attention(scree.from_offsets(q.numpy(), cu_q.numpy()),
                                        scree.from_offsets(k.numpy(), cu_k.numpy()),
                                        scree.from_offsets(v.numpy(), cu_k.numpy()), causal=opts["causal"],
                                        scale=opts.get("softmax_scale"), window=ws, softcap=opts.get("softcap"),
                                        return_lse=True)
    np.testing.assert_allclose(out.numpy(), np.asarray(want.values), **TOL)
    finite = np.isfinite(np.asarray(want_lse))
    np.testing.assert_allclose(lse.numpy()[finite], np.asarray(want_lse)[finite], **TOL)


def _paged(rng, lens, page, hk, d):
    """A shuffled paged cache holding lens[i] tokens of sequence i (cases.make_cache, float64), and
    rows(cache, i): sequence i's tokens gathered out of it."""
    kp, vp, table, _ = make_cache(rng, lens, page, hk, d, dtype=np.float64)
    need = [-(-n // page) for n in lens]
    rows = lambda c, i: c[torch.from_numpy(table[i, :need[i]]).long()].reshape(-1, hk, d)[:lens[i]]  # noqa: E731
    return torch.from_numpy(kp), torch.from_numpy(vp), torch.from_numpy(table), rows


def test_varlen_over_pages(rng):
    lens, q_lens, page = [9, 16, 1, 30], [2, 16, 1, 5], 4
    kc, vc, table, rows = _paged(rng, lens, page, 2, 8)
    q = _rand(rng, sum(q_lens), 6, 8)
    out = fa.flash_attn_varlen_func(q, kc, vc, _offsets(q_lens), _offsets(lens), max(q_lens), max(lens), causal=True,
                                    block_table=table)
    kp = torch.cat([rows(kc, i) for i in range(len(lens))])
    vp = torch.cat([rows(vc, i) for i in range(len(lens))])
    want = R.varlen_attention(scree.from_lengths(q.numpy(), q_lens), scree.from_lengths(kp.numpy(), lens),
                              scree.from_lengths(vp.numpy(), lens), causal=True)
    np.testing.assert_allclose(out.numpy(), np.asarray(want.values), **TOL)


@pytest.mark.parametrize("paged", [True, False], ids=["paged", "dense"])
def test_with_kvcache_appends_then_attends(rng, paged):
    """Decode (one new token) and a chunk of three: the new K/V land at cache_seqlens, attention
    covers the old tokens and the new ones (bottom-right causal), other slots stay untouched."""
    lens, page, hk, d = [5, 0, 12, 7], 4, 2, 8
    for new in (1, 3):
        if paged:
            kc, vc, table, _ = _paged(rng, [n + new for n in lens], page, hk, d)
        else:
            kc, vc, table = _rand(rng, len(lens), 16, hk, d), _rand(rng, len(lens), 16, hk, d), None
        before_k, before_v = kc.clone(), vc.clone()
        q = _rand(rng, len(lens), new, 4, d)
        k_new, v_new = _rand(rng, len(lens), new, hk, d), _rand(rng, len(lens), new, hk, d)
        cache_seqlens = torch.tensor(lens, dtype=torch.int32)
        out, lse = fa.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=cache_seqlens, block_table=table,
                                              causal=True, return_softmax_lse=True)
        assert out.shape == (len(lens), new, 4, d) and lse.shape == (len(lens), 4, new)
        ks, vs, written = [], [], torch.zeros(kc.shape[:2], dtype=torch.bool)
        for i, n in enumerate(lens):
            tab = table[i, :-(-(n + new) // page)].long() if paged else torch.tensor([i])  # entries past: garbage
            flat = lambda c: c[tab].reshape(-1, hk, d)  # noqa: E731
            ks.append(torch.cat([flat(before_k)[:n], k_new[i]]))
            vs.append(torch.cat([flat(before_v)[:n], v_new[i]]))
            torch.testing.assert_close(flat(kc)[n:n + new], k_new[i], rtol=0, atol=0)
            torch.testing.assert_close(flat(vc)[n:n + new], v_new[i], rtol=0, atol=0)
            for t in range(n, n + new):
                written[tab[t // kc.shape[1]], t % kc.shape[1]] = True
        torch.testing.assert_close(kc[~written], before_k[~written], rtol=0, atol=0)
        full = [n + new for n in lens]
        want, want_lse = R.varlen_attention(scree.from_lengths(q.reshape(-1, 4, d).numpy(), [new] * len(lens)),
                                            scree.from_lengths(torch.cat(ks).numpy(), full),
                                            scree.from_lengths(torch.cat(vs).numpy(), full), causal=True,
                                            return_lse=True)
        np.testing.assert_allclose(out.reshape(-1, 4, d).numpy(), np.asarray(want.values), **TOL)
        np.testing.assert_allclose(lse.permute(1, 0, 2).reshape(4, -1).numpy(), np.asarray(want_lse), **TOL)


def test_dense_func(rng):
    q, k, v = _rand(rng, 3, 5, 4, 8), _rand(rng, 3, 9, 2, 8), _rand(rng, 3, 9, 2, 8)
    out = fa.flash_attn_func(q, k, v, causal=True)
    want = R.varlen_attention(scree.from_lengths(q.reshape(-1, 4, 8).numpy(), [5] * 3),
                              scree.from_lengths(k.reshape(-1, 2, 8).numpy(), [9] * 3),
                              scree.from_lengths(v.reshape(-1, 2, 8).numpy(), [9] * 3), causal=True)
    np.testing.assert_allclose(out.reshape(-1, 4, 8).numpy(), np.asarray(want.values), **TOL)


def test_unsupported_features_raise(rng):
    q, k, v = _rand(rng, 4, 2, 8), _rand(rng, 4, 2, 8), _rand(rng, 4, 2, 8)
    cu = _offsets([4])
    with pytest.raises(scree.UnsupportedError, match="dropout"):
        fa.flash_attn_varlen_func(q, k, v, cu, cu, 4, 4, dropout_p=0.1)
    with pytest.raises(scree.UnsupportedError, match="alibi"):
        fa.flash_attn_varlen_func(q, k, v, cu, cu, 4, 4, alibi_slopes=torch.ones(2))
    kc = _rand(rng, 1, 8, 2, 8)
    with pytest.raises(scree.UnsupportedError, match="rotary"):
        fa.flash_attn_with_kvcache(q[None], kc, kc.clone(), rotary_cos=torch.ones(8, 4), rotary_sin=torch.ones(8, 4))
    with pytest.raises(scree.UnsupportedError, match="cache_batch_idx"):
        fa.flash_attn_with_kvcache(q[None], kc, kc.clone(), cache_batch_idx=torch.zeros(1, dtype=torch.int32))
    with pytest.raises(scree.ArgumentError, match="cache_seqlens"):
        fa.flash_attn_with_kvcache(q[None], kc, kc.clone(), k[None, :1], v[None, :1])


def test_with_kvcache_full_dense_cache(rng):
    """No cache_seqlens and no new tokens: every slot of the dense cache is a key."""
    q, kc, vc = _rand(rng, 2, 3, 4, 8), _rand(rng, 2, 6, 2, 8), _rand(rng, 2, 6, 2, 8)
    out = fa.flash_attn_with_kvcache(q, kc, vc, causal=True)
    want = fa.flash_attn_func(q, kc, vc, causal=True)
    np.testing.assert_allclose(out.numpy(), want.numpy(), **TOL)


@pytest.mark.cuda
@pytest.mark.parametrize("dt", ["bfloat16", "float16"])
def test_cuda_decode_and_prefill_match_reference(rng, dt):
    """On CUDA half tensors: flash_attn_with_kvcache (one new token a sequence over a shuffled
    16-token paged cache: scree's decode kernel after the append) and flash_attn_varlen_func over
    the same pages (the Hopper paged forward; the gather path elsewhere), against the fp64
    reference by FlashAttention's rule."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from attention_checks import assert_fa_close
    dtype = getattr(torch, dt)
    lens, page, hk, d = [33, 0, 130, 16, 7], 16, 2, 128
    kp, vp, table, rows = _paged(rng, [n + 1 for n in lens], page, hk, d)
    kl, vl = kp.to(dtype), vp.to(dtype)  # the low-precision cache both paths and the reference see
    q = _rand(rng, len(lens), 1, 8, d).to(dtype)
    k_new, v_new = _rand(rng, len(lens), 1, hk, d).to(dtype), _rand(rng, len(lens), 1, hk, d).to(dtype)
    kc, vc = kl.cuda(), vl.cuda()
    out = fa.flash_attn_with_kvcache(q.cuda(), kc, vc, k_new.cuda(), v_new.cuda(),
                                     cache_seqlens=torch.tensor(lens, dtype=torch.int32, device="cuda"),
                                     block_table=table.cuda(), causal=True)
    ks = [torch.cat([rows(kl, i)[:n], k_new[i]]) for i, n in enumerate(lens)]
    vs = [torch.cat([rows(vl, i)[:n], v_new[i]]) for i, n in enumerate(lens)]
    full = [n + 1 for n in lens]

    def ref(upcast):
        cast = (lambda x: x.double().numpy()) if upcast else (lambda x: x)  # noqa: E731
        r = R.varlen_attention(scree.from_lengths(cast(q.reshape(-1, 8, d)), [1] * len(lens)),
                               scree.from_lengths(cast(torch.cat(ks)), full),
                               scree.from_lengths(cast(torch.cat(vs)), full), causal=True, upcast=upcast)
        return torch.as_tensor(np.asarray(r.values)) if upcast else r.values
    assert_fa_close("with_kvcache", out.reshape(-1, 8, d).cpu(), ref(True), ref(False).float())
    # The cache now holds the new tokens: a 3-token chunk per sequence over it, by varlen + block_table.
    q3 = _rand(rng, 3 * len(lens), 8, d).to(dtype)
    cu_q = torch.arange(0, 3 * len(lens) + 1, 3, dtype=torch.int32)
    cu_k = torch.tensor(np.concatenate([[0], np.cumsum(full)]), dtype=torch.int32)
    got = fa.flash_attn_varlen_func(q3.cuda(), kc, vc, cu_q.cuda(), cu_k.cuda(), 3, max(full), causal=True,
                                    block_table=table.cuda())
    want64 = R.varlen_attention(scree.from_lengths(q3.double().numpy(), [3] * len(lens)),
                                scree.from_lengths(torch.cat(ks).double().numpy(), full),
                                scree.from_lengths(torch.cat(vs).double().numpy(), full), causal=True)
    low = R.varlen_attention(scree.from_lengths(q3, [3] * len(lens)), scree.from_lengths(torch.cat(ks), full),
                             scree.from_lengths(torch.cat(vs), full), causal=True, upcast=False)
    assert_fa_close("varlen block_table", got.cpu(), torch.as_tensor(np.asarray(want64.values)), low.values.float())

"""The serving engines' metadata -> scree.PagedKV and back (issue 17), on metadata built the way the
engines build it (read from their sources; the engines themselves do not install on these
machines): vLLM v1's persistent block table (int32, rows past the batch and entries past a
request's blocks left 0), its slot mapping (block number * block_size + offset, PAD_SLOT_ID -1 for
the CUDA-graph padding tokens past num_actual_tokens) and padded query buffer; SGLang's
req_to_token pool (page size 1) with req_pool_indices, seq_lens and out_cache_loc of an extend
batch; FlashInfer's CSR page lists (kv_indptr, kv_indices, kv_last_page_len) and its
(num_pages, 2, ...) cache. A step of each engine (append this step's K/V, attend) is checked
against dense varlen attention on the same tokens; bad metadata gives typed errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import scree
from scree.bridges import serving

torch = pytest.importorskip("torch")

HQ, HK, D = 4, 2, 16


def dense_step(rng, ctx_lens, q_lens):
    """Per request: all its K/V tokens (the cached prefix and this step's) and its queries."""
    ks = [rng.standard_normal((n, HK, D)).astype(np.float32) for n in ctx_lens]
    vs = [rng.standard_normal((n, HK, D)).astype(np.float32) for n in ctx_lens]
    qs = [rng.standard_normal((n, HQ, D)).astype(np.float32) for n in q_lens]
    return ks, vs, qs


def want(ks, vs, qs, ctx_lens, q_lens):
    K = scree.from_lengths(torch.from_numpy(np.concatenate(ks)), ctx_lens)
    V = K.with_values(torch.from_numpy(np.concatenate(vs)))
    Q = scree.from_lengths(torch.from_numpy(np.concatenate(qs)), q_lens)
    return scree.varlen_attention(Q, K, V, causal=True).values


def vllm_batch(rng, ctx_lens=(37, 16, 130, 5), q_lens=(37, 1, 9, 1)):
    """One vLLM step: the cache with each request's prefix written as earlier steps did, the
    persistent block table, and this step's metadata and tensors padded to 64 tokens (CUDA graph)."""
    ctx_lens, q_lens = list(ctx_lens), list(q_lens)
    block_size, num_blocks, max_reqs, max_blocks = 16, 40, 8, 12
    ks, vs, qs = dense_step(rng, ctx_lens, q_lens)
    kv_cache = torch.zeros((2, num_blocks, block_size, HK, D))
    block_table = torch.zeros((max_reqs, max_blocks), dtype=torch.int32)  # vLLM's persistent buffer
    free = list(rng.permutation(num_blocks))
    for r, n in enumerate(ctx_lens):
        blocks = [int(free.pop()) for _ in range(-(-n // block_size))]
        block_table[r, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
    for r, n in enumerate(ctx_lens):
        for t in range(n - q_lens[r]):
            b = int(block_table[r, t // block_size])
            kv_cache[0, b, t % block_size] = torch.from_numpy(ks[r][t])
            kv_cache[1, b, t % block_size] = torch.from_numpy(vs[r][t])
    num_actual = sum(q_lens)
    positions = np.concatenate([np.arange(n - q, n) for n, q in zip(ctx_lens, q_lens)])
    req = np.repeat(np.arange(len(q_lens)), q_lens)
    slot = block_table.numpy()[req, positions // block_size].astype(np.int64) * block_size + positions % block_size
    slot_mapping = torch.full((64,), -1, dtype=torch.int64)
    slot_mapping[:num_actual] = torch.from_numpy(slot)
    new_k, new_v, query = torch.zeros((64, HK, D)), torch.zeros((64, HK, D)), torch.zeros((64, HQ, D))
    new_k[:num_actual] = torch.from_numpy(np.concatenate([k[-q:] for k, q in zip(ks, q_lens)]))
    new_v[:num_actual] = torch.from_numpy(np.concatenate([v[-q:] for v, q in zip(vs, q_lens)]))
    query[:num_actual] = torch.from_numpy(np.concatenate(qs))
    meta = SimpleNamespace(  # vLLM v1's FlashAttentionMetadata fields
        num_actual_tokens=num_actual, max_query_len=max(q_lens), max_seq_len=max(ctx_lens),
        query_start_loc=torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32),
        seq_lens=torch.tensor(ctx_lens, dtype=torch.int32), block_table=block_table, slot_mapping=slot_mapping)
    return dict(kv_cache=kv_cache, meta=meta, new_k=new_k, new_v=new_v, query=query,
                want=want(ks, vs, qs, ctx_lens, q_lens), num_blocks=num_blocks)


def test_vllm_step():
    rng = np.random.default_rng()
    b = vllm_batch(rng)
    m, kv_cache, num_actual = b["meta"], b["kv_cache"], b["meta"].num_actual_tokens
    block_table, seq_lens, num_blocks = m.block_table, m.seq_lens, b["num_blocks"]
    ctx_lens = seq_lens.tolist()
    kv = serving.from_vllm(kv_cache, block_table, seq_lens)
    assert kv.k_pages.data_ptr() == kv_cache[0].data_ptr()  # the engine's memory, not a copy
    kv.append(b["new_k"], b["new_v"], m.slot_mapping)      # padding slots (-1) skipped
    q = serving.vllm_queries(b["query"], m.query_start_loc, num_actual, max_query_len=m.max_query_len)
    got = scree.paged_attention(q, kv, causal=True).values
    torch.testing.assert_close(got, b["want"])
    k2, v2, table2, lens2 = serving.to_vllm(kv)
    assert k2.data_ptr() == kv_cache[0].data_ptr() and torch.equal(lens2, seq_lens)
    assert torch.equal(table2, block_table[:len(ctx_lens)])

    bad = block_table.clone()
    bad[2, 3] = num_blocks
    with pytest.raises(scree.RaggedError, match="sequence 2: page 3 is page id 40"):
        serving.from_vllm(kv_cache, bad, seq_lens)
    with pytest.raises(scree.RaggedError, match="sequence 0 holds 500 tokens"):
        serving.from_vllm(kv_cache, block_table, torch.tensor([500, 1, 1, 1], dtype=torch.int32))


def test_sglang_extend_step():
    rng = np.random.default_rng()
    pool, max_reqs, max_ctx = 300, 6, 256
    ctx_lens = [20, 7, 64]
    prefix = [12, 0, 63]                      # extend_prefix_lens: already cached
    ext = [c - p for c, p in zip(ctx_lens, prefix)]
    ks, vs, qs = dense_step(rng, ctx_lens, ext)
    k_buffer = torch.zeros((pool, HK, D))
    v_buffer = torch.zeros((pool, HK, D))
    req_to_token = torch.zeros((max_reqs, max_ctx), dtype=torch.int32)
    req_pool_indices = torch.tensor([4, 0, 2], dtype=torch.int64)
    free = rng.permutation(pool)
    at = 0
    for r, n in enumerate(ctx_lens):
        req_to_token[req_pool_indices[r], :n] = torch.from_numpy(free[at:at + n].astype(np.int32))
        at += n
    for r, p in enumerate(prefix):
        locs = req_to_token[req_pool_indices[r], :p].long()
        k_buffer[locs] = torch.from_numpy(ks[r][:p])
        v_buffer[locs] = torch.from_numpy(vs[r][:p])
    out_cache_loc = torch.cat([req_to_token[req_pool_indices[r], p:c].long() for r, (p, c) in enumerate(zip(prefix, ctx_lens))])
    seq_lens = torch.tensor(ctx_lens, dtype=torch.int64)

    kv = serving.from_sglang(k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens)
    assert kv.page_size == 1
    kv.append(torch.from_numpy(np.concatenate([k[p:] for k, p in zip(ks, prefix)])),
              torch.from_numpy(np.concatenate([v[p:] for v, p in zip(vs, prefix)])), out_cache_loc)
    q = serving.sglang_queries(torch.from_numpy(np.concatenate(qs)), torch.tensor(ext))
    got = scree.paged_attention(q, kv, causal=True).values
    torch.testing.assert_close(got, want(ks, vs, qs, ctx_lens, ext))
    kb, vb, table, idx, lens = serving.to_sglang(kv)
    assert kb.data_ptr() == k_buffer.data_ptr() and torch.equal(lens, seq_lens)
    assert torch.equal(table, req_to_token[req_pool_indices])
    with pytest.raises(scree.RaggedError, match="sequence 1 holds 300 tokens"):
        serving.from_sglang(k_buffer, v_buffer, req_to_token, req_pool_indices, torch.tensor([20, 300, 64]))


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_flashinfer_round_trip_and_attention(layout):
    rng = np.random.default_rng()
    page, num_pages = 16, 30
    ctx_lens = [33, 0, 16, 70]
    q_lens = [1, 0, 16, 5]
    ks, vs, qs = dense_step(rng, ctx_lens, q_lens)
    shape = (num_pages, 2, page, HK, D) if layout == "NHD" else (num_pages, 2, HK, page, D)
    cache = torch.zeros(shape)
    free = list(rng.permutation(num_pages))
    indptr, indices, last = [0], [], []
    for r, n in enumerate(ctx_lens):
        pages = [int(free.pop()) for _ in range(-(-n // page))]
        indices += pages
        indptr.append(len(indices))
        last.append(n - (len(pages) - 1) * page if pages else 0)
        for t in range(n):
            p, s = pages[t // page], t % page
            if layout == "NHD":
                cache[p, 0, s], cache[p, 1, s] = torch.from_numpy(ks[r][t]), torch.from_numpy(vs[r][t])
            else:
                cache[p, 0, :, s], cache[p, 1, :, s] = torch.from_numpy(ks[r][t]), torch.from_numpy(vs[r][t])
    kv_indptr = torch.tensor(indptr, dtype=torch.int32)
    kv_indices = torch.tensor(indices, dtype=torch.int32)
    kv_last = torch.tensor(last, dtype=torch.int32)
    qo_indptr = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32)

    kv = serving.from_flashinfer(cache, kv_indptr, kv_indices, kv_last, kv_layout=layout)
    assert kv.max_kv_len == 70
    q = serving.flashinfer_queries(torch.from_numpy(np.concatenate(qs)), qo_indptr)
    torch.testing.assert_close(scree.paged_attention(q, kv, causal=True).values, want(ks, vs, qs, ctx_lens, q_lens))
    (k2, v2), indptr2, indices2, last2 = serving.to_flashinfer(kv)
    assert torch.equal(indptr2, kv_indptr) and torch.equal(indices2, kv_indices) and torch.equal(last2, kv_last)
    bad = kv_last.clone()
    bad[3] = page + 1
    with pytest.raises(scree.ArgumentError, match=r"kv_last_page_len\[3\] = 17"):
        serving.from_flashinfer(cache, kv_indptr, kv_indices, bad, kv_layout=layout)
    bad_idx = kv_indices.clone()
    bad_idx[0] = num_pages + 5
    with pytest.raises(scree.RaggedError, match="sequence 0: page 0 is page id 35"):
        serving.from_flashinfer(cache, kv_indptr, bad_idx, kv_last, kv_layout=layout)


def test_vllm_and_flashinfer_give_the_same_cache():
    """The same pages described by a vLLM block table and by FlashInfer's page lists."""
    rng = np.random.default_rng()
    kv_cache = torch.randn((2, 10, 4, HK, D))
    block_table = torch.tensor([[3, 7, 0, 0], [1, 0, 0, 0], [9, 2, 5, 0]], dtype=torch.int32)
    seq_lens = torch.tensor([6, 4, 9], dtype=torch.int32)
    a = serving.from_vllm(kv_cache, block_table, seq_lens)
    (k, v), indptr, indices, last = serving.to_flashinfer(a)
    assert indices.tolist() == [3, 7, 1, 9, 2, 5] and last.tolist() == [2, 4, 1]
    b = serving.from_flashinfer((k, v), indptr, indices, last)
    q = scree.from_lengths(torch.from_numpy(rng.standard_normal((3, HQ, D)).astype(np.float32)), [1, 1, 1])
    torch.testing.assert_close(scree.paged_attention(q, a).values, scree.paged_attention(q, b).values)


def test_vllm_adapter_forward():
    """scree.integrations.vllm.forward with vLLM's call: writes the step's K/V and the output rows."""
    from scree.integrations import vllm
    b = vllm_batch(np.random.default_rng())
    n = b["meta"].num_actual_tokens
    output = torch.full((64, HQ, D), 7.0)
    vllm.forward(b["query"], b["new_k"], b["new_v"], b["kv_cache"], b["meta"], output, scale=D ** -0.5)
    torch.testing.assert_close(output[:n], b["want"])
    assert torch.equal(output[n:], torch.full((64 - n, HQ, D), 7.0))  # CUDA-graph padding rows untouched


class _TokenPool:
    """SGLang's MHATokenToKVPool as its backends use it (one layer here)."""

    def __init__(self, k, v):
        self.k, self.v = k, v

    def get_key_buffer(self, layer_id):
        return self.k

    def get_value_buffer(self, layer_id):
        return self.v

    def set_kv_buffer(self, layer, loc, k, v):
        self.k[loc] = k
        self.v[loc] = v


@pytest.mark.parametrize("mode", ["extend", "decode"])
def test_sglang_backend(mode):
    from scree.integrations.sglang import ScreeAttnBackend
    rng = np.random.default_rng()
    ctx_lens = [20, 7, 64]
    new = [8, 7, 1] if mode == "extend" else [1, 1, 1]
    ks, vs, qs = dense_step(rng, ctx_lens, new)
    pool_size = 200
    req_to_token = torch.zeros((6, 128), dtype=torch.int32)
    req_pool_indices = torch.tensor([4, 0, 2], dtype=torch.int64)
    slots = rng.permutation(pool_size)
    at = 0
    pool = _TokenPool(torch.zeros((pool_size, HK, D)), torch.zeros((pool_size, HK, D)))
    for r, c in enumerate(ctx_lens):
        req_to_token[req_pool_indices[r], :c] = torch.from_numpy(slots[at:at + c].astype(np.int32))
        at += c
        locs = req_to_token[req_pool_indices[r], :c - new[r]].long()
        pool.k[locs] = torch.from_numpy(ks[r][:c - new[r]])
        pool.v[locs] = torch.from_numpy(vs[r][:c - new[r]])
    out_cache_loc = torch.cat([req_to_token[req_pool_indices[r], c - q:c].long() for r, (c, q) in enumerate(zip(ctx_lens, new))])
    fb = SimpleNamespace(
        forward_mode=SimpleNamespace(is_decode=lambda: mode == "decode"),
        req_to_token_pool=SimpleNamespace(req_to_token=req_to_token), req_pool_indices=req_pool_indices,
        seq_lens=torch.tensor(ctx_lens, dtype=torch.int64), out_cache_loc=out_cache_loc,
        extend_seq_lens=torch.tensor(new, dtype=torch.int32), token_to_kv_pool=pool)
    layer = SimpleNamespace(tp_q_head_num=HQ, tp_k_head_num=HK, head_dim=D, scaling=D ** -0.5, logit_cap=0.0,
                            sliding_window_size=-1, layer_id=0)
    flat = lambda xs: torch.from_numpy(np.concatenate(xs)).reshape(sum(new), -1)  # noqa: E731
    out = ScreeAttnBackend().forward(flat(qs), flat([k[-q:] for k, q in zip(ks, new)]),
                                     flat([v[-q:] for v, q in zip(vs, new)]), layer, fb)
    assert out.shape == (sum(new), HQ * D)
    torch.testing.assert_close(out.reshape(-1, HQ, D), want(ks, vs, qs, ctx_lens, new))

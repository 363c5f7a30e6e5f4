"""The serving engines' metadata <-> scree (issue 17): a paged KV cache (scree.PagedKV) over the
engine's own cache memory, and the batch's queries as a scree.Array, from what vLLM, SGLang and
FlashInfer hand an attention backend; and back. Conversions run on the arrays' device with the
framework's ops: no host sync, except where the result's size depends on the values (to_flashinfer's
page list). Every conversion checks the tables (scree.PagedKV: typed errors naming the sequence).

* vLLM (v1, FlashAttention backend): a layer's `kv_cache` `(2, num_blocks, block_size, Hk, D)`,
  `block_table` `(max_num_reqs, max_num_blocks_per_req)` int32 (the persistent buffer: rows past the
  batch and entries past a request's blocks are not read), `seq_lens` `(num_reqs,)` int32 (context
  length including this step's tokens), `query_start_loc` `(num_reqs + 1,)` int32, `slot_mapping`
  `(num_tokens,)` int64 (block number * block_size + offset; PAD_SLOT_ID -1 for padding).
* SGLang: `req_to_token` `(max_reqs, max_context_len)` int32 (token slot of each position of each
  request), `req_pool_indices` `(bs,)` and `seq_lens` `(bs,)` int64, a layer's key and value buffers
  `(num_slots, Hk, D)` (page size 1), `extend_seq_lens` / `extend_prefix_lens` `(bs,)` for an extend
  (prefill) batch, `out_cache_loc` `(num_new_tokens,)`: the new tokens' slots.
* FlashInfer: `paged_kv_cache` `(num_pages, 2, page_size, Hk, D)` ("NHD") or
  `(num_pages, 2, Hk, page_size, D)` ("HND"), or a (k_cache, v_cache) pair of
  `(num_pages, page_size, Hk, D)` / `(num_pages, Hk, page_size, D)`; `kv_indptr` `(bs + 1,)`,
  `kv_indices` `(nnz_pages,)`, `kv_last_page_len` `(bs,)` int32 (1..page_size for a sequence with
  pages); `qo_indptr` `(bs + 1,)` for the queries."""

from __future__ import annotations

from typing import Any

import numpy as np

from scree import _backends
from scree._array import Array
from scree._construct import from_cu_seqlens
from scree._errors import ArgumentError, ShapeError
from scree._paged import PagedKV

__all__ = ["from_vllm", "to_vllm", "vllm_queries", "from_sglang", "to_sglang", "sglang_queries", "from_flashinfer",
           "to_flashinfer", "flashinfer_queries"]


# ---- vLLM -----------------------------------------------------------------------------------------
def from_vllm(kv_cache: Any, block_table: Any, seq_lens: Any) -> PagedKV:
    """vLLM's layer cache (a `(2, num_blocks, block_size, Hk, D)` tensor or a (key, value) pair),
    block table and seq_lens as a PagedKV over the same memory (module doc)."""
    k, v = _pair(kv_cache, "kv_cache")
    ns = _backends.of(block_table)
    n = ns.shape(seq_lens)[0]
    return PagedKV(k, v, block_table[:n], seq_lens)


def to_vllm(kv: PagedKV) -> tuple[Any, Any, Any, Any]:
    """(key_cache, value_cache, block_table, seq_lens) of vLLM's FlashAttention backend (the caches
    `(num_blocks, block_size, Hk, D)`: HND pages are transposed into a copy)."""
    ns = kv._ns
    k, v = kv.k_pages, kv.v_pages
    if kv.layout == "HND":
        k, v = ns.contiguous(ns.swapaxes(k, 1, 2)), ns.contiguous(ns.swapaxes(v, 1, 2))
    return k, v, ns.astype(kv.page_table, "int32"), ns.astype(kv.kv_lens, "int32")


def vllm_queries(query: Any, query_start_loc: Any, num_actual_tokens: int | None = None,
                 max_query_len: int | None = None) -> Array:
    """The batch's queries `(num_tokens, Hq, D)` as an Array split by query_start_loc, zero-copy.
    vLLM pads num_tokens for CUDA graphs; its metadata's num_actual_tokens (= query_start_loc[-1])
    drops the padding rows (a view)."""
    if num_actual_tokens is not None:
        query = query[:num_actual_tokens]
    return from_cu_seqlens(query, query_start_loc, max_seqlen=max_query_len)


# ---- SGLang ---------------------------------------------------------------------------------------
def from_sglang(k_buffer: Any, v_buffer: Any, req_to_token: Any, req_pool_indices: Any, seq_lens: Any) -> PagedKV:
    """SGLang's token pool (page size 1: a layer's key and value buffers `(num_slots, Hk, D)`) and
    request table as a PagedKV: sequence i's page table is req_to_token[req_pool_indices[i]]."""
    ns = _backends.of(k_buffer)
    for name, x in (("k_buffer", k_buffer), ("v_buffer", v_buffer)):
        if len(ns.shape(x)) != 3:
            raise ShapeError(f"{name} must have shape (num_slots, heads, head_dim), got {tuple(ns.shape(x))}")
    rows = ns.astype(req_pool_indices, "int64")
    table = req_to_token[rows]
    return PagedKV(_one_token_pages(ns, k_buffer), _one_token_pages(ns, v_buffer), table, seq_lens)


def to_sglang(kv: PagedKV) -> tuple[Any, Any, Any, Any, Any]:
    """(k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens) for a cache of one-token
    pages: the page table as req_to_token with request i in row i."""
    if kv.page_size != 1:
        raise ArgumentError(f"SGLang's token pool has one token per slot; this cache has pages of {kv.page_size}")
    ns = kv._ns
    n = kv.num_sequences
    k = ns.reshape(kv.flat_pages("k"), (kv.num_pages, kv.heads, kv.head_dim))
    v = ns.reshape(kv.flat_pages("v"), (kv.num_pages, kv.heads, kv.head_dim))
    return (k, v, ns.astype(kv.page_table, "int32"), ns.arange(n, "int64", like=kv.page_table),
            ns.astype(kv.kv_lens, "int64"))


def sglang_queries(q: Any, extend_seq_lens: Any) -> Array:
    """An extend (prefill) batch's queries `(num_new_tokens, Hq, D)` split by extend_seq_lens
    (offsets made on the device: no sync); a decode batch has one query per request."""
    ns = _backends.of(q)
    lens = ns.astype(extend_seq_lens, "int64")
    offsets = ns.concat([ns.zeros((1,), "int64", like=lens), ns.cumsum(lens)])
    return Array(q, offsets)


# ---- FlashInfer -----------------------------------------------------------------------------------
def from_flashinfer(paged_kv_cache: Any, kv_indptr: Any, kv_indices: Any, kv_last_page_len: Any,
                    kv_layout: str = "NHD") -> PagedKV:
    """FlashInfer's paged cache and its CSR page lists as a PagedKV (module doc). The page table's
    width is the longest page list where the host reads kv_indptr (FlashInfer's plan() takes it on
    the host), else the total page count (a bound: no sync)."""
    ns = _backends.of(kv_indices)
    if isinstance(paged_kv_cache, (tuple, list)):
        k, v = _pair(paged_kv_cache, "paged_kv_cache")
    else:
        s = tuple(_backends.of(paged_kv_cache).shape(paged_kv_cache))
        if len(s) != 5 or s[1] != 2:
            raise ShapeError(f"paged_kv_cache must have shape (num_pages, 2, ...) or be a (k, v) pair, got {s}")
        k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
    ks = tuple(_backends.of(k).shape(k))
    if len(ks) != 4:
        raise ShapeError(f"FlashInfer's pages must be 4-D per k and v, got {ks}")
    page_size = ks[1] if kv_layout == "NHD" else ks[2]
    indptr = ns.astype(kv_indptr, "int64")
    n = ns.shape(indptr)[0] - 1
    if n < 0:
        raise ShapeError("kv_indptr must have at least one entry")
    npages = indptr[1:] - indptr[:-1]
    last = ns.astype(kv_last_page_len, "int64")
    if ns.shape(last)[0] != n:
        raise ShapeError(f"kv_last_page_len has {ns.shape(last)[0]} entries, kv_indptr describes {n} sequences")
    nnz = ns.shape(kv_indices)[0]
    if ns.host_readable(indptr) and ns.host_readable(last):
        hp, hl = ns.to_numpy(npages), ns.to_numpy(last)
        bad = np.flatnonzero((hp > 0) & ((hl < 1) | (hl > page_size)))
        if bad.size:
            i = int(bad[0])
            raise ArgumentError(f"kv_last_page_len[{i}] = {int(hl[i])}: a sequence with pages fills 1 to "
                                f"{page_size} tokens of its last page")
        width = int(hp.max(initial=0))
        if (hp < 0).any() or int(ns.to_numpy(indptr)[-1]) > nnz:
            raise ArgumentError(f"kv_indptr must be non-decreasing and end within kv_indices ({nnz} pages)")
    else:
        width = nnz
    col = ns.reshape(ns.arange(width, "int64", like=indptr), (1, width))
    used = col < ns.reshape(npages, (n, 1))
    at = ns.where(used, ns.reshape(indptr[:-1], (n, 1)) + col, col * 0)
    ids = ns.astype(kv_indices, "int64")
    if nnz:
        at = ns.where(at < nnz, at, at * 0)  # (indices past the list only in a table the check rejects)
        table = ns.where(used, ids[at], at * 0)
    else:
        table = at * 0
    # A last page filled outside 1..page_size becomes length -1, which the table check reports.
    valid = (last >= 1) & (last <= page_size)
    lens = ns.where(npages > 0, ns.where(valid, (npages - 1) * page_size + last, last * 0 - 1), npages * 0)
    return PagedKV(k, v, table, lens, layout=kv_layout)


def to_flashinfer(kv: PagedKV) -> tuple[tuple[Any, Any], Any, Any, Any]:
    """((k_pages, v_pages), kv_indptr, kv_indices, kv_last_page_len), int32 (kv_indices is read
    out of the page table by the pages in use: a host read of kv_lens for device tables)."""
    ns = kv._ns
    size = kv.page_size
    lens = kv.host_kv_lens()
    pages = -(-lens // size)
    indptr = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(pages, out=indptr[1:])
    seg = np.repeat(np.arange(len(lens), dtype=np.int64), pages)
    col = np.arange(int(indptr[-1]), dtype=np.int64) - indptr[seg]
    like = kv.page_table
    indices = kv.page_table[ns.from_numpy(seg, like=like), ns.from_numpy(col, like=like)]
    last = np.where(pages > 0, lens - (pages - 1) * size, 0)
    return ((kv.k_pages, kv.v_pages), ns.from_numpy(indptr.astype(np.int32), like=like),
            ns.astype(indices, "int32"), ns.from_numpy(last.astype(np.int32), like=like))


def flashinfer_queries(q: Any, qo_indptr: Any) -> Array:
    """The queries `(nnz_qo, Hq, D)` split by qo_indptr (zero-copy)."""
    return Array(q, qo_indptr)


# ---- helpers ---------------------------------------------------------------------------------------
def _pair(cache: Any, name: str) -> tuple[Any, Any]:
    if isinstance(cache, (tuple, list)):
        if len(cache) != 2:
            raise ShapeError(f"{name} as a pair must be (key_cache, value_cache), got {len(cache)} items")
        return cache[0], cache[1]
    s = tuple(_backends.of(cache).shape(cache))
    if len(s) != 5 or s[0] != 2:
        raise ShapeError(f"{name} must have shape (2, num_blocks, block_size, heads, head_dim), got {s}")
    return cache[0], cache[1]


def _one_token_pages(ns: Any, buf: Any) -> Any:
    s = tuple(ns.shape(buf))
    return ns.reshape(buf, (s[0], 1, s[1], s[2]))

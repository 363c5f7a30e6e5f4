"""Role: FlashAttention-2's Python API (`flash_attn_func`, `flash_attn_varlen_func`,
`flash_attn_with_kvcache`) computed by scree, for code written against that API (imports torch).

HuggingFace transformers reaches attention kernels from the Kernel Hub through exactly these three
functions, and its continuous batching (`model.generate_batch`) accepts only `paged|eager`, `sdpa`
or a flash implementation: `scree.integrations.transformers.register_kernel()` exposes this module
as the local kernel repository `scree/flash-attn`, so that `attn_implementation="scree/flash-attn"`
serves `generate_batch` (prefill through `flash_attn_varlen_func`, decode over the paged cache
through `flash_attn_with_kvcache` with its `block_table`).

Semantics are FlashAttention's: tensors (tokens, heads, head_dim), causal masks aligned
bottom-right, `window_size=(left, right)` with -1 for an unbounded side, `softcap` 0 for none,
`block_table` (batch, pages) of int32 page ids into (num_pages, page_size, heads_k, head_dim)
caches. `flash_attn_with_kvcache` writes `k`, `v` into the cache at `cache_seqlens` (in place), then
attends over the first `cache_seqlens + k.shape[1]` tokens. What FlashAttention offers and scree
does not (dropout, ALiBi, rotary embedding inside the call, `cache_batch_idx`, `cache_leftpad`)
raises `scree.UnsupportedError` rather than computing something else.
"""

from __future__ import annotations

from typing import Any

import torch

import scree
from scree._errors import ArgumentError, UnsupportedError

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"]


def _window(window_size: Any) -> tuple[int, int] | None:
    if window_size is None:
        return None
    left, right = (int(x) for x in window_size)
    return None if left < 0 and right < 0 else (left, right)


def _refuse(**features: Any) -> None:
    for name, value in features.items():
        if value is not None and value is not False and not (isinstance(value, float) and value == 0.0):
            raise UnsupportedError(f"scree's flash_attn API does not support {name}")


def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int | None = None,
                           max_seqlen_k: int | None = None, dropout_p: float = 0.0,
                           softmax_scale: float | None = None, causal: bool = False,
                           window_size: Any = (-1, -1), softcap: float = 0.0, alibi_slopes: Any = None,
                           deterministic: bool = False, return_attn_probs: bool = False,
                           block_table: torch.Tensor | None = None) -> Any:
    """Attention of packed sequences: q (total_q, Hq, D), k/v (total_k, Hk, D) split by
    `cu_seqlens_q/k` (n + 1 offsets); with `block_table`, k/v are paged caches (num_pages,
    page_size, Hk, D) and `cu_seqlens_k` gives each sequence's cached length. Returns out
    (total_q, Hq, Dv), and (out, lse (Hq, total_q), None) with `return_attn_probs` (lse only: no
    probabilities are formed)."""
    _refuse(dropout=float(dropout_p), alibi_slopes=alibi_slopes)
    qa = scree.from_offsets(q, cu_seqlens_q)
    opts = dict(causal=bool(causal), scale=softmax_scale, window=_window(window_size), softcap=softcap or None,
                return_lse=bool(return_attn_probs))
    if block_table is not None:
        kv = scree.PagedKV(k, v, block_table, cu_seqlens_k[1:] - cu_seqlens_k[:-1])
        res = scree.paged_attention(qa, kv, **opts)
    else:
        res = scree.varlen_attention(qa, scree.from_offsets(k, cu_seqlens_k), scree.from_offsets(v, cu_seqlens_k),
                                     deterministic=deterministic or None, **opts)
    if return_attn_probs:
        out, lse = res
        return out.values, lse, None
    return res.values


def flash_attn_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                    softmax_scale: float | None = None, causal: bool = False, window_size: Any = (-1, -1),
                    softcap: float = 0.0, alibi_slopes: Any = None, deterministic: bool = False,
                    return_attn_probs: bool = False) -> Any:
    """Attention of a dense batch: q (batch, seqlen_q, Hq, D), k/v (batch, seqlen_k, Hk, D) (every
    row its own sequence). Returns out (batch, seqlen_q, Hq, Dv)."""
    b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
    cu_q = torch.arange(0, (b + 1) * sq, sq, dtype=torch.int32, device=q.device)
    cu_k = torch.arange(0, (b + 1) * sk, sk, dtype=torch.int32, device=q.device)
    res = flash_attn_varlen_func(q.reshape(b * sq, *q.shape[2:]), k.reshape(b * sk, *k.shape[2:]),
                                 v.reshape(b * sk, *v.shape[2:]), cu_q, cu_k, sq, sk, dropout_p, softmax_scale,
                                 causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs)
    if return_attn_probs:
        return res[0].reshape(b, sq, *res[0].shape[1:]), res[1], None
    return res.reshape(b, sq, *res.shape[1:])


def flash_attn_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                            rotary_cos: Any = None, rotary_sin: Any = None, cache_seqlens: Any = None,
                            cache_batch_idx: Any = None, cache_leftpad: Any = None,
                            block_table: torch.Tensor | None = None, softmax_scale: float | None = None,
                            causal: bool = False, window_size: Any = (-1, -1), softcap: float = 0.0,
                            rotary_interleaved: bool = True, alibi_slopes: Any = None, num_splits: int = 0,
                            return_softmax_lse: bool = False) -> Any:
    """Decode / chunked prefill against a KV cache: q (batch, seqlen_q, Hq, D); the cache paged
    (num_pages, page_size, Hk, D) with `block_table` (batch, pages), or dense (batch, seqlen_cache,
    Hk, D) without; `k`, `v` (batch, seqlen_new, Hk, D) are written into the cache at positions
    `cache_seqlens` (an int or (batch,) tensor; None: a full dense cache, no new tokens)
    before the attention, which covers `cache_seqlens + seqlen_new` tokens per sequence. Returns out (batch, seqlen_q, Hq, Dv) [, lse (batch, Hq,
    seqlen_q) with `return_softmax_lse`]."""
    _refuse(rotary_cos=rotary_cos, rotary_sin=rotary_sin, cache_batch_idx=cache_batch_idx,
            cache_leftpad=cache_leftpad, alibi_slopes=alibi_slopes)
    b, sq = q.shape[0], q.shape[1]
    dev = q.device
    ps = k_cache.shape[1]
    if cache_seqlens is None:  # the whole (dense) cache holds keys
        if block_table is not None or k is not None:
            raise ArgumentError("flash_attn_with_kvcache needs cache_seqlens over a paged cache or to place new k, v")
        cache_seqlens = ps
    if block_table is None:  # a dense cache: one page of seqlen_cache slots a sequence
        block_table = torch.arange(b, dtype=torch.int32, device=dev)[:, None]
    if isinstance(cache_seqlens, int):
        lens = torch.full((b,), cache_seqlens, dtype=torch.int32, device=dev)
    else:
        lens = cache_seqlens.to(device=dev, dtype=torch.int32)
    new = 0 if k is None else k.shape[1]
    kv = scree.PagedKV(k_cache, v_cache, block_table, lens + new)
    if new:
        # Slot of new token t of sequence i: page block_table[i, (len_i + t) // ps], slot (len_i + t) % ps.
        pos = lens[:, None].long() + torch.arange(new, device=dev)[None, :]
        pages = torch.gather(block_table.long(), 1, pos // ps)
        slots = (pages * ps + pos % ps).reshape(-1)
        kv.append(k.reshape(b * new, *k.shape[2:]), v.reshape(b * new, *v.shape[2:]), slots)
    qa = scree.from_lengths(q.reshape(b * sq, *q.shape[2:]), [sq] * b)
    res = scree.paged_attention(qa, kv, causal=bool(causal), scale=softmax_scale, window=_window(window_size),
                                softcap=softcap or None, return_lse=return_softmax_lse)
    if return_softmax_lse:
        out, lse = res
        return out.values.reshape(b, sq, *out.values.shape[1:]), lse.reshape(lse.shape[0], b, sq).permute(1, 0, 2)
    return res.values.reshape(b, sq, *res.values.shape[1:])

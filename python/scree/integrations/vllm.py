"""Role: scree as the attention of a vLLM layer (v1 engine, FlashAttention-style metadata). vLLM
does not install on these machines, so this is a function with the call of vLLM's attention
implementations, not a registered backend: `forward(query, key, value, kv_cache, attn_metadata,
output, scale=...)` does what `FlashAttentionImpl.forward` does with the same arguments: writes
this step's keys and values into the layer's paged cache by `slot_mapping` (padding slots -1
skipped), then attends each request's queries (`query_start_loc`; rows past `num_actual_tokens`
are CUDA-graph padding) over its cached tokens (`block_table`, `seq_lens`), bottom-right causal,
into `output`. The metadata is read by attribute (vLLM's FlashAttentionMetadata names); the
conversions are scree.bridges.serving's."""

from __future__ import annotations

from typing import Any

from scree._paged_attention import paged_attention
from scree.bridges.serving import from_vllm, vllm_queries

__all__ = ["forward"]


def forward(query: Any, key: Any, value: Any, kv_cache: Any, attn_metadata: Any, output: Any = None, *,
            scale: float | None = None, sliding_window: int | None = None, logits_soft_cap: float | None = None,
            causal: bool = True) -> Any:
    """query `(num_tokens, Hq, D)`, key and value `(num_tokens, Hk, D)` of this step (vLLM pads
    num_tokens), kv_cache `(2, num_blocks, block_size, Hk, D)`; writes and returns output
    `(num_tokens, Hq, D)` (allocated when None; its padding rows are left as they were).
    sliding_window: keys at most this many positions back (vLLM's `sliding_window - 1` as a left
    window); logits_soft_cap: the softcap."""
    m = attn_metadata
    n = m.num_actual_tokens
    kv = from_vllm(kv_cache, m.block_table, m.seq_lens)
    if key is not None and value is not None:  # (vLLM passes None where the cache was written already)
        kv.append(key[:n], value[:n], m.slot_mapping[:n])
    q = vllm_queries(query, m.query_start_loc, n, max_query_len=m.max_query_len)
    window = None if sliding_window is None else (sliding_window, 0 if causal else None)
    out = paged_attention(q, kv, causal=causal, scale=scale, window=window, softcap=logits_soft_cap)
    if output is None:
        return out.values
    output[:n] = out.values
    return output

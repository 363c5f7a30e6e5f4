"""Role: scree as an SGLang attention backend. SGLang does not install on these machines, so this
is a class with the methods SGLang's model runner calls on its AttentionBackend
(`forward_extend`, `forward_decode`, `forward`), reading the batch by attribute as SGLang's
ForwardBatch and RadixAttention layer name it: `req_to_token_pool.req_to_token`,
`req_pool_indices`, `seq_lens`, `out_cache_loc`, `extend_seq_lens`, `token_to_kv_pool`
(`get_key_buffer(layer_id)`, `get_value_buffer(layer_id)`, `set_kv_buffer(layer, loc, k, v)`),
and the layer's `tp_q_head_num`, `tp_k_head_num`, `head_dim`, `scaling`, `logit_cap`,
`sliding_window_size`, `layer_id`. q, k, v arrive flattened `(tokens, heads * head_dim)` and the
output leaves so. The token pool is a paged cache of one-token pages (scree.bridges.serving)."""

from __future__ import annotations

from typing import Any

from scree._paged_attention import paged_attention
from scree.bridges.serving import from_sglang, sglang_queries

__all__ = ["ScreeAttnBackend"]


class ScreeAttnBackend:
    """SGLang's attention backend interface over scree.paged_attention (module doc)."""

    def forward(self, q: Any, k: Any, v: Any, layer: Any, forward_batch: Any, save_kv_cache: bool = True) -> Any:
        mode = getattr(forward_batch, "forward_mode", None)
        is_decode = getattr(mode, "is_decode", None)
        if callable(is_decode) and is_decode():
            return self.forward_decode(q, k, v, layer, forward_batch, save_kv_cache)
        return self.forward_extend(q, k, v, layer, forward_batch, save_kv_cache)

    def forward_extend(self, q: Any, k: Any, v: Any, layer: Any, forward_batch: Any, save_kv_cache: bool = True) -> Any:
        """Prefill of new tokens over each request's cached prefix (extend_seq_lens per request)."""
        return self._attend(q, k, v, layer, forward_batch, save_kv_cache, forward_batch.extend_seq_lens)

    def forward_decode(self, q: Any, k: Any, v: Any, layer: Any, forward_batch: Any, save_kv_cache: bool = True) -> Any:
        """One new token per request."""
        return self._attend(q, k, v, layer, forward_batch, save_kv_cache, None)

    def _attend(self, q: Any, k: Any, v: Any, layer: Any, fb: Any, save_kv_cache: bool, extend_lens: Any) -> Any:
        hq, hk, d = layer.tp_q_head_num, layer.tp_k_head_num, layer.head_dim
        pool = fb.token_to_kv_pool
        if save_kv_cache and k is not None and v is not None:
            pool.set_kv_buffer(layer, fb.out_cache_loc, k.reshape(-1, hk, d), v.reshape(-1, hk, d))
        kv = from_sglang(pool.get_key_buffer(layer.layer_id), pool.get_value_buffer(layer.layer_id),
                         fb.req_to_token_pool.req_to_token, fb.req_pool_indices, fb.seq_lens)
        qv = q.reshape(-1, hq, d)
        if extend_lens is None:
            extend_lens = fb.seq_lens * 0 + 1
        window = getattr(layer, "sliding_window_size", -1)
        cap = getattr(layer, "logit_cap", 0.0) or None
        out = paged_attention(sglang_queries(qv, extend_lens), kv, causal=True, scale=layer.scaling,
                              window=None if window is None or window < 0 else (window, 0), softcap=cap)
        return out.values.reshape(-1, hq * d)

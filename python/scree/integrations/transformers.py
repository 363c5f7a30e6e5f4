"""Role: `attn_implementation="scree"` for HuggingFace transformers (imported explicitly by users;
imports torch and transformers).

    import scree.integrations.transformers as scree_hf
    scree_hf.register()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="scree")

`register()` adds `scree_attention_forward` to transformers' `AttentionInterface` and
`scree_attention_mask` to its `AttentionMaskInterface` (without a mask function of our own,
transformers hands custom implementations no mask at all). Attention then runs through
`scree.varlen_attention` on the real tokens only, for every layout a HF model receives:

* packed batches (`DataCollatorWithFlattening(return_flash_attn_kwargs=True)`): batch 1 with
  `cu_seq_lens_q/k` and `max_length_q/k` (or the `max_seqlen_q/k` spelling) in the kwargs;
* packed batches described by `position_ids` alone (positions that restart; each row of a batch
  may hold several sequences, as transformers' own packed-sequence mask allows);
* padded batches with a 2D `attention_mask` (left or right padding; the queries of a call are the
  last `q_len` positions of each row, as with transformers' caches);
* plain batches (no mask, no packing), including decoding with a KV cache (bottom-right causal
  alignment handles q_len != kv_len).

Layouts are computed once per forward, not per layer: the layout tensor that HF passes unchanged
to every layer (the mask returned by `scree_attention_mask`, `cu_seq_lens_q`, `position_ids`) is
the key of a small cache of index Arrays (weak references, so nothing outlives the forward's
tensors). Device synchronisation, honestly: on CPU there is none to speak of. On CUDA the first
layer of a forward reads the layout to the host once — the lengths of a padding mask (its real
token count decides the packed size, so a sync cannot be avoided), `position_ids` (to find
sequence starts), or `cu_seq_lens` (validation; and a tensor `max_length_q`, as FlashAttention's
integration does with `.item()`); every further layer reuses it. Plain batches never sync.

Not supported (raise `scree.UnsupportedError` rather than compute something else): attention
dropout > 0, attention sinks (`s_aux`), 4D custom masks, and masks built with extra
`or_mask_function` / `and_mask_function` (e.g. bidirectional image tokens). Sliding windows
(`sliding_window`, HF's "sees the last `sliding_window` tokens including itself") and logit
softcapping (`softcap`) map onto scree's `window` and `softcap`. Padded query rows come back as 0.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import scree
from scree._errors import UnsupportedError

__all__ = ["register", "register_kernel", "scree_attention_forward", "scree_attention_mask", "NAME", "KERNEL_REPO"]

NAME = "scree"
# The local Kernel Hub repository of scree.integrations.flash_api (the name must contain "flash":
# continuous batching takes only flash implementations besides paged|eager and sdpa).
KERNEL_REPO = "scree/flash-attn"


def register(name: str = NAME) -> str:
    """Make `attn_implementation=name` ("scree") available to every transformers model; returns
    the name. Idempotent."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(name, scree_attention_forward)
    AttentionMaskInterface.register(name, scree_attention_mask)
    return name


def register_kernel() -> str:
    """Make `attn_implementation="scree/flash-attn"` available, including to continuous batching
    (`model.generate_batch`), which transformers 5.24-5.25 serves only with `paged|eager`, `sdpa` or
    a flash implementation: the name resolves, through the `kernels` package's local overrides
    (`LOCAL_KERNELS`, added to this process's environment), to the kernel repository shipped in
    scree.integrations.hf_kernel, whose `flash_attn_varlen_func` / `flash_attn_with_kvcache` are
    scree.integrations.flash_api. Needs `pip install kernels`. Returns the name. Idempotent."""
    import importlib.util
    import os
    from pathlib import Path

    if importlib.util.find_spec("kernels") is None:
        raise UnsupportedError("register_kernel() needs the `kernels` package (pip install kernels): transformers "
                               "loads flash implementations for continuous batching through it")
    entry = f"{KERNEL_REPO}={Path(__file__).with_name('hf_kernel')}"
    entries = [e for e in os.environ.get("LOCAL_KERNELS", "").split(":") if e]
    if entry not in entries:
        os.environ["LOCAL_KERNELS"] = ":".join(entries + [entry])
    return KERNEL_REPO


def scree_attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                         mask_function: Any = None, attention_mask: torch.Tensor | None = None,
                         use_vmap: bool = False, **kwargs: Any) -> torch.Tensor | None:
    """The mask transformers hands every layer: the 2D (batch, kv_length) boolean padding mask as
    given (sliced to the keys of this call, as FlashAttention's mask function does), or None. No
    device sync: whether it holds any padding is decided once per forward by the attention."""
    if use_vmap:  # transformers sets this exactly when or_mask_function / and_mask_function are given
        raise UnsupportedError("attn_implementation='scree' cannot apply custom or/and mask functions "
                               "(e.g. bidirectional image tokens); use 'sdpa' or 'eager' for this model")
    if attention_mask is None:
        return None
    return attention_mask[:, -kv_length:]


# ---- layouts, computed once per forward ---------------------------------------------------------

@dataclass
class _Layout:
    """Where the real tokens of q and k sit in the flattened (batch * length) rows, as scree Arrays
    whose values are those row indices (int64, on the device) and whose offsets are the sequences;
    `*_all` is True when every row is a token in order (no gather / scatter needed)."""
    q: scree.Array
    k: scree.Array
    q_all: bool
    k_all: bool


class _WeakCache:
    """A small cache keyed on a tensor object (by identity, held weakly) plus shapes."""

    def __init__(self, size: int = 16):
        self._d: OrderedDict[tuple, tuple[Any, _Layout]] = OrderedDict()
        self._size = size

    def get(self, obj: Any, extra: tuple) -> _Layout | None:
        hit = self._d.get((id(obj), extra))
        if hit is None or hit[0]() is not obj:
            return None
        return hit[1]

    def put(self, obj: Any, extra: tuple, layout: _Layout) -> _Layout:
        self._d[(id(obj), extra)] = (weakref.ref(obj), layout)
        while len(self._d) > self._size:
            self._d.popitem(last=False)
        return layout


_CACHE = _WeakCache()
_PLAIN: OrderedDict[tuple, _Layout] = OrderedDict()


def _index(device: torch.device, offsets: np.ndarray) -> scree.Array:
    """An index Array over rows offsets[0]..offsets[-1], validated on the host and then moved (the
    host offsets travel with it: no device read)."""
    arr = scree.from_offsets(torch.arange(int(offsets[-1])), torch.from_numpy(offsets))
    return arr.to(device=str(device))


def _plain(batch: int, lq: int, lk: int, device: torch.device) -> _Layout:
    key = (batch, lq, lk, str(device))
    lay = _PLAIN.get(key)
    if lay is None:
        lay = _Layout(_index(device, np.arange(batch + 1, dtype=np.int64) * lq),
                      _index(device, np.arange(batch + 1, dtype=np.int64) * lk), True, True)
        _PLAIN[key] = lay
        while len(_PLAIN) > 16:
            _PLAIN.popitem(last=False)
    return lay


def _from_mask(mask: torch.Tensor, lq: int) -> _Layout:
    """Padded batch: keys are the tokens of each row of `mask` (B, Lk), queries those of its last
    lq columns. One host read of the mask on CUDA (via scree.from_padded), once per forward."""
    b, lk = mask.shape
    mask = mask if mask.dtype == torch.bool else mask != 0
    rows = torch.arange(b * lk, device=mask.device).view(b, lk)
    k = scree.from_padded(rows, mask=mask)
    k_all = k.total == b * lk
    if lq == lk:
        return _Layout(k, k, k_all, k_all)
    qrows = torch.arange(b * lq, device=mask.device).view(b, lq)
    q = scree.from_padded(qrows, mask=mask[:, -lq:])
    return _Layout(q, k, q.total == b * lq, k_all)


def _from_cu_seqlens(cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: Any, max_k: Any, lq: int, lk: int) -> _Layout:
    """Packed batch of one row from cu_seq_lens (validated on the host, then on the device again);
    max lengths as ints."""
    def arr(cu: torch.Tensor, mx: Any, length: int) -> tuple[scree.Array, bool]:
        mx = None if mx is None else int(mx)  # a tensor max (transformers' own helper makes one) syncs once
        host_cu = cu.detach().cpu()  # validated on the host (CUDA: this is the one sync)
        a = scree.from_cu_seqlens(torch.arange(int(host_cu[-1])), host_cu, max_seqlen=mx)
        return a.to(device=str(cu.device)), a.total == length
    q, q_all = arr(cu_q, max_q, lq)
    k, k_all = (q, q_all) if cu_k is cu_q and lk == lq else arr(cu_k, max_k, lk)
    return _Layout(q, k, q_all, k_all)


def _from_position_ids(position_ids: torch.Tensor, batch: int, length: int) -> _Layout | None:
    """Sequences start wherever a row's position does not follow the previous one (+1), as in
    transformers' packed-sequence mask; None when every row is a single sequence."""
    pos = position_ids.expand(batch, length).detach().cpu().numpy()  # CUDA: one sync per forward
    starts = np.ones(pos.shape, dtype=bool)
    starts[:, 1:] = np.diff(pos, axis=1) != 1
    if int(starts.sum()) == batch:
        return None
    offsets = np.append(np.flatnonzero(starts.reshape(-1)), batch * length).astype(np.int64)
    a = _index(position_ids.device, offsets)
    return _Layout(a, a, True, True)


def _layout(attention_mask: torch.Tensor | None, batch: int, lq: int, lk: int, device: torch.device,
            kwargs: dict) -> _Layout:
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None:
        if batch != 1:
            raise UnsupportedError(f"cu_seq_lens_q describes one packed row, but the batch has {batch} rows")
        cu_k = cu_q if cu_k is None else cu_k
        lay = _CACHE.get(cu_q, (id(cu_k), lq, lk))
        if lay is None:
            max_q = kwargs.get("max_length_q", kwargs.get("max_seqlen_q"))
            max_k = kwargs.get("max_length_k", kwargs.get("max_seqlen_k"))
            lay = _CACHE.put(cu_q, (id(cu_k), lq, lk), _from_cu_seqlens(cu_q, cu_k, max_q, max_k, lq, lk))
        return lay
    if attention_mask is not None:
        lay = _CACHE.get(attention_mask, (lq, lk))
        if lay is None:
            lay = _CACHE.put(attention_mask, (lq, lk), _from_mask(attention_mask, lq))
        return lay
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and lq == lk and lq > 1:
        lay = _CACHE.get(position_ids, (batch, lq))
        if lay is None:
            lay = _CACHE.put(position_ids, (batch, lq),
                             _from_position_ids(position_ids, batch, lq) or _plain(batch, lq, lk, device))
        return lay
    return _plain(batch, lq, lk, device)


def _gather(x: torch.Tensor, idx: scree.Array, everything: bool) -> scree.Array:
    """Rows of x (B, L, H, D) -> an Array (tokens, H, D) with idx's offsets."""
    flat = x.reshape(-1, *x.shape[2:])
    if everything:
        return idx.with_values(flat[: idx.total])
    return idx.with_values(flat.index_select(0, idx.values))


def scree_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            sliding_window: int | None = None, softcap: float | None = None,
                            is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, Hq, Lq, D), key / value (B, Hk, Lk, D)
    -> (attn_output (B, Lq, Hq, Dv), None). GQA is native (no repeat_kv)."""
    if dropout:
        raise UnsupportedError(f"attn_implementation='scree' has no attention dropout (got p={dropout}); "
                               "set config.attention_dropout=0 or use 'eager'")
    if kwargs.get("s_aux") is not None:
        raise UnsupportedError("attn_implementation='scree' does not support attention sinks (s_aux)")
    if attention_mask is not None and attention_mask.ndim != 2:
        raise UnsupportedError(f"attn_implementation='scree' takes 2D padding masks, got a {attention_mask.ndim}D "
                               "mask (custom masks need 'sdpa' or 'eager')")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    window = None
    if sliding_window is not None:  # HF: a query sees the last `sliding_window` keys, itself included
        w = int(sliding_window) - 1
        window = (w, 0) if causal else (w, w)
    batch, _, lq, _ = query.shape
    if attention_mask is not None and key.shape[2] > attention_mask.shape[1]:
        # A static cache can be longer than the mask: only the first mask-length slots are real.
        key, value = key[:, :, : attention_mask.shape[1]], value[:, :, : attention_mask.shape[1]]
    lk = key.shape[2]
    lay = _layout(attention_mask, batch, lq, lk, query.device, kwargs)

    q = _gather(query.transpose(1, 2), lay.q, lay.q_all)
    k = _gather(key.transpose(1, 2), lay.k, lay.k_all)
    v = _gather(value.transpose(1, 2), lay.k, lay.k_all)
    out = scree.varlen_attention(q, k, v, causal=causal, scale=scaling, window=window, softcap=softcap).values
    hq, dv = out.shape[1], out.shape[2]
    if lay.q_all and out.shape[0] == batch * lq:
        return out.view(batch, lq, hq, dv), None
    full = out.new_zeros(batch * lq, hq, dv)
    full = full.index_copy(0, lay.q.values, out)  # padded query rows stay 0
    return full.view(batch, lq, hq, dv), None

"""The compiled paged decode (scree._C.paged_decode, CUDA) as scree.paged_attention runs it: one
query per sequence over the pages in place, split along the keys and combined by lse. Served for
torch CUDA tensors of bfloat16 / float16, head dims 64 and 128, GQA groups of 1, 2, 4 or 8 query
heads per kv head, no autograd (serving); everything else, and batches with prefill chunks, takes
the gather path of scree.paged_attention."""

from __future__ import annotations

import math
from typing import Any

from scree import _C
from scree._array import Array
from scree._errors import UnsupportedError
from scree._paged import PagedKV
from scree.kernels.attention_spec import _options

__all__ = ["decode_serves", "decode"]

_COMPILED = hasattr(_C, "paged_decode")


def decode_serves(q: Array, kv: PagedKV) -> bool:
    """Whether the decode kernel takes this call: every query sequence one token (q's layout knows
    its longest is 1), torch CUDA arrays of one half type, a compiled head dim and group size."""
    ns = q._ns
    v = q.values
    if not _COMPILED or ns.name != "torch" or ns.is_host(v) or ns.is_tracing() or ns.needs_autograd(v):
        return False
    if q.total != q.num_sequences or q._layout.known_max_length() != 1:
        return False
    dt = ns.dtype_name(v)
    if dt not in ("bfloat16", "float16") or ns.dtype_name(kv.k_pages) != dt or len(ns.shape(v)) != 3:
        return False
    hq, d = ns.shape(v)[1], ns.shape(v)[2]
    return d == kv.head_dim and d in (64, 128) and hq % kv.heads == 0 and hq // kv.heads in (1, 2, 4, 8)


def decode(q: Array, kv: PagedKV, scale: Any, window: Any, softcap: Any, return_lse: bool) -> tuple[Any, Any] | None:
    """(out values (n, Hq, D), lse (Hq, n) or None), or None where the kernel refuses the arrays
    (alignment, strides: scree.UnsupportedError from the plan), for the gather path to serve."""
    ns = q._ns
    left, _, scale_value, cap = _options(False, scale, window, softcap)
    qv = q.values
    d = ns.shape(qv)[2]
    table, lens = ns.astype(kv.page_table, "int32"), ns.astype(kv.kv_lens, "int32")
    kp, vp = kv.k_pages, kv.v_pages
    if kv.layout == "HND":  # (num_pages, Hk, page, D) seen as (num_pages, page, Hk, D): a strided view
        kp, vp = ns.swapaxes(kp, 1, 2), ns.swapaxes(vp, 1, 2)
    bound = kv.max_kv_len if kv.max_kv_len is not None else ns.shape(table)[1] * kv.page_size
    a = ns.kernel_arg
    try:
        splits, nbytes = _C.paged_decode_plan(a(qv), a(kp), a(vp), a(table), a(lens), int(bound))
    except UnsupportedError:
        return None
    out = ns.empty(tuple(ns.shape(qv)), ns.dtype_name(qv), like=qv)
    lse = ns.empty((ns.shape(qv)[1], ns.shape(qv)[0]), "float32", like=qv) if return_lse else None
    ws = ns.empty((nbytes,), "uint8", like=qv) if nbytes else None
    _C.paged_decode(a(qv), a(kp), a(vp), a(table), a(lens), a(out), None if lse is None else a(lse),
                    1.0 / math.sqrt(d) if scale_value is None else scale_value, cap or 0.0,
                    -1 if left is None else left, splits, None if ws is None else a(ws), ns.stream(qv))
    return out, lse

"""The compiled attention over a paged KV cache as scree.paged_attention runs it, reading the pages
in place:
* `decode` (scree._C.paged_decode, CUDA): one query per sequence, split along the keys and combined
  by lse; torch CUDA tensors of bfloat16 / float16, head dims 64 and 128, any number of query heads
  per kv head;
* `forward_cuda` (scree._C.paged_fwd_cuda, Hopper): any batch (chunked prefill, decode, both) of
  torch CUDA half tensors, the Hopper forward loading K/V tiles out of the pages in place: by TMA
  for page sizes that are multiples of 128, by cp.async from the producer warpgroup for any other
  (1, 16, 32, 64, ...);
* `forward_cpu` (scree._C.paged_fwd_cpu): any batch (decode, chunked prefill, both) on host arrays
  (NumPy, torch CPU), the CPU varlen kernel reading key and value rows through the page table.
Neither records a gradient (serving); everything else takes the gather path of
scree.paged_attention."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scree import _C
from scree._array import Array
from scree._errors import UnsupportedError
from scree._paged import PagedKV
from scree.kernels import attention as K
from scree.kernels.attention_spec import _options

__all__ = ["decode_serves", "decode", "cuda_serves", "forward_cuda", "cpu_serves", "forward_cpu"]

_COMPILED = hasattr(_C, "paged_decode")
_COMPILED_FWD = hasattr(_C, "paged_fwd_cuda")


def _nhd_pages(kv: PagedKV) -> tuple[Any, Any]:
    """The pages as (num_pages, page_size, Hk, D): HND pages as a strided view (the kernels take
    any strides)."""
    kp, vp = kv.k_pages, kv.v_pages
    if kv.layout == "HND":
        kp, vp = kv._ns.swapaxes(kp, 1, 2), kv._ns.swapaxes(vp, 1, 2)
    return kp, vp


def _longest_bound(kv: PagedKV) -> int:
    """The longest cached sequence: exact once the tables' check landed, else the tables' capacity
    (no sync either way)."""
    return kv.max_kv_len if kv.max_kv_len is not None else kv._ns.shape(kv.page_table)[1] * kv.page_size


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
    return (d == kv.head_dim and ns.shape(kv.v_pages)[3] == d and d in (64, 128) and hq % kv.heads == 0
            and hq // kv.heads >= 1)


def decode(q: Array, kv: PagedKV, scale: Any, window: Any, softcap: Any, return_lse: bool) -> tuple[Any, Any] | None:
    """(out values (n, Hq, D), lse (Hq, n) or None), or None where the kernel refuses the arrays
    (alignment, strides: scree.UnsupportedError from the plan), for the gather path to serve."""
    ns = q._ns
    left, _, scale_value, cap = _options(False, scale, window, softcap)
    qv = q.values
    d = ns.shape(qv)[2]
    table, lens = ns.astype(kv.page_table, "int32"), ns.astype(kv.kv_lens, "int32")
    kp, vp = _nhd_pages(kv)
    bound = _longest_bound(kv)
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


def cuda_serves(q: Array, kv: PagedKV) -> bool:
    """Whether the Hopper paged forward may take this call (the C++ side refuses, with
    scree.UnsupportedError, a device or head dim it has no kernel for): torch CUDA arrays of one
    half type, no autograd, any page size."""
    ns = q._ns
    v = q.values
    if not _COMPILED_FWD or ns.name != "torch" or ns.is_host(v) or ns.is_tracing() or ns.needs_autograd(v):
        return False
    dt = ns.dtype_name(v)
    if dt not in ("bfloat16", "float16") or ns.dtype_name(kv.k_pages) != dt or len(ns.shape(v)) != 3:
        return False
    hq, d = ns.shape(v)[1], ns.shape(v)[2]
    return d == kv.head_dim and ns.shape(kv.v_pages)[3] == d and hq % kv.heads == 0


def forward_cuda(q: Array, kv: PagedKV, causal: Any, scale: Any, window: Any, softcap: Any,
                 return_lse: bool) -> tuple[Any, Any] | None:
    """(out values, lse or None) from the Hopper forward over the pages, or None where the C++ side
    refuses the call (no Hopper device or kernel: scree.UnsupportedError), for the gather path."""
    ns = q._ns
    left, right, scale_value, cap = _options(causal, scale, window, softcap)
    qv = q.values
    tq, hq, d = ns.shape(qv)
    kp, vp = _nhd_pages(kv)
    bound = _longest_bound(kv)
    pq = K.plan(q)
    args = _C.AttentionArgs(pq.max_seqlen, int(bound), 1.0 / math.sqrt(d) if scale_value is None else scale_value,
                            bool(causal), -1 if left is None else left, -1 if right is None else right, cap or 0.0,
                            False)
    out = ns.empty((tq, hq, d), ns.dtype_name(qv), like=qv)
    lse = ns.empty((hq, tq), "float32", like=qv) if return_lse else None
    ws = ns.empty((K.fwd_workspace_bytes(tq, q.num_sequences),), "uint8", like=qv)
    a = ns.kernel_arg
    try:
        _C.paged_fwd_cuda(a(qv), a(kp), a(vp), a(pq.offsets), a(kv.device_kv_offsets()), a(kv.page_table), a(out),
                          None if lse is None else a(lse), args, a(ws),
                          None if pq.summary is None else a(pq.summary), ns.stream(qv))
    except UnsupportedError:
        return None
    return out, lse


def cpu_serves(q: Array, kv: PagedKV) -> bool:
    """Whether the CPU kernel takes this call: host arrays of one floating dtype, no autograd."""
    ns = q._ns
    v = q.values
    if ns.is_tracing() or not ns.is_host(v) or ns.needs_autograd(v) or not ns.is_host(kv.k_pages):
        return False
    if kv._ns is not ns or not ns.is_floating(v) or ns.dtype_name(kv.k_pages) != ns.dtype_name(v):
        return False
    s = ns.shape(v)
    return len(s) == 3 and s[2] == kv.head_dim and s[1] % kv.heads == 0


def forward_cpu(q: Array, kv: PagedKV, causal: Any, scale: Any, window: Any, softcap: Any,
                return_lse: bool) -> tuple[Any, Any]:
    """(out values, lse or None) from the CPU varlen kernel over the pages (NHD pages are read in
    place; HND pages are transposed into rows first)."""
    ns = q._ns
    left, right, scale_value, cap = _options(causal, scale, window, softcap)
    qv = q.values
    tq, hq, d = ns.shape(qv)
    lens = kv.host_kv_lens()
    cu_k = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=cu_k[1:])
    reach = tq + int(cu_k[-1])  # a side at least this long bounds nothing (as attention_spec)
    left = None if left is None or left >= reach else left
    right = None if right is None or right >= reach else right
    pq = K.plan(q)
    args = _C.AttentionArgs(pq.max_seqlen, int(lens.max(initial=0)), 1.0 / math.sqrt(d) if scale_value is None
                            else scale_value, bool(causal), -1 if left is None else left,
                            -1 if right is None else right, cap or 0.0, False)
    out = ns.empty((tq, hq, ns.shape(kv.v_pages)[3]), ns.dtype_name(qv), like=qv)
    lse = ns.empty((hq, tq), K.lse_dtype(ns.dtype_name(qv)), like=qv) if return_lse else None
    a = ns.kernel_arg
    _C.paged_fwd_cpu(a(qv), a(kv.flat_pages("k")), a(kv.flat_pages("v")), a(pq.offsets), a(ns.from_numpy(cu_k, like=qv)),
                     a(kv.page_table), kv.page_size, a(out), None if lse is None else a(lse), args)
    return out, lse

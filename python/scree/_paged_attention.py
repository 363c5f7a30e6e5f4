"""scree.paged_attention: attention of a batch's queries over a paged KV cache (serving: decode,
chunked prefill, or both in one batch). Query sequence i (q an Array with one sequence per cached
sequence) attends to the first kv_lens[i] tokens of sequence i of the cache, bottom-right aligned:
its Lq queries are the last Lq of those tokens (decode: Lq = 1; a prefill chunk appended to the
cache before the call: its own tokens and everything cached before them)."""

from __future__ import annotations

from typing import Any

from scree._array import Array
from scree._attention import varlen_attention
from scree._errors import BackendError, ShapeError
from scree._layout import poll
from scree._paged import PagedKV
from scree.kernels import paged

__all__ = ["paged_attention", "cached_kv"]


def paged_attention(q: Array, kv: PagedKV, causal: bool = False, scale: float | None = None,
                    window: tuple[int | None, int | None] | None = None, softcap: float | None = None,
                    return_lse: bool = False) -> Array | tuple[Array, Any]:
    """Attention of q `(Tq, Hq, D)` over the paged cache `kv` (module doc), with the options of
    scree.varlen_attention (GQA when Hq is a multiple of the cache's heads, causal bottom-right,
    window, softcap, lse). Returns an Array with q's offsets.

    Torch CUDA half tensors read the pages in place, with no sync (scree.kernels.paged): a decode
    batch (every query sequence one token, its layout knowing so) runs the CUDA paged decode, any
    other batch (chunked prefill, mixed) the Hopper forward over the pages (page sizes 16, 32, 64,
    128 or multiples of 128). Host arrays run the CPU kernel over the pages. Anything else gathers
    each sequence's cached tokens out of the pages (a copy of the keys and values in use, reading
    kv_lens on the host: a sync for device tables) and runs the varlen kernels on them."""
    if not isinstance(q, Array) or not isinstance(kv, PagedKV):
        raise BackendError(f"paged_attention takes a scree.Array q and a scree.PagedKV, got "
                           f"{type(q).__name__} and {type(kv).__name__}")
    if q.num_sequences != kv.num_sequences:
        raise ShapeError(f"q has {q.num_sequences} sequences but the cache has {kv.num_sequences}")
    if not q._ns.is_tracing():
        poll()  # device checks (of offsets, of paged tables) that have landed raise here
    if paged.cpu_serves(q, kv):
        out_values, lse = paged.forward_cpu(q, kv, causal, scale, window, softcap, return_lse)
        out = Array._over(out_values, q._layout)
        return (out, lse) if return_lse else out
    done = None
    if paged.decode_serves(q, kv):
        done = paged.decode(q, kv, scale, window, softcap, return_lse)
    if done is None and paged.cuda_serves(q, kv):
        done = paged.forward_cuda(q, kv, causal, scale, window, softcap, return_lse)
    if done is not None:
        out = Array._over(done[0], q._layout)
        return (out, done[1]) if return_lse else out
    k, v = cached_kv(kv)
    return varlen_attention(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap,
                            return_lse=return_lse)


def cached_kv(kv: PagedKV) -> tuple[Array, Array]:
    """The cached keys and values of every sequence as Arrays `(sum kv_lens, Hk, D)` (a copy out of
    the pages; the two share one layout)."""
    ns = kv._ns
    rows, offsets = kv.token_rows()
    k = Array._trusted(kv.flat_pages("k")[rows], ns.from_numpy(offsets, like=rows), offsets,
                       int(kv.host_kv_lens().max(initial=0)))
    return k, k.with_values(kv.flat_pages("v")[rows])

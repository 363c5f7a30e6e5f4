"""Context-parallel varlen attention over torch.distributed: the queries of a sharded packed batch
(scree.distributed.shard_sequences: chunks r and 2 cp - 1 - r of every sequence on rank r) attend
to the whole batch's keys and values, which every rank all-gathers (gather.gather_full: simple,
and cheap under GQA, where K and V are a fraction of Q). Each of a rank's two chunks of a sequence
is its own query sequence, its keys the sequence's keys up to the chunk's end (causal: the
bottom-right alignment of scree.varlen_attention then puts query i of a chunk starting at token s
at key s + i, its place in the sequence; the left window trims the keys further), or all of them
(not causal). One scree.varlen_attention call serves every chunk; gradients flow back through it,
the key copy and the all-gather, to every rank's own rows. The same answer as single-device
attention on the whole batch (tests/python/test_distributed.py, 2 and 4 gloo processes).

method="ring" runs ring.py instead: K/V shards travel around the group by point-to-point transfers
overlapped with the attention, partial results merged by lse. Not yet here: the multi-GPU runs
and benchmark."""

from __future__ import annotations

from typing import Any

import numpy as np

from scree._array import Array
from scree._attention import varlen_attention
from scree._errors import ArgumentError, UnsupportedError
from scree.distributed.gather import check_group, gather_full
from scree.distributed.ring import ring_attention
from scree.distributed.shard import ShardPlan, offsets_of, ranges

__all__ = ["context_parallel_attention"]


def _key_rows(plan: ShardPlan, causal: bool, left: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the full batch, lengths) of the keys of each of this rank's query chunks, in the
    order chunk a of sequence 0, chunk b of sequence 0, chunk a of sequence 1, ..."""
    a, b = plan.chunk_pair(plan.rank)
    n = plan.lengths.size
    chunk_start = np.stack([plan.bounds[:, a], plan.bounds[:, b]], axis=1).reshape(-1)
    chunk_end = np.stack([plan.bounds[:, a + 1], plan.bounds[:, b + 1]], axis=1).reshape(-1)
    seq_len = np.repeat(plan.lengths, 2)
    if causal:
        first = np.zeros(2 * n, dtype=np.int64) if left is None else np.maximum(chunk_start - left, 0)
        last = chunk_end
    else:
        first, last = np.zeros(2 * n, dtype=np.int64), seq_len
    lens = np.where(chunk_end > chunk_start, last - first, 0)  # an empty chunk needs no keys
    return ranges(np.repeat(plan.starts[:-1], 2) + first, lens), lens


def context_parallel_attention(q: Array, k: Array, v: Array, plan: ShardPlan, group: Any = None,
                               causal: bool = False, scale: float | None = None,
                               window: tuple[int | None, int | None] | None = None,
                               softcap: float | None = None, method: str = "allgather") -> Array:
    """Attention of this rank's queries (q, k, v: its local Arrays from shard_sequences with `plan`,
    torch tensors, the process group `group`) over the whole batch's keys; returns this rank's
    output as an Array with q's offsets. Options as scree.varlen_attention (GQA when q has a
    multiple of k's heads); a window needs causal=True (left side only). method: "allgather"
    (every rank gathers the whole K/V: simple, cheap under GQA) or "ring" (ring.py: K/V shards
    travel around the group, one at a time on a rank; no window)."""
    if method not in ("allgather", "ring"):
        raise ArgumentError(f"method must be 'allgather' or 'ring', got {method!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Array):
            raise ArgumentError(f"{name} must be a scree.Array, got {type(x).__name__}")
        if x._ns.name != "torch":
            raise UnsupportedError(f"context_parallel_attention runs on torch.distributed; {name} is {x.backend}")
        if x.num_sequences != plan.lengths.size or x.total != int(plan.local_lengths().sum()):
            raise ArgumentError(f"{name} has {x.num_sequences} sequences and {x.total} tokens; this rank's share in "
                                f"the plan has {plan.lengths.size} and {int(plan.local_lengths().sum())}")
    if method == "ring":
        if window is not None:
            raise UnsupportedError("the ring takes no window (a chunk pair's window depends on where both chunks "
                                   "sit); use method='allgather'")
        if k.values.shape != v.values.shape:
            raise UnsupportedError("the ring sends K and V as one message: they need the same shape (Dv == D)")
        check_group(plan, group)
        return ring_attention(q, k, v, plan, group, causal=causal, scale=scale, softcap=softcap)
    left = None
    if window is not None:
        left, right = window
        if not causal or (right not in (None, 0)):
            raise UnsupportedError("context_parallel_attention takes a window only with causal=True, as "
                                   "(left, 0) or (left, None)")
    k_full = gather_full(k.values, plan, group)
    v_full = gather_full(v.values, plan, group)
    la, lb = plan.chunk_lengths(plan.rank)
    q_chunks = offsets_of(np.stack([la, lb], axis=1).reshape(-1))
    rows, key_lens = _key_rows(plan, causal, left)
    key_offsets = offsets_of(key_lens)
    ns = q._ns
    idx = ns.from_numpy(rows, like=k_full)
    qc = Array._trusted(q.values, ns.from_numpy(q_chunks, like=q.values), q_chunks,
                        int(np.diff(q_chunks).max(initial=0)))
    kc = Array._trusted(k_full[idx], ns.from_numpy(key_offsets, like=k_full), key_offsets,
                        int(key_lens.max(initial=0)))
    vc = kc.with_values(v_full[idx])
    out = varlen_attention(qc, kc, vc, causal=causal, scale=scale, window=window, softcap=softcap)
    return q.with_values(out.values)

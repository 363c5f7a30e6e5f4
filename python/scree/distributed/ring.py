"""Context-parallel varlen attention by a ring of point-to-point K/V transfers (the alternative to
attention.py's all-gather): each rank keeps only its own K/V shard and one travelling shard, the
shards moving one rank a step around the group (torch.distributed P2P, the next transfer posted
before the current step's attention so the two overlap), the partial results of each step merged
by their log-sum-exp.

The zigzag plan (shard.py) gives rank r chunks r and 2 cp - 1 - r of every sequence. At step s
rank r holds the shard of rank (r - s) mod cp; a pair (query chunk i, key chunk j) of one sequence
is skipped when causal and j > i, fully visible when j < i (or not causal), causal when j == i
(only at step 0: same rank). Each step is at most four scree.varlen_attention calls (per key
chunk: the fully visible pairs, the diagonal ones), every (sequence, query chunk) a query
sequence of its own, so that a query row occurs once in a call.

Backward (an autograd Function, the shards travelling again with their dK / dV accumulators, which
arrive back at their owner after cp transfers): with out = sum_s w_s out_s, w_s = exp(lse_s - lse),
the gradient of step s is the attention backward over its keys with dout w_s, its own lse_s, and
the merged out in place of out_s: the softmax's D = rowsum(dout_s * out) = w_s rowsum(dout * out)
is exactly what the merge's dependence on lse_s adds (scree.varlen_attention_backward).
Windows are refused (a chunk pair's window depends on where both chunks sit): use the all-gather."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from scree._array import Array
from scree._attention import varlen_attention, varlen_attention_backward
from scree.distributed.shard import ShardPlan, offsets_of, ranges

__all__ = ["ring_attention"]


def _chunk_rows(plan: ShardPlan, rank: int, which: int) -> tuple[np.ndarray, np.ndarray]:
    """(first local row, length) of chunk `which` (0: rank's first, 1: its second) of every sequence
    in rank's local layout (sequence by sequence, first chunk then second)."""
    la, lb = plan.chunk_lengths(rank)
    first = plan.local_offsets(rank)[:-1] + (0 if which == 0 else la)
    return first, (la if which == 0 else lb)


def _calls(plan: ShardPlan, step: int, causal: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                                  bool]]:
    """The varlen calls of a step on this rank: (query rows, query offsets, key rows in the
    travelling shard, key offsets, causal), one query sequence per (sequence, query chunk)."""
    r, cp = plan.rank, plan.world_size
    src = (r - step) % cp
    mine, theirs = plan.chunk_pair(r), plan.chunk_pair(src)
    calls = []
    for kw in (0, 1):
        kc = theirs[kw]
        for diagonal in (False, True):
            qws = [qw for qw in (0, 1)
                   if (not causal and not diagonal) or (causal and (kc == mine[qw]) == diagonal and kc <= mine[qw])]
            if not qws:
                continue
            kf, kn = _chunk_rows(plan, src, kw)
            qparts = [_chunk_rows(plan, r, qw) for qw in qws]
            # sequence-major: (seq 0, first q chunk), (seq 0, second), (seq 1, ...)
            qf = np.stack([f for f, _ in qparts], axis=1).reshape(-1)
            qn = np.stack([n for _, n in qparts], axis=1).reshape(-1)
            kf2, kn2 = np.repeat(kf, len(qws)), np.repeat(kn, len(qws))
            kn2 = np.where(qn > 0, kn2, 0)  # a query chunk with no rows needs no keys
            calls.append((ranges(qf, qn), offsets_of(qn), ranges(kf2, kn2), offsets_of(kn2), diagonal))
    return calls


def _array(ns: Any, values: Any, offsets: np.ndarray) -> Array:
    return Array._trusted(values, ns.from_numpy(offsets, like=values), offsets, int(np.diff(offsets).max(initial=0)))


def ring_attention(q: Array, k: Array, v: Array, plan: ShardPlan, group: Any = None, causal: bool = False,
                   scale: float | None = None, softcap: float | None = None) -> Array:
    """This rank's attention output over the whole batch's keys (q, k, v: its local torch Arrays
    from shard_sequences with `plan`), K/V travelling around the group; see the module docstring."""
    fn = _ring_function()
    return q.with_values(fn.apply(q.values, k.values, v.values, plan, group, causal, scale, softcap, q._ns))


@functools.lru_cache(maxsize=1)
def _ring_function() -> Any:
    """The autograd Function, built on first use (importing scree.distributed imports no torch)."""
    import torch
    import torch.distributed as dist

    def start(send: Any, recv: Any, plan: ShardPlan, group: Any) -> list:
        """Post the transfer of `send` to the next rank and of the previous rank's into `recv`."""
        cp, r = plan.world_size, plan.rank
        nxt = dist.get_global_rank(group, (r + 1) % cp) if group is not None else (r + 1) % cp
        prv = dist.get_global_rank(group, (r - 1) % cp) if group is not None else (r - 1) % cp
        ops = [dist.P2POp(dist.isend, send, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)]
        return dist.batch_isend_irecv(ops)

    def padded(x: Any, pad: int) -> Any:
        buf = x.new_zeros((pad,) + tuple(x.shape[1:]))
        buf[: x.shape[0]] = x
        return buf

    class Ring(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any, plan: ShardPlan, group: Any, causal: bool,
                    scale: float | None, softcap: float | None, ns: Any) -> Any:
            cp, pad = plan.world_size, max(plan.max_local_tokens(), 1)
            kv = padded(torch.stack([k, v], dim=1), pad)  # (pad, 2, Hk, D): one message a step
            out = torch.zeros_like(q)
            lse = torch.full((q.shape[1], q.shape[0]), -float("inf"), dtype=torch.float64 if q.dtype == torch.float64
                             else torch.float32, device=q.device)
            step_lse = []
            for s in range(cp):
                nxt, pending = None, []
                if s + 1 < cp:
                    nxt = torch.empty_like(kv)
                    pending = start(kv, nxt, plan, group)
                for q_rows, q_off, k_rows, k_off, diagonal in _calls(plan, s, causal):
                    qi, ki = (torch.from_numpy(x).to(q.device) for x in (q_rows, k_rows))
                    o_p, l_p = varlen_attention(_array(ns, q[qi], q_off), _array(ns, kv[ki, 0], k_off),
                                                _array(ns, kv[ki, 1], k_off), causal=diagonal, scale=scale,
                                                softcap=softcap, return_lse=True)
                    l_p = l_p.to(lse.dtype)
                    old = lse[:, qi]
                    new = torch.logaddexp(old, l_p)
                    seen = torch.isfinite(new)
                    w_old = torch.where(seen, torch.exp(old - new), torch.zeros_like(new))
                    w_p = torch.where(seen, torch.exp(l_p - new), torch.zeros_like(new))
                    out[qi] = out[qi] * w_old.T[..., None].to(out.dtype) + o_p.values * w_p.T[..., None].to(out.dtype)
                    lse[:, qi] = new
                    step_lse.append(l_p)
                for req in pending:
                    req.wait()
                if nxt is not None:
                    kv = nxt
            ctx.save_for_backward(q, k, v, out, lse, *step_lse)
            ctx.plan, ctx.group, ctx.causal, ctx.scale, ctx.softcap, ctx.ns = plan, group, causal, scale, softcap, ns
            return out

        @staticmethod
        def backward(ctx: Any, dout: Any) -> tuple:
            q, k, v, out, lse, *step_lse = ctx.saved_tensors
            plan, group, ns = ctx.plan, ctx.group, ctx.ns
            cp, pad = plan.world_size, max(plan.max_local_tokens(), 1)
            # The travelling shard: K, V and the dK, dV accumulated for its owner so far.
            trav = padded(torch.stack([k, v, torch.zeros_like(k), torch.zeros_like(v)], dim=1), pad)
            dq = torch.zeros_like(q)
            dout = dout.contiguous()
            at = 0
            for s in range(cp):
                for q_rows, q_off, k_rows, k_off, diagonal in _calls(plan, s, ctx.causal):
                    qi, ki = (torch.from_numpy(x).to(q.device) for x in (q_rows, k_rows))
                    l_p = step_lse[at]
                    at += 1
                    merged = lse[:, qi]
                    w = torch.where(torch.isfinite(merged), torch.exp(l_p - merged), torch.zeros_like(l_p))
                    qa = _array(ns, q[qi], q_off)
                    ka, va = _array(ns, trav[ki, 0], k_off), _array(ns, trav[ki, 1], k_off)
                    gq, gk, gv = varlen_attention_backward(dout[qi] * w.T[..., None].to(dout.dtype), qa, ka, va,
                                                           qa.with_values(out[qi]), l_p, causal=diagonal,
                                                           scale=ctx.scale, softcap=ctx.softcap)
                    dq.index_add_(0, qi, gq.values)
                    trav[:, 2].index_add_(0, ki, gk.values)
                    trav[:, 3].index_add_(0, ki, gv.values)
                # every rank passes its shard on, cp times: the last transfer brings dK, dV home
                nxt = torch.empty_like(trav)
                for req in start(trav, nxt, plan, group):
                    req.wait()
                trav = nxt
            n = k.shape[0]
            return dq, trav[:n, 2].contiguous(), trav[:n, 3].contiguous(), None, None, None, None, None, None

    return Ring

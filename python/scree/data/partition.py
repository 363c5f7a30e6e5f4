"""Balanced partition of sequences over data-parallel ranks: every rank of a step gets about the
same compute, counting both the per-token work (the linear layers) and the attention, whose cost
grows with the square of a sequence's length. One long sequence costs much more than as many
tokens of short ones, so balancing tokens alone leaves the rank with the long sequence behind.

Cost of a sequence of length L (forward FLOPs of one layer of a dense transformer of hidden size
H, MLP 4H): 24 H^2 L for the linear layers and 4 H L^2 for attention (2 H L^2 causal: half the
key-query pairs). Without H, attention alone: L^2 (L (L + 1) / 2 causal). The partition is the
longest-processing-time greedy (each sequence, costliest first, to the rank with the least cost so
far that still has room under the token and sequence caps): within 4/3 of the best possible
makespan, and in practice within a few percent for a step's worth of sequences."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from scree._errors import ArgumentError

__all__ = ["sequence_cost", "partition_balanced"]


def sequence_cost(lengths: Sequence[int] | np.ndarray, hidden_size: int | None = None,
                  causal: bool = True) -> np.ndarray:
    """Relative compute of each sequence (float64; see the module doc)."""
    L = np.asarray(lengths, dtype=np.float64)
    attention = L * (L + 1) / 2 if causal else L * L
    if hidden_size is None:
        return attention
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, (int, np.integer)) or hidden_size < 1:
        raise ArgumentError(f"hidden_size must be an integer >= 1, got {hidden_size!r}")
    return 6.0 * hidden_size * L + attention  # (24 H^2 L + 4 H attention) / (4 H)


def partition_balanced(lengths: Sequence[int] | np.ndarray, parts: int, hidden_size: int | None = None,
                       causal: bool = True, max_tokens: int | None = None,
                       max_sequences: int | None = None) -> list[np.ndarray]:
    """Indices into `lengths` for each of `parts` ranks, costs balanced (module doc), each part
    within max_tokens tokens and max_sequences sequences where given (a sequence that fits no
    part's room raises ArgumentError naming it). Every index lands in exactly one part; each part
    lists its indices in ascending order."""
    lens = np.asarray(lengths)
    if lens.ndim != 1 or (lens.size and lens.dtype.kind not in "iu"):
        raise ArgumentError(f"lengths must be a 1-D sequence of integers, got {lens.dtype} of shape {lens.shape}")
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
        raise ArgumentError(f"parts must be an integer >= 1, got {parts!r}")
    lens = lens.astype(np.int64)
    if lens.size and lens.min() < 0:
        raise ArgumentError(f"lengths must be >= 0; lengths[{int(np.argmin(lens))}] is {int(lens.min())}")
    cost = sequence_cost(lens, hidden_size, causal)
    load = np.zeros(parts)
    tokens = np.zeros(parts, dtype=np.int64)
    count = np.zeros(parts, dtype=np.int64)
    owner = np.empty(lens.size, dtype=np.int64)
    cap_t = np.iinfo(np.int64).max if max_tokens is None else int(max_tokens)
    cap_s = np.iinfo(np.int64).max if max_sequences is None else int(max_sequences)
    for i in np.argsort(-cost, kind="stable"):
        room = (tokens + lens[i] <= cap_t) & (count < cap_s)
        if not room.any():
            raise ArgumentError(f"sequence {int(i)} ({int(lens[i])} tokens) fits no part: max_tokens={max_tokens}, "
                                f"max_sequences={max_sequences} over {parts} parts")
        p = int(np.argmin(np.where(room, load, np.inf)))
        owner[i] = p
        load[p] += cost[i]
        tokens[p] += lens[i]
        count[p] += 1
    return [np.flatnonzero(owner == p) for p in range(parts)]

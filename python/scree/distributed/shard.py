"""Sharding a packed batch across a context-parallel group: each sequence cut into 2 * cp chunks,
rank r keeping chunks r and 2 * cp - 1 - r (the zigzag split of ring-flash-attn and
TransformerEngine: with causal attention the early chunk has little to attend to and the late one
much, so every rank gets the same work). Chunk k of a sequence of length L is tokens
[k * L // (2 cp), (k + 1) * L // (2 cp)), so lengths that 2 cp does not divide (and sequences
shorter than 2 cp) shard too, into chunks that differ by at most one token.

`shard_sequences` is a local selection (every rank holds the whole batch, as a data loader gives
it); its ShardPlan, computed from the host lengths alone, is the same on every rank and says where
every rank's tokens belong, which `unshard` (an all-gather) and scree.distributed's attention use."""

from __future__ import annotations

from typing import Any

import numpy as np

from scree import _backends
from scree._array import Array
from scree._errors import ArgumentError

__all__ = ["ShardPlan", "shard_sequences"]


class ShardPlan:
    """Where the tokens of a packed batch go on a context-parallel group of `world_size` ranks.

    lengths: the sequences' full lengths (host int64). bounds: (n, 2 cp + 1) chunk boundaries of
    each sequence (tokens of the sequence). For rank r: `local_lengths(r)` (its tokens of each
    sequence: chunk r then chunk 2 cp - 1 - r), `rows(r)` (their rows in the full packed batch, in
    local order) and `positions(r)` (their positions in their sequence: rotary embeddings of a
    sharded batch need these, not the local ones)."""

    def __init__(self, lengths: np.ndarray, world_size: int, rank: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.world_size, self.rank = int(world_size), int(rank)
        chunks = 2 * self.world_size
        self.bounds = (self.lengths[:, None] * np.arange(chunks + 1)[None, :]) // chunks
        self.starts = offsets_of(self.lengths)

    def chunk_pair(self, rank: int) -> tuple[int, int]:
        return rank, 2 * self.world_size - 1 - rank

    def chunk_lengths(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """The lengths of rank's first and second chunk of every sequence."""
        a, b = self.chunk_pair(rank)
        return self.bounds[:, a + 1] - self.bounds[:, a], self.bounds[:, b + 1] - self.bounds[:, b]

    def local_lengths(self, rank: int | None = None) -> np.ndarray:
        la, lb = self.chunk_lengths(self.rank if rank is None else rank)
        return la + lb

    def local_offsets(self, rank: int | None = None) -> np.ndarray:
        """Offsets (n + 1, host int64) of rank's local Array."""
        return offsets_of(self.local_lengths(rank))

    def positions(self, rank: int | None = None) -> np.ndarray:
        """Position in its sequence of each of rank's tokens, in local order (int64)."""
        r = self.rank if rank is None else rank
        a, b = self.chunk_pair(r)
        firsts = np.stack([self.bounds[:, a], self.bounds[:, b]], axis=1).reshape(-1)
        counts = np.stack(self.chunk_lengths(r), axis=1).reshape(-1)
        return ranges(firsts, counts)

    def rows(self, rank: int | None = None) -> np.ndarray:
        """Row in the full packed batch of each of rank's tokens, in local order (int64)."""
        r = self.rank if rank is None else rank
        seq = np.repeat(np.arange(self.lengths.size), self.local_lengths(r))
        return self.starts[:-1][seq] + self.positions(r)

    def max_local_tokens(self) -> int:
        """The largest rank's token count (all-gathers pad every rank's share to it)."""
        return int(max(self.local_lengths(r).sum() for r in range(self.world_size)))


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """Host int64 offsets (n + 1) of these lengths."""
    out = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def ranges(firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(f, f + c) for each (f, c)."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return np.repeat(firsts - starts, counts) + np.arange(total, dtype=np.int64)


def shard_sequences(a: Array, world_size: int, rank: int) -> tuple[Array, ShardPlan]:
    """Rank `rank`'s share of the packed batch `a` on a context-parallel group of `world_size`:
    an Array with one sequence per sequence of `a` (its chunks r and 2 world_size - 1 - r, in that
    order), and the ShardPlan that undoes it. A selection on a's own device and framework (no
    communication); reads a's offsets on the host (a sync for device offsets)."""
    if not isinstance(a, Array):
        raise ArgumentError(f"shard_sequences takes a scree.Array, got {type(a).__name__}")
    for name, v in (("world_size", world_size), ("rank", rank)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ArgumentError(f"{name} must be an integer, got {v!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ArgumentError(f"rank must be in [0, world_size) with world_size >= 1, got rank {rank} of {world_size}")
    plan = ShardPlan(np.diff(a.host_offsets), world_size, rank)
    return _local(a.values, plan), plan


def _local(values: Any, plan: ShardPlan) -> Array:
    """Rows plan.rows() of the full packed `values` as the rank's local Array."""
    ns = _backends.of(values)
    local = values[ns.from_numpy(plan.rows(), like=values)]
    host = plan.local_offsets()
    return Array._trusted(local, ns.from_numpy(host, like=values), host, int(np.diff(host).max(initial=0)))

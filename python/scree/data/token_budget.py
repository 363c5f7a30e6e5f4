"""TokenBudgetSampler: batches of sequence indices under a token budget, for
torch.utils.data.DataLoader(batch_sampler=...) or any loop. Length-bucketed: a seeded shuffle, then
buckets of nearby positions sorted by length (so a batch holds similar lengths and few batches
are needed), then a greedy fill of each batch up to max_tokens (and max_sequences), then the
batches shuffled. With world_size > 1, every step deals one batch to each rank, the batches of a
step chosen to cost about the same (by tokens, or by attention cost, the sum of squared lengths),
or, with balance='compute', the sequences of a step's batches re-dealt over the ranks by
scree.data.partition_balanced (linear and attention work together, causal-aware), so no rank
waits on another. Plain Python and NumPy: no framework is imported."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from scree._errors import ArgumentError
from scree.data.partition import partition_balanced

__all__ = ["TokenBudgetSampler"]


def _positive(value: Any, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ArgumentError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class TokenBudgetSampler:
    """Batches (lists of indices into `lengths`) of at most `max_tokens` tokens and at most
    `max_sequences` sequences.

    lengths: each sequence's token count (a sequence longer than max_tokens raises ArgumentError
    naming it). shuffle / seed: a seeded permutation per epoch (`set_epoch`, as
    DistributedSampler). bucket_size: how many consecutive sequences of the permutation are sorted
    by length together (default: enough for ~64 batches); sort_within_bucket=False keeps the
    shuffled order (more padding-free variety, more batches). world_size / rank: this rank's share
    of every step, steps balanced by `balance`: 'tokens' or 'attention' (whole batches of similar
    cost dealt together), or 'compute' (a step's sequences re-partitioned over the ranks by
    partition_balanced with `hidden_size` and `causal`, each rank within the budgets; a step whose
    sequences the greedy cannot fit keeps its batches as they were); a last step that cannot give
    every rank a batch is dropped, so all ranks run the same number of steps."""

    def __init__(self, lengths: Sequence[int] | np.ndarray, max_tokens: int, max_sequences: int | None = None,
                 shuffle: bool = True, seed: int = 0, sort_within_bucket: bool = True,
                 bucket_size: int | None = None, world_size: int = 1, rank: int = 0, balance: str = "tokens",
                 hidden_size: int | None = None, causal: bool = True):
        lens = np.asarray(lengths)
        if lens.ndim != 1 or (lens.size and lens.dtype.kind not in "iu"):
            raise ArgumentError(f"lengths must be a 1-D sequence of integers, got {lens.dtype} of shape {lens.shape}")
        self.lengths = lens.astype(np.int64)
        if self.lengths.size and self.lengths.min() < 0:
            raise ArgumentError(f"lengths must be >= 0; lengths[{int(np.argmin(self.lengths))}] is "
                                f"{int(self.lengths.min())}")
        self.max_tokens = _positive(max_tokens, "max_tokens")
        self.max_sequences = _positive(max_sequences, "max_sequences", allow_none=True)
        too_long = np.flatnonzero(self.lengths > self.max_tokens)
        if too_long.size:
            i = int(too_long[0])
            raise ArgumentError(f"sequence {i} has {int(self.lengths[i])} tokens, more than max_tokens="
                                f"{self.max_tokens} ({too_long.size} such sequences); truncate them first")
        self.world_size = _positive(world_size, "world_size")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.world_size:
            raise ArgumentError(f"rank must be in [0, {self.world_size}), got {rank!r}")
        if balance not in ("tokens", "attention", "compute"):
            raise ArgumentError(f"balance must be 'tokens', 'attention' or 'compute', got {balance!r}")
        self.rank, self.balance = int(rank), balance
        self.hidden_size = _positive(hidden_size, "hidden_size", allow_none=True)
        self.causal = bool(causal)
        self.shuffle, self.seed, self.sort_within_bucket = bool(shuffle), int(seed), bool(sort_within_bucket)
        mean = max(float(self.lengths.mean()) if self.lengths.size else 1.0, 1.0)
        per_batch = max(1, int(self.max_tokens // mean))
        if self.max_sequences is not None:
            per_batch = min(per_batch, self.max_sequences)
        self.bucket_size = _positive(bucket_size, "bucket_size") if bucket_size is not None else 64 * per_batch
        self.epoch = 0
        self._plan: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """A new permutation (seed + epoch), the same on every rank."""
        self.epoch = int(epoch)

    def batches(self) -> list[np.ndarray]:
        """Every batch of this epoch, for all ranks, in step order (rank r of step s is batch
        s * world_size + r)."""
        if self._plan is not None and self._plan[0] == self.epoch:
            return self._plan[1]
        rng = np.random.default_rng((self.seed, self.epoch))
        n = self.lengths.size
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.sort_within_bucket:
            buckets = np.arange(n) // self.bucket_size
            # stable: longest first within each bucket, buckets kept in their shuffled order
            order = order[np.lexsort((-self.lengths[order], buckets))]
        batches = self._fill(order)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world_size > 1:
            batches = self._balanced_steps(batches, rng)
            if self.balance == "compute":
                batches = self._partitioned_steps(batches)
        self._plan = (self.epoch, batches)
        return batches

    def _fill(self, order: np.ndarray) -> list[np.ndarray]:
        """Greedy: consecutive sequences of `order` while the batch stays within the budgets."""
        lens = self.lengths[order].tolist()
        cap_tokens, cap_seqs = self.max_tokens, self.max_sequences or len(lens) + 1
        cuts, tokens, count = [], 0, 0
        for i, length in enumerate(lens):
            if count and (tokens + length > cap_tokens or count == cap_seqs):
                cuts.append(i)
                tokens, count = 0, 0
            tokens += length
            count += 1
        return np.split(order, cuts) if lens else []

    def _balanced_steps(self, batches: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Steps of world_size batches of about equal cost: batches sorted by cost and dealt in
        consecutive groups, the steps then shuffled; a last partial step is dropped."""
        lens = self.lengths
        cost = np.array([(lens[b] ** 2).sum() if self.balance != "tokens" else lens[b].sum() for b in batches])
        ranked = [batches[i] for i in np.argsort(-cost, kind="stable")]
        steps = len(ranked) // self.world_size
        groups = [ranked[s * self.world_size:(s + 1) * self.world_size] for s in range(steps)]
        if self.shuffle:
            groups = [groups[i] for i in rng.permutation(steps)]
        return [b for g in groups for b in g]

    def _partitioned_steps(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Each step's sequences re-dealt over the ranks by partition_balanced, within the budgets."""
        w, out = self.world_size, []
        for s in range(len(batches) // w):
            step = batches[s * w:(s + 1) * w]
            pool = np.concatenate(step)
            try:
                parts = partition_balanced(self.lengths[pool], w, self.hidden_size, self.causal, self.max_tokens,
                                           self.max_sequences)
            except ArgumentError:  # the greedy found no room for some sequence: keep the step as dealt
                out.extend(step)
                continue
            if any(p.size == 0 for p in parts):  # every rank needs a batch
                out.extend(step)
                continue
            out.extend(pool[p] for p in parts)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        for b in batches[self.rank::self.world_size]:
            yield b.tolist()

    def __len__(self) -> int:
        return len(self.batches()[self.rank::self.world_size])

"""scree.data (issue 16): TokenBudgetSampler (budgets kept, every index once, seeded and per-epoch
shuffles, length bucketing, ranks balanced and in step) and PackCollator (Arrays from arrays,
lists and dicts; HF's packed-batch dict), and the two in a torch DataLoader."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from scree.data import PackCollator, TokenBudgetSampler, partition_balanced, sequence_cost


@pytest.fixture
def lengths(rng):
    return np.minimum(rng.lognormal(4, 1, 3000).astype(np.int64) + 1, 1000)  # skewed, 1..1000


def _all(sampler) -> list[list[int]]:
    return list(sampler)


def test_budgets_and_every_index_once(lengths):
    s = TokenBudgetSampler(lengths, max_tokens=2048, max_sequences=32, seed=3)
    batches = _all(s)
    assert len(batches) == len(s)
    assert all(lengths[b].sum() <= 2048 and 1 <= len(b) <= 32 for b in batches)
    flat = np.concatenate(batches)
    assert np.array_equal(np.sort(flat), np.arange(len(lengths)))
    # bucketing fills batches: on average within a few percent of the budget where the count cap allows
    fill = np.mean([lengths[b].sum() / 2048 for b in batches if len(b) < 32])
    assert fill > 0.9


def test_seeded_and_per_epoch(lengths):
    a, b = TokenBudgetSampler(lengths, 4096, seed=1), TokenBudgetSampler(lengths, 4096, seed=1)
    assert _all(a) == _all(b)
    first = _all(a)
    a.set_epoch(1)
    assert _all(a) != first
    assert _all(TokenBudgetSampler(lengths, 4096, seed=2)) != first
    fixed = _all(TokenBudgetSampler(lengths, 4096, shuffle=False, sort_within_bucket=False))
    assert np.array_equal(np.concatenate(fixed), np.arange(len(lengths)))  # in order, greedy


def test_ranks_in_step_and_balanced(lengths):
    ranks = [TokenBudgetSampler(lengths, 4096, seed=5, world_size=3, rank=r) for r in range(3)]
    per_rank = [_all(s) for s in ranks]
    assert len({len(p) for p in per_rank}) == 1  # every rank runs the same number of steps
    seen = np.concatenate([np.concatenate(p) for p in per_rank])
    assert len(np.unique(seen)) == len(seen)  # no index on two ranks (a last partial step is dropped)
    costs = np.array([[lengths[b].sum() for b in p] for p in per_rank])  # (rank, step)
    spread = (costs.max(axis=0) - costs.min(axis=0)) / costs.max(axis=0)
    assert np.median(spread) < 0.05  # the batches of a step cost about the same
    att = [TokenBudgetSampler(lengths, 4096, seed=5, world_size=2, rank=r, balance="attention") for r in range(2)]
    a0, a1 = (_all(s) for s in att)
    sq = np.array([[(lengths[b] ** 2).sum() for b in p] for p in (a0, a1)])
    assert np.median(np.abs(sq[0] - sq[1]) / sq.max(axis=0)) < 0.1


def _brute_force_makespan(cost: np.ndarray, parts: int) -> float:
    best = np.inf
    for assign in np.ndindex(*([parts] * cost.size)):
        best = min(best, max(cost[np.array(assign) == p].sum() for p in range(parts)))
    return best


def test_partition_balanced_is_near_optimal_and_complete(rng):
    for _ in range(20):  # small pools: against the exhaustive optimum (LPT is within 4/3 of it)
        lens = rng.integers(0, 300, size=int(rng.integers(1, 8)))
        cost = sequence_cost(lens, hidden_size=64, causal=True)
        parts = partition_balanced(lens, 2, hidden_size=64)
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(lens.size))
        makespan = max(cost[p].sum() for p in parts)
        assert makespan <= 4 / 3 * _brute_force_makespan(cost, 2) + 1e-9
    # a step's worth of skewed lengths: within a few percent of the mean (or the costliest sequence,
    # which no partition splits), better than a naive split
    lens = np.minimum(rng.lognormal(5, 1.2, 256).astype(np.int64) + 1, 8192)
    cost = sequence_cost(lens, causal=True)
    parts = partition_balanced(lens, 8)
    loads = np.array([cost[p].sum() for p in parts])
    assert loads.max() <= max(cost.max(), 1.05 * loads.mean())
    by_tokens = np.array_split(np.argsort(lens), 8)  # equal counts of sorted lengths: a naive split
    assert loads.max() < max(cost[p].sum() for p in by_tokens)


def test_partition_costs_and_caps():
    # attention only: L^2 (causal L (L + 1) / 2); with a hidden size the linear term 6 H L joins it
    np.testing.assert_array_equal(sequence_cost([3, 4], causal=False), [9.0, 16.0])
    np.testing.assert_array_equal(sequence_cost([3, 4]), [6.0, 10.0])
    np.testing.assert_array_equal(sequence_cost([3], hidden_size=2), [6.0 * 2 * 3 + 6.0])
    parts = partition_balanced([100, 90, 80, 5, 5], 2, max_tokens=200, max_sequences=3)
    assert all(np.array([100, 90, 80, 5, 5])[p].sum() <= 200 and len(p) <= 3 for p in parts)
    with pytest.raises(scree.ArgumentError, match="sequence 0 .* fits no part"):
        partition_balanced([200, 1], 2, max_tokens=150)
    with pytest.raises(scree.ArgumentError, match="parts"):
        partition_balanced([1], 0)
    with pytest.raises(scree.ArgumentError, match="hidden_size"):
        sequence_cost([1], hidden_size=0)


def test_sampler_compute_balance_evens_the_ranks(lengths):
    kw = dict(max_tokens=8192, seed=4, world_size=4, hidden_size=512)
    ranks = [TokenBudgetSampler(lengths, rank=r, balance="compute", **kw) for r in range(4)]
    per_rank = [_all(s) for s in ranks]
    seen = np.concatenate([np.concatenate(p) for p in per_rank])
    assert len(np.unique(seen)) == len(seen)
    assert all(lengths[b].sum() <= 8192 for p in per_rank for b in p)
    cost = sequence_cost(lengths, hidden_size=512)

    def spread(batches_per_rank):
        c = np.array([[cost[b].sum() for b in p] for p in batches_per_rank])  # (rank, step)
        return np.median(c.max(axis=0) / c.mean(axis=0))

    tokens = [_all(TokenBudgetSampler(lengths, rank=r, balance="tokens", **kw)) for r in range(4)]
    assert spread(per_rank) < spread(tokens)
    assert spread(per_rank) < 1.05


def test_argument_errors(lengths):
    with pytest.raises(scree.ArgumentError, match=r"sequence \d+ has 1000 tokens"):
        TokenBudgetSampler(lengths, max_tokens=999)
    with pytest.raises(scree.ArgumentError, match="max_tokens"):
        TokenBudgetSampler(lengths, max_tokens=0)
    with pytest.raises(scree.ArgumentError, match="rank"):
        TokenBudgetSampler(lengths, 4096, world_size=2, rank=2)
    with pytest.raises(scree.ArgumentError, match="balance"):
        TokenBudgetSampler(lengths, 4096, balance="flops")
    with pytest.raises(scree.ArgumentError, match="1-D sequence of integers"):
        TokenBudgetSampler(np.ones(4) * 1.5, 4096)
    with pytest.raises(scree.ArgumentError, match=">= 0"):
        TokenBudgetSampler([3, -1], 4096)
    assert _all(TokenBudgetSampler([], 16)) == []


def test_pack_collator(rng):
    seqs = [rng.standard_normal((n, 2)).astype(np.float32) for n in (3, 0, 5)]
    arr = PackCollator()(seqs)
    assert isinstance(arr, scree.Array) and np.diff(arr.host_offsets).tolist() == [3, 0, 5]
    rows = [{"input_ids": list(range(n)), "mask": [1] * n, "label": 7} for n in (2, 4)]
    out = PackCollator()(rows)
    assert set(out) == {"input_ids", "mask"} and out["input_ids"].values.tolist() == [0, 1, 0, 1, 2, 3]
    with pytest.raises(scree.ShapeError, match="'mask'"):
        PackCollator()([{"input_ids": [1, 2], "mask": [1]}])
    with pytest.raises(scree.ArgumentError, match="no field 'mask'"):
        PackCollator(keys=["input_ids", "mask"])([{"input_ids": [1]}, {"input_ids": [2], "mask": [1]}])


def test_pack_collator_hf():
    torch = pytest.importorskip("torch")
    out = PackCollator(hf=True)([{"input_ids": [5, 6, 7]}, {"input_ids": []}, {"input_ids": [8, 9]}])
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert out["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert out["cu_seq_lens_q"].dtype == torch.int32 and out["cu_seq_lens_q"].tolist() == [0, 3, 3, 5]
    assert out["max_length_q"] == out["max_length_k"] == 3


def test_in_a_torch_dataloader(lengths, rng):
    torch = pytest.importorskip("torch")
    data = [rng.integers(0, 100, n) for n in lengths[:300]]
    sampler = TokenBudgetSampler(lengths[:300], max_tokens=1024, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=PackCollator())
    seen = 0
    for arr, idx in zip(loader, sampler):
        assert isinstance(arr, scree.Array) and arr.total <= 1024
        assert [np.asarray(s).tolist() for s in arr] == [data[i].tolist() for i in idx]
        seen += len(arr)
    assert seen == 300

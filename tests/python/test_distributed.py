"""scree.distributed: the zigzag ShardPlan (every token on exactly one rank, causal work balanced),
shard_sequences on every framework, and context-parallel attention forward and backward on 2 and
4 spawned gloo processes against single-process attention on the whole batch (cp_worker.py, every
case in one run a world size, under a time limit so that a hung collective fails the tests instead
of CI)."""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scree
from scree.distributed import ShardPlan, shard_sequences
from cases import native

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_token_lands_on_exactly_one_rank(world):
    lengths = np.array([0, 1, 2, 7, 8, 9, 64, 1000, 5])
    plans = [ShardPlan(lengths, world, r) for r in range(world)]
    rows = np.concatenate([p.rows() for p in plans])
    assert np.array_equal(np.sort(rows), np.arange(lengths.sum()))
    for p in plans:
        la, lb = p.chunk_lengths(p.rank)
        assert np.array_equal(la + lb, p.local_lengths())
        assert np.all(np.abs(la - lb) <= 1)  # chunks differ by at most one token
    # causal work (a query sees the keys up to it) is the same on every rank where 2 world divides the lengths
    work = [int(sum(p.positions().astype(np.int64) + 1)) for p in (ShardPlan(np.array([48, 96]), world, r)
                                                                      for r in range(world))]
    assert max(work) == min(work)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_shard_sequences_selects_the_plan_rows(backend):
    pytest.importorskip(backend)
    rng = np.random.default_rng(0)
    lengths = [5, 0, 12, 3]
    values = rng.standard_normal((sum(lengths), 2)).astype(np.float32)
    a = scree.from_lengths(native(backend, values), lengths)
    local, plan = shard_sequences(a, 2, 1)
    assert local.backend == backend and local.num_sequences == 4
    np.testing.assert_array_equal(np.asarray(local.values), values[plan.rows()])
    np.testing.assert_array_equal(local.host_offsets, plan.local_offsets())


def test_bad_arguments_raise_typed_errors():
    a = scree.from_lengths(np.zeros((3, 1)), [3])
    with pytest.raises(scree.ArgumentError, match="rank must be in"):
        shard_sequences(a, 2, 2)
    with pytest.raises(scree.ArgumentError, match="world_size must be an integer"):
        shard_sequences(a, 2.0, 0)
    with pytest.raises(scree.ArgumentError, match="scree.Array"):
        shard_sequences(np.zeros(3), 2, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CP_CASES = ["causal_gqa", "full_mha", "causal_window_softcap", "ring_causal_gqa", "ring_full_softcap"]
@functools.cache
def cp_run(world: int) -> subprocess.CompletedProcess:
    """One cp_worker.py run of every case on `world` processes, made by the first test that needs
    it (one spawn a world size instead of one a case: ~15 s of a 2-core machine each)."""
    return subprocess.run([sys.executable, str(HERE / "cp_worker.py"), str(world), str(free_port()),
                           ",".join(CP_CASES)], capture_output=True, text=True, timeout=600, cwd=HERE)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("case", CP_CASES)
def test_context_parallel_attention_matches_one_process(world, case):
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch was built without torch.distributed")
    proc = cp_run(world)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(f"case {case} ")]
    assert lines == [f"case {case} ok"], (lines or [f"case {case} did not finish"]) + [
        proc.stdout[-3000:] + proc.stderr[-3000:]]

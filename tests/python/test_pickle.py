"""Arrays pickle, copy and travel through torch's DataLoader workers and torch.save / torch.load
(issue 15): pickled as values + offsets + the known max_length, rebuilt through Array(...) so the
offsets are validated where they arrive. Every backend installed here, including JAX and MLX."""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest

import scree
from cases import host, native

LENGTHS = [3, 0, 1, 5]


@pytest.fixture(params=["numpy", "torch", "jax", "mlx"])
def arr(request) -> scree.Array:
    rng = np.random.default_rng(15)
    values = rng.standard_normal((sum(LENGTHS), 2)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)
    return scree.from_offsets(native(request.param, values), native(request.param, offsets))


def _same(a: scree.Array, b: scree.Array) -> None:
    assert type(b) is scree.Array and b.backend == a.backend
    np.testing.assert_array_equal(host(b.values), host(a.values))
    np.testing.assert_array_equal(b.host_offsets, a.host_offsets)
    assert b.max_length == a.max_length and b.values.dtype == a.values.dtype


def test_pickle_round_trip(arr):
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        _same(arr, pickle.loads(pickle.dumps(arr, protocol=protocol)))


def test_copy_shares_and_deepcopy_copies(arr):
    shallow, deep = copy.copy(arr), copy.deepcopy(arr)
    _same(arr, shallow)
    _same(arr, deep)
    assert shallow.values is arr.values
    if arr.backend in ("numpy", "torch"):  # (JAX and MLX arrays are immutable: no identity to test)
        assert deep.values is not arr.values


def test_max_length_bound_travels():
    """A max_length given as an upper bound (FlashAttention's max_seqlen) is kept, not recomputed."""
    a = scree.Array(np.zeros((6, 1), np.float32), np.array([0, 2, 6]), max_length=10)
    b = pickle.loads(pickle.dumps(a))
    assert b.max_length == 10 and b.to_padded()[0].shape == (2, 10, 1)


def test_unpickling_validates_offsets():
    """validate=False is the caller's promise for the offsets in hand; pickled data is checked again."""
    bad = scree.Array(np.arange(3.0), np.array([0, 5, 3]), validate=False)
    with pytest.raises(scree.RaggedError):
        pickle.loads(pickle.dumps(bad))


def test_torch_save_and_load():
    torch = pytest.importorskip("torch")
    a = scree.from_lengths(torch.randn(9, 3), [4, 5])
    buf = io.BytesIO()
    torch.save({"batch": a, "step": 3}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    _same(a, loaded["batch"])
    buf.seek(0)
    with torch.serialization.safe_globals([scree.Array]):  # what the docstring tells users to allow
        _same(a, torch.load(buf, weights_only=True)["batch"])


class _Tokens:
    """A map-style dataset of token sequences of varying length (per-token features of 2)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        return torch.full((i % 5 + 1, 2), float(i))


def test_dataloader_workers_yield_arrays():
    """collate_fn=scree.pack in worker processes: the Arrays come back pickled (this hung before)."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    # spawn: other tests of this process may have started JAX's threads, which fork would copy
    loader = DataLoader(_Tokens(12), batch_size=4, num_workers=2, collate_fn=scree.pack, timeout=120,
                        multiprocessing_context="spawn")
    batches = list(loader)
    assert len(batches) == 3
    for b, batch in enumerate(batches):
        assert isinstance(batch, scree.Array) and batch.backend == "torch"
        idx = range(4 * b, 4 * b + 4)
        assert batch.lengths.tolist() == [i % 5 + 1 for i in idx]
        expected = torch.cat([torch.full((i % 5 + 1, 2), float(i)) for i in idx])
        assert torch.equal(batch.values, expected)

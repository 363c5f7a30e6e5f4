"""The host block cache behind torch CPU outputs (scree/_host_cache.py, include/scree/host_blocks.h):
large outputs of the CPU attention come from it and go back to it when freed (the next call gets the
same, already written, pages), its values match the fp64 reference, small outputs stay torch's own,
the cap (SCREE_CPU_CACHE_MB) and empty_host_cache() give memory back, and a tensor over a cached block
behaves as any torch tensor (views, in-place ops, autograd gradients, pickling, shared memory)."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

import scree
from scree import _C
from scree.kernels import reference

torch = pytest.importorskip("torch")

H, D = 4, 64
MIN_BYTES = 1 << 18  # scree._backends.numpy.HOST_CACHE_MIN_BYTES


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SCREE_CPU_CACHE_MB", raising=False)
    gc.collect()
    scree.empty_host_cache()
    yield
    gc.collect()
    scree.empty_host_cache()


def _inputs(lengths: list[int], seed: int = 0, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    q, k, v = (torch.randn(T, H, D, generator=gen, dtype=torch.float32) for _ in range(3))
    if requires_grad:
        q, k, v = (x.requires_grad_(True) for x in (q, k, v))
    return [scree.from_lengths(x, lengths) for x in (q, k, v)]


def _reference(q, k, v, causal: bool) -> np.ndarray:
    lengths = [int(n) for n in q.lengths]
    to64 = lambda a: scree.from_lengths(a.values.detach().double().numpy(), lengths)  # noqa: E731
    return np.asarray(reference.varlen_attention(to64(q), to64(k), to64(v), causal=causal).values)


def test_large_outputs_come_from_the_cache_and_return_to_it():
    lengths = [300, 1, 0, 517, 64]  # 882 tokens x 4 x 64 x 4 B = 0.9 MiB of output
    q, k, v = _inputs(lengths)
    out = scree.varlen_attention(q, k, v, causal=True).values
    info = scree.host_cache_info()
    assert info["live_bytes"] >= out.numel() * 4 and info["misses"] >= 1
    np.testing.assert_allclose(out.numpy(), _reference(q, k, v, True), rtol=2e-5, atol=2e-6)
    ptr = out.data_ptr()
    del out
    gc.collect()
    assert scree.host_cache_info()["cached_bytes"] >= sum(lengths) * H * D * 4
    hits = scree.host_cache_info()["hits"]
    again = scree.varlen_attention(q, k, v, causal=True).values  # the same block, rewritten
    assert again.data_ptr() == ptr and scree.host_cache_info()["hits"] == hits + 1
    np.testing.assert_allclose(again.numpy(), _reference(q, k, v, True), rtol=2e-5, atol=2e-6)


def test_gradients_from_the_cache_match_the_reference_and_accumulate():
    lengths = [130, 257, 3]
    q, k, v = _inputs(lengths, seed=1, requires_grad=True)
    out = scree.varlen_attention(q, k, v).values
    g = torch.randn_like(out)
    (out * g).sum().backward()
    grads = [x.values.grad.clone() for x in (q, k, v)]
    assert scree.host_cache_info()["misses"] >= 4  # out, dq, dk, dv (>= 256 KiB each)
    # A second backward accumulates into the .grad tensors (in-place adds on cached blocks).
    out = scree.varlen_attention(q, k, v).values
    (out * g).sum().backward()
    for x, g1 in zip((q, k, v), grads):
        torch.testing.assert_close(x.values.grad, 2 * g1)
    # Against autograd through the fp64 reference in torch.
    q64, k64, v64 = (x.values.detach().double().requires_grad_(True) for x in (q, k, v))
    starts = np.concatenate(([0], np.cumsum(lengths)))
    outs = []
    for s, e in zip(starts[:-1], starts[1:]):
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q64, k64, v64))
        w = torch.softmax(qs @ ks.transpose(1, 2) / D ** 0.5, dim=-1)
        outs.append((w @ vs).transpose(0, 1))
    (torch.cat(outs) * g.double()).sum().backward()
    for g1, ref in zip(grads, (q64.grad, k64.grad, v64.grad)):
        torch.testing.assert_close(g1.double(), ref, rtol=1e-4, atol=1e-5)


def test_small_outputs_stay_torchs_own():
    q, k, v = _inputs([5, 7])  # 12 x 4 x 64 x 4 B = 12 KiB
    before = scree.host_cache_info()
    out = scree.varlen_attention(q, k, v).values
    after = scree.host_cache_info()
    assert out.numel() * 4 < MIN_BYTES
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_cap_zero_keeps_nothing_and_empty_gives_memory_back(monkeypatch: pytest.MonkeyPatch):
    q, k, v = _inputs([600, 400])
    out = scree.varlen_attention(q, k, v).values
    nbytes = out.numel() * 4
    del out
    gc.collect()
    assert scree.host_cache_info()["cached_bytes"] >= nbytes
    assert scree.empty_host_cache() >= nbytes
    assert scree.host_cache_info()["cached_bytes"] == 0
    monkeypatch.setenv("SCREE_CPU_CACHE_MB", "0")
    out = scree.varlen_attention(q, k, v).values
    del out
    gc.collect()
    assert scree.host_cache_info()["cached_bytes"] == 0


def test_a_cached_tensor_behaves_as_any_tensor():
    q, k, v = _inputs([700, 300])
    out = scree.varlen_attention(q, k, v).values
    ref = out.clone()
    assert out.is_contiguous() and out.dtype == torch.float32 and out.device.type == "cpu"
    view = out.view(-1, D)[3:10]
    view.mul_(2.0)  # in place, through a view
    torch.testing.assert_close(out.view(-1, D)[3:10], 2 * ref.view(-1, D)[3:10])
    torch.testing.assert_close(pickle.loads(pickle.dumps(out)), out)
    np.testing.assert_array_equal(out.numpy()[0], out[0].numpy())
    shared = out.clone()
    out.share_memory_()  # torch moves it to shared memory: the block goes back once unreferenced
    torch.testing.assert_close(out, shared)
    del out, view
    gc.collect()
    assert scree.host_cache_info()["live_bytes"] == 0


def test_host_block_rejects_a_negative_size_and_reports_no_memory():
    with pytest.raises(scree.ArgumentError, match="nbytes"):
        _C.host_block(-1)
    with pytest.raises(MemoryError):
        _C.host_block(1 << 62)
    from scree._backends import torch as backend  # the torch glue names the tensor it could not make

    with pytest.raises(scree.OutOfMemoryError, match="bytes"):
        backend.empty((1 << 60,), "float32", like=torch.empty(1))
    assert scree.host_cache_info()["live_bytes"] == 0


def test_numpy_outputs_come_from_the_cache_and_match_the_reference():
    lengths = [400, 0, 1, 623]
    rng = np.random.default_rng(2)
    q, k, v = (scree.from_lengths(rng.standard_normal((sum(lengths), H, D), dtype=np.float32), lengths)
               for _ in range(3))
    out = scree.varlen_attention(q, k, v, causal=True).values
    assert isinstance(out, np.ndarray) and out.flags.c_contiguous and out.dtype == np.float32
    assert scree.host_cache_info()["live_bytes"] >= out.nbytes
    ref = np.asarray(reference.varlen_attention(*(scree.from_lengths(x.values.astype(np.float64), lengths)
                                                 for x in (q, k, v)), causal=True).values)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6)
    ptr = out.ctypes.data
    assert pickle.loads(pickle.dumps(out)).tobytes() == out.tobytes()
    del out
    gc.collect()
    again = scree.varlen_attention(q, k, v, causal=True).values
    assert again.ctypes.data == ptr
    np.testing.assert_allclose(again, ref, rtol=2e-5, atol=2e-6)
    small = scree.varlen_attention(*(x[:1] for x in (q, k, v))).values  # 400 x 4 x 64 x 4 B: cached too
    tiny = scree.varlen_attention(*(x[2:3] for x in (q, k, v))).values  # 1 token: NumPy's own
    assert small.nbytes >= MIN_BYTES and tiny.nbytes < MIN_BYTES

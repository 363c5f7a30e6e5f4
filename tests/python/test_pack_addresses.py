"""scree.pack by address (kernels/layout.py: `_C.pack_addresses`, taken where the backend says
`by_address` for every sequence: torch CPU tensors): the same bits as torch.cat for many short
sequences, and the tensors whose memory is not what they mean go the other way (lazy conjugate
and negative bits, non-contiguous views); NumPy arrays cross as arrays, with the same results. The
binding's own checks: one address per interval, no null address for a sequence with rows, offsets
against out."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from scree import _C
from scree import ScreeError

RNG = np.random.default_rng(20)
LENGTHS = [int(n) for n in RNG.integers(0, 9, 300)] + [0, 1, 130]


@pytest.fixture
def by_address(monkeypatch):
    """The number of packs done by address so far (a spy on the binding)."""
    calls = [0]
    real = _C.pack_addresses

    def spy(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(_C, "pack_addresses", spy)
    return calls


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "uint8", "bool", "float16"])
def test_numpy_many_short(dtype, by_address):
    seqs = [(RNG.standard_normal((n, 3, 2)) * 5).astype(dtype) for n in LENGTHS]
    got = scree.pack(seqs)
    assert by_address[0] == 0
    np.testing.assert_array_equal(got.values, np.concatenate(seqs))
    np.testing.assert_array_equal(np.diff(got.host_offsets), LENGTHS)


def test_numpy_non_native_byte_order(by_address):
    big = [RNG.standard_normal((n, 4)).astype(">f4") for n in LENGTHS[:50]]
    try:
        got = scree.pack(big)
    except ScreeError:
        return  # refused with a typed error is as good as right
    assert by_address[0] == 0
    np.testing.assert_array_equal(np.asarray(got.values, dtype=np.float32), np.concatenate(big).astype(np.float32))


def test_numpy_strided_views(by_address):
    base = RNG.standard_normal((sum(LENGTHS), 8)).astype(np.float32)
    off = np.concatenate([[0], np.cumsum(LENGTHS)])
    seqs = [base[off[i]:off[i + 1], ::2] for i in range(len(LENGTHS))]  # not contiguous
    np.testing.assert_array_equal(scree.pack(seqs).values, np.concatenate(seqs))
    assert by_address[0] == 0


def test_torch_many_short_and_lazy_bits(by_address):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(20)
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        seqs = [(torch.randn(n, 3, generator=g) * 5).to(dtype) for n in LENGTHS]
        assert torch.equal(scree.pack(seqs).values, torch.cat(seqs))
    assert by_address[0] == 3
    z = [torch.randn(n, 2, dtype=torch.complex64, generator=g) for n in LENGTHS]
    lazy_bits = ([t.conj() for t in z], [torch._neg_view(t) for t in z])
    for lazy in lazy_bits:
        assert lazy[-1].is_conj() or lazy[-1].is_neg()
        assert torch.equal(scree.pack(lazy).values.resolve_conj().resolve_neg(), torch.cat(lazy).resolve_conj().resolve_neg())
    half = [t[:, ::2] for t in (torch.randn(n, 6, generator=g) for n in LENGTHS)]  # not contiguous
    assert torch.equal(scree.pack(half).values, torch.cat(half))
    assert by_address[0] == 3


def test_binding_checks():
    out = np.empty((5, 2), np.float32)
    src = np.ones((5, 2), np.float32)
    addr = np.array([src.__array_interface__["data"][0]], np.int64)
    _C.pack_addresses(addr, np.array([0, 5], np.int64), out)
    np.testing.assert_array_equal(out, src)
    with pytest.raises(ScreeError, match="addresses"):
        _C.pack_addresses(np.concatenate([addr, addr]), np.array([0, 5], np.int64), out)
    with pytest.raises(ScreeError, match="null address"):
        _C.pack_addresses(np.zeros(1, np.int64), np.array([0, 5], np.int64), out)
    with pytest.raises(ScreeError, match="offsets"):
        _C.pack_addresses(addr, np.array([0, 6], np.int64), out)
    _C.pack_addresses(np.zeros(2, np.int64), np.array([0, 0, 0], np.int64), out[:0])  # empty: no read

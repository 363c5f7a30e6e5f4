"""Token-level indexing (issue 15): arr[:, a:b] and arr[seqs, a:b], truncate (left / right),
filter by a token mask, scree.cat along the sequence axis and Array.split, on every backend
installed here, against Python loops over the sequences; typed errors; gradients through the
gathers (torch, JAX, MLX); what works under jax.jit (cat) and what needs host offsets (slicing:
UnsupportedError)."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from cases import host, native

LENGTHS = [3, 0, 1, 6, 2]
OFFSETS = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int64)
TOTAL, F = sum(LENGTHS), 2
BACKENDS = ["numpy", "torch", "jax", "mlx"]


def _seqs(a: scree.Array) -> list[np.ndarray]:
    h = a.host_offsets
    v = host(a.values)
    return [v[h[i]:h[i + 1]] for i in range(len(h) - 1)]


def _same(a: scree.Array, want: list[np.ndarray]) -> None:
    got = _seqs(a)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w.reshape((-1, F)))
    assert a.max_length == max((len(w) for w in want), default=0)


@pytest.fixture(params=BACKENDS)
def arr(request, rng) -> scree.Array:
    v = rng.standard_normal((TOTAL, F)).astype(np.float32)
    return scree.from_offsets(native(request.param, v), native(request.param, OFFSETS))


@pytest.mark.parametrize("start, stop", [(None, None), (1, None), (None, 2), (1, 3), (-2, None), (None, -1),
                                         (-10, 10), (4, 2), (0, 0), (5, None)])
def test_token_slice_matches_python_slicing(arr, start, stop):
    want = [s[start:stop] for s in _seqs(arr)]
    _same(arr[:, start:stop], want)
    _same(arr[[3, 0], start:stop], [want[3], want[0]])
    _same(arr[1:4, start:stop], want[1:4])
    np.testing.assert_array_equal(host(arr[3, start:stop]), want[3])  # one sequence: its tokens


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("k", [0, 1, 2, 10])
def test_truncate(arr, side, k):
    want = [s[:k] if side == "right" else s[len(s) - min(k, len(s)):] for s in _seqs(arr)]
    _same(arr.truncate(k, side=side), want)


def test_filter(arr, rng):
    mask = rng.random(TOTAL) < 0.5
    seqs = _seqs(arr)
    want = [s[mask[OFFSETS[i]:OFFSETS[i + 1]]] for i, s in enumerate(seqs)]
    _same(arr.filter(mask), want)
    _same(arr.filter(native(arr.backend, mask)), want)
    _same(arr.filter(np.zeros(TOTAL, bool)), [s[:0] for s in seqs])


@pytest.mark.parametrize("start, stop", [(None, None), (1, None), (None, 2), (1, 3), (-2, None), (None, -1),
                                         (-10, 10), (4, 2), (0, 0), (5, None), (2 ** 70, None), (None, -2 ** 70)])
def test_device_forms_match_python_loops(arr, start, stop, rng):
    """The forms torch.compile traces (kernels.reference.*_on_device: device offsets only, the
    result's size from Backend.rows_of_ranges / true_rows), run eagerly on every backend."""
    from scree.kernels import reference as R
    ns = arr._ns
    seqs = _seqs(arr)
    got = R.slice_tokens_on_device(arr, start, stop)
    _same_offsets(got, [s[start:stop] for s in seqs])
    for side in ("right", "left"):
        for k in (0, 2, 10, 2 ** 70):
            want = [s[:k] if side == "right" else s[len(s) - min(k, len(s)):] for s in seqs]
            _same_offsets(R.truncate_on_device(arr, k, side), want)
    idx = [3, 0, 4, 1]
    _same_offsets(R.gather_on_device(arr, ns.asarray(idx, dtype="int64", like=arr.values)), [seqs[i] for i in idx])
    mask = rng.random(TOTAL) < 0.5
    want = [s[mask[OFFSETS[i]:OFFSETS[i + 1]]] for i, s in enumerate(seqs)]
    _same_offsets(R.filter_tokens_on_device(arr, native(arr.backend, mask)), want)


def _same_offsets(a: scree.Array, want: list[np.ndarray]) -> None:
    """As _same, for Arrays whose host bookkeeping was never made (offsets read back here)."""
    h = host(a.offsets).astype(np.int64)
    np.testing.assert_array_equal(h, np.concatenate([[0], np.cumsum([len(w) for w in want])]))
    v = host(a.values)
    for i, w in enumerate(want):
        np.testing.assert_array_equal(v[h[i]:h[i + 1]], w.reshape((-1, F)))


def test_cat_and_split(arr):
    parts = arr.split([2, 0, 3])
    assert [len(p) for p in parts] == [2, 0, 3]
    seqs = _seqs(arr)
    _same(parts[0], seqs[:2])
    _same(parts[2], seqs[2:])
    back = scree.cat(parts)
    _same(back, seqs)
    _same(scree.cat([arr, arr[3:4]]), seqs + seqs[3:4])
    np.testing.assert_array_equal(host(back.offsets).astype(np.int64), OFFSETS)


def test_errors(arr):
    with pytest.raises(scree.ArgumentError, match="step"):
        arr[:, ::2]
    with pytest.raises(scree.ArgumentError, match="integers or None"):
        arr[:, 1.5:]
    with pytest.raises(scree.ArgumentError, match="token slice"):
        arr[..., 0]
    with pytest.raises(scree.ArgumentError, match="side"):
        arr.truncate(2, side="middle")
    with pytest.raises(scree.ArgumentError, match="max_length"):
        arr.truncate(-1)
    with pytest.raises(scree.ShapeError, match="boolean mask"):
        arr.filter(np.ones(TOTAL + 1, bool))
    with pytest.raises(scree.ShapeError, match="boolean mask"):
        arr.filter(np.ones(TOTAL, np.int32))
    with pytest.raises(scree.ArgumentError, match="sum to the 5 sequences"):
        arr.split([2, 2])
    with pytest.raises(scree.ArgumentError, match="list of sequence counts"):
        arr.split(3)
    with pytest.raises(scree.ShapeError, match="feature shape"):
        scree.cat([arr, arr.map(lambda v: v[:, :1])])
    with pytest.raises(scree.ArgumentError, match="single Array"):
        scree.cat(arr)


def test_cat_mixed_backends_is_a_backend_error(rng):
    pytest.importorskip("torch")
    a = scree.from_lengths(rng.standard_normal((3, F)), [3])
    with pytest.raises(scree.BackendError, match=r"arrays\[1\]"):
        scree.cat([a, a.to("torch")])


def test_torch_gradients_flow_to_the_kept_tokens(rng):
    torch = pytest.importorskip("torch")
    v = torch.tensor(rng.standard_normal((TOTAL, F)), requires_grad=True)
    a = scree.from_offsets(v, torch.tensor(OFFSETS))
    out = scree.cat([a[:, 1:], a.truncate(1, side="left")])
    g, = torch.autograd.grad(out.values.sum(), v)
    count = np.zeros(TOTAL)
    for i, n in enumerate(LENGTHS):
        count[OFFSETS[i] + 1:OFFSETS[i + 1]] += 1  # a[:, 1:]
        if n:
            count[OFFSETS[i + 1] - 1] += 1  # the last token
    np.testing.assert_array_equal(g[:, 0].numpy(), count)


def test_jax_grad_and_jit(rng):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    v = jnp.asarray(rng.standard_normal((TOTAL, F)).astype(np.float32))
    a = scree.from_offsets(v, jnp.asarray(OFFSETS))
    g = jax.grad(lambda x: jnp.sum(a.with_values(x)[:, :1].values))(v)
    firsts = np.zeros(TOTAL)
    firsts[[OFFSETS[i] for i in range(len(LENGTHS)) if LENGTHS[i]]] = 1
    np.testing.assert_array_equal(np.asarray(g)[:, 0], firsts)
    both = jax.jit(lambda x, y: scree.cat([x, y]))(a, a)  # no host offsets needed
    _same(both, _seqs(a) * 2)
    with pytest.raises(scree.UnsupportedError):
        jax.jit(lambda x: x[:, 1:])(a)  # slicing reads the host offsets


def test_mlx_grad(rng):
    mx = pytest.importorskip("mlx.core")
    a = scree.from_offsets(mx.array(rng.standard_normal((TOTAL, F)).astype(np.float32)), mx.array(OFFSETS))
    g = mx.grad(lambda x: mx.sum(a.with_values(x).truncate(1).values))(a.values)
    firsts = np.zeros(TOTAL, np.float32)
    firsts[[OFFSETS[i] for i in range(len(LENGTHS)) if LENGTHS[i]]] = 1
    np.testing.assert_array_equal(np.asarray(g)[:, 0], firsts)

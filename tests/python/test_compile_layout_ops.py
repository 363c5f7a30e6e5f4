"""Array's per-sequence ops, elementwise math and cat under torch.compile(fullgraph=True) (issue 15):
the compiled function gives what the eager one gives, gradients included. Under tracing the layout
ops take the reference's torch ops (dynamo cannot trace into scree._C). Not compiled yet: ops whose
output size depends on the offsets' values (gather, token slicing, truncate, filter) and pack,
which read host offsets or host lists (see docs/design.md)."""

from __future__ import annotations

import numpy as np
import pytest

import scree

torch = pytest.importorskip("torch")

LENGTHS = [3, 0, 1, 6]
REDUCTIONS = ["sum", "mean", "max", "min", "prod", "any", "all", "argmax", "argmin", "logsumexp", "var", "std"]


@pytest.fixture
def arr(rng) -> scree.Array:
    return scree.from_lengths(torch.tensor(rng.standard_normal((sum(LENGTHS), 4)), dtype=torch.float32), LENGTHS)


def _both(fn, *args):
    torch._dynamo.reset()
    return fn(*args), torch.compile(fn, fullgraph=True)(*args)


def _same(eager, compiled) -> None:
    for e, c in zip(eager, compiled):
        e = e.values if isinstance(e, scree.Array) else e
        c = c.values if isinstance(c, scree.Array) else c
        torch.testing.assert_close(c, e, equal_nan=True)


def test_reductions_compile(arr):
    _same(*_both(lambda a: tuple(getattr(a, op)() for op in REDUCTIONS), arr))


def test_per_token_ops_compile(arr):
    def fn(a):
        return (a.softmax(), a.log_softmax(), a.cumsum(), a.positions(), a.segment_ids(), a.lengths,
                a.to_padded(pad_value=-1.0)[0], a.expand(torch.ones(len(LENGTHS), 4)))
    _same(*_both(fn, arr))


def test_elementwise_and_cat_compile(arr, rng):
    per_seq = torch.tensor(rng.standard_normal((len(LENGTHS), 4)), dtype=torch.float32)
    w = torch.tensor(rng.standard_normal((4, 3)), dtype=torch.float32)

    def fn(a, s, w):
        # (F.linear, not `@`: under dynamo `a @ w` reaches __torch_function__ with the operands
        # swapped; eager `a @ w` is tested in test_elementwise.py)
        b = torch.nn.functional.linear(torch.nn.functional.gelu(a * s + 1.0), w.T)
        return b, scree.cat([a, a]), per_seq * a, (a > 0)
    eager, compiled = _both(fn, arr, per_seq, w)
    _same(eager, compiled)
    assert compiled[1].num_sequences == 2 * len(LENGTHS)


def test_gradients_through_a_compiled_function(arr):
    v = arr.values.clone().requires_grad_(True)

    def loss(values):
        a = arr.with_values(values)
        return (a.softmax() * a).values.sum() + a.logsumexp().sum() + a.var()[[0, 2, 3]].sum()
    torch._dynamo.reset()
    g_eager, = torch.autograd.grad(loss(v), v)
    g_comp, = torch.autograd.grad(torch.compile(loss, fullgraph=True)(v), v)
    torch.testing.assert_close(g_comp, g_eager)
    assert np.isfinite(g_comp.numpy()).all()

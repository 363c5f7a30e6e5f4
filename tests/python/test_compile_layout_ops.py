"""Array's per-sequence ops, elementwise math, construction and selection under
torch.compile(fullgraph=True) (issue 15): the compiled function gives what the eager one gives,
gradients included. Under tracing the layout ops take the reference's torch ops (dynamo cannot
trace into scree._C), and the selections whose size depends on the offsets' values (gather,
sequence and token slices, truncate, filter) their device forms, whose size is an unbacked symbol
(scree::rows_of_ranges / scree::true_rows custom ops); construction inside the compiled region
builds offsets on the device (not validated there: docs/design.md)."""

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


SELECTIONS = {
    "gather": lambda a: a[[3, 0, 2]],
    "gather_tensor": lambda a: a[torch.tensor([1, -1, 0])],
    "gather_mask": lambda a: a[torch.tensor([True, False, True, True])],
    "sequence_slice": lambda a: a[1:3],
    "token_slice": lambda a: a[:, 1:-1],
    "seqs_and_tokens": lambda a: a[[3, 2], :2],
    "truncate_left": lambda a: a.truncate(2, side="left"),
    "truncate_right": lambda a: a.truncate(1),
    "filter": lambda a: a.filter(a.values[:, 0] > 0),
    "split": lambda a: a.split([1, 3])[1],
    "cat_of_slices": lambda a: scree.cat([a[:, :1], a[2:]]),
}


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_selections_compile_with_gradients(arr, name):
    select = SELECTIONS[name]
    v = arr.values.clone().requires_grad_(True)

    def fn(values):
        out = select(arr.with_values(values))
        return out.values, out.offsets, (out.values * out.values).sum()

    torch._dynamo.reset()
    eager = fn(v)
    compiled = torch.compile(fn, fullgraph=True)(v)
    torch.testing.assert_close(compiled[0], eager[0])
    assert torch.equal(compiled[1].to(torch.int64), eager[1].to(torch.int64))
    g_eager, = torch.autograd.grad(eager[2], v)
    g_comp, = torch.autograd.grad(compiled[2], v)
    torch.testing.assert_close(g_comp, g_eager)


def test_construction_compiles(arr):
    off = arr.offsets.to(torch.int64)

    def fn(values, offsets):
        lens = offsets[1:] - offsets[:-1]
        built = (scree.Array(values, offsets), scree.from_offsets(values, offsets),
                 scree.from_cu_seqlens(values, offsets.to(torch.int32), max_seqlen=6),
                 scree.from_lengths(values, LENGTHS), scree.from_lengths(values, lens),
                 scree.pack([values[:3], values[3:4], values[4:]]))
        return tuple(a.sum() for a in built) + (built[-1].offsets,)

    eager, compiled = _both(fn, arr.values, off)
    _same(eager, compiled)


def test_selections_compile_with_dynamic_shapes(rng):
    def fn(a):
        return a[:, :2].sum(), a.truncate(1, side="left").values, scree.pack([a.values[:2], a.values[2:]]).offsets

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    torch._dynamo.reset()
    for lengths in ([3, 0, 1, 6], [5, 2, 2, 1, 7]):
        a = scree.from_lengths(torch.tensor(rng.standard_normal((sum(lengths), 4)), dtype=torch.float32), lengths)
        _same(fn(a), compiled(a))


def test_compiled_selection_errors_name_the_problem(arr):
    """Bad selections raise scree's typed errors from a compiled function (dynamo falls back to
    running the frame, which raises); with fullgraph=True torch reports the exception it met while
    tracing as its own Unsupported error, which carries scree's message."""
    bad = {
        IndexError: ("out of range", lambda a: a[[0, 7]].values),
        scree.ShapeError: ("boolean mask", lambda a: a.filter(a.values[:3, 0] > 0).values),
        scree.RaggedError: ("sum", lambda a: scree.from_lengths(a.values, [1, 2]).values),
    }
    for err, (match, fn) in bad.items():
        torch._dynamo.reset()
        with pytest.raises(err, match=match):
            torch.compile(fn)(arr)
        torch._dynamo.reset()
        with pytest.raises(Exception, match=match):
            torch.compile(fn, fullgraph=True)(arr)

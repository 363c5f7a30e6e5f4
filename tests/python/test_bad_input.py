"""Bad input never crashes and never gives a silently wrong result: every public constructor and
operation (NumPy and torch, compiled and reference paths) and the raw ``scree._C`` boundary raise
scree's typed errors, whose messages name the culprit (the bad index, argument or shape)."""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
import torch

import scree
from scree import _C
from scree import bridges

# ---- helpers -----------------------------------------------------------------------------------

RNG = np.random.default_rng(20241127)


def _rand(*shape: int, dtype=np.float32) -> np.ndarray:
    """Random, never all-zero data (normal values shifted away from 0)."""
    return (RNG.standard_normal(shape) + 3.0).astype(dtype)


class _Numpy:
    name = "numpy"
    grad = False

    def __call__(self, x, dtype=None):
        return np.array(x, dtype=dtype)


class _Torch:
    name = "torch"

    def __init__(self, grad: bool = False):
        self.grad = grad  # requires_grad values take the reference (framework-ops) path

    def __call__(self, x, dtype=None):
        t = torch.from_numpy(np.array(x, dtype=dtype))
        if self.grad and t.is_floating_point():
            t.requires_grad_(True)
        return t


BACKENDS = [_Numpy(), _Torch()]
# torch values that require grad run scree.kernels.reference instead of the C++ kernels.
ALL_PATHS = BACKENDS + [_Torch(grad=True)]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def be(request):
    return request.param


@pytest.fixture(params=ALL_PATHS, ids=["numpy", "torch", "torch-reference"])
def path(request):
    return request.param


@contextlib.contextmanager
def raises(exc, *fragments: str, typed: bool = True):
    """pytest.raises(exc) plus: the message contains every fragment (plain substrings, or regexes
    when wrapped in re.compile), and the error is a scree.ScreeError when `typed`."""
    with pytest.raises(exc) as info:
        yield info
    msg = str(info.value)
    for frag in fragments:
        if isinstance(frag, re.Pattern):
            assert frag.search(msg), f"{frag.pattern!r} not found in {msg!r}"
        else:
            assert frag in msg, f"{frag!r} not in {msg!r}"
    if typed:
        assert isinstance(info.value, scree.ScreeError), f"untyped {type(info.value).__name__}: {msg}"


# ---- the error hierarchy -------------------------------------------------------------------------

@pytest.mark.parametrize("cls, base", [
    (scree.RaggedError, ValueError),
    (scree.ShapeError, ValueError),
    (scree.UnsupportedError, ValueError),
    (scree.ArgumentError, ValueError),
    (scree.DTypeError, TypeError),
    (scree.BackendError, TypeError),
])
def test_error_classes_subclass_builtin_errors(cls, base):
    assert issubclass(cls, scree.ScreeError)
    assert issubclass(cls, base)
    assert cls.__module__ == "scree._errors"
    assert getattr(scree, cls.__name__) is cls
    # A user catching the builtin class catches scree's error.
    with pytest.raises(base):
        raise cls("boom")


def test_cpp_errors_are_the_python_classes():
    """The C++ translator raises the very classes of scree._errors (not look-alikes)."""
    with pytest.raises(scree.RaggedError) as info:
        _C.validate_offsets(np.array([0, 3, 2], dtype=np.int64), 2)
    assert type(info.value) is scree.RaggedError
    assert isinstance(info.value, ValueError)
    with pytest.raises(scree.DTypeError) as info:
        _C.validate_offsets(np.array([0.0, 2.0]), 2)
    assert type(info.value) is scree.DTypeError
    assert isinstance(info.value, TypeError)


# ---- Array / from_offsets: offsets invariants ------------------------------------------------------

CONSTRUCTORS = {
    "Array": lambda v, o: scree.Array(v, o),
    "from_offsets": lambda v, o: scree.from_offsets(v, o),
    "from_cu_seqlens": lambda v, o: scree.from_cu_seqlens(v, o),
    "bridges.from_cu_seqlens": lambda v, o: bridges.from_cu_seqlens(v, o),
}


@pytest.fixture(params=list(CONSTRUCTORS), ids=list(CONSTRUCTORS))
def construct(request):
    return CONSTRUCTORS[request.param]


@pytest.mark.parametrize("odt", [np.int32, np.int64])
@pytest.mark.parametrize("offsets, fragments", [
    ([1, 2, 5], ["offsets[0] must be 0", "got 1"]),
    ([-1, 2, 5], ["offsets[0] must be 0", "got -1"]),
    ([0, 3, 2, 5], ["non-decreasing", "offsets[2] = 2", "offsets[1] = 3"]),
    # first violation is at index 4 (the one at index 5 must not be reported)
    ([0, 1, 2, 4, 3, 2, 5], ["non-decreasing", "offsets[4] = 3"]),
    ([0, 2, 4], ["offsets[-1]", "= 4", "total = 5"]),           # too short
    ([0, 2, 6], ["offsets[-1]", "= 6", "total = 5"]),           # too long
    ([0, 2, 5, 7], ["offsets[-1]", "index 3", "= 7", "total = 5"]),
    ([0], ["= 0", "total = 5"]),                                # no sequences but 5 rows
])
def test_bad_offsets_raise_ragged_error(be, construct, offsets, fragments, odt):
    values = be(_rand(5, 2))
    with raises(scree.RaggedError, *fragments):
        construct(values, be(offsets, odt))


def test_first_bad_index_is_named(be):
    """A long offsets array with a single dip: the message names exactly that index."""
    lengths = RNG.integers(0, 4, size=200)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    off[137] = off[136] - 1 if off[136] > 0 else -1
    values = be(_rand(int(off[-1]), 3))
    with raises(scree.RaggedError, "offsets[137]"):
        scree.Array(values, be(off))


def test_empty_offsets(be, construct):
    with raises(scree.RaggedError, "offsets", "empty"):
        construct(be(_rand(5, 2)), be(np.array([], dtype=np.int64)))


def test_2d_offsets(be, construct):
    with raises(scree.ShapeError, "offsets", "1-D", "2-D"):
        construct(be(_rand(5, 2)), be([[0, 2, 5]], np.int64))


@pytest.mark.parametrize("odt, name", [(np.float32, "float32"), (np.float64, "float64"), (np.bool_, "bool")])
def test_non_integer_offsets(be, construct, odt, name):
    offsets = [0, 1] if odt is np.bool_ else [0, 2, 5]
    with raises(scree.DTypeError, "offsets", name):
        construct(be(_rand(5, 2)), be(offsets, odt))


def test_float_offsets_as_python_list():
    with raises(scree.DTypeError, "offsets", "float"):
        scree.Array(_rand(5, 2), [0, 2.5, 5])


def test_0d_values(be):
    with raises(scree.ShapeError, "0-D"):
        scree.Array(be(np.float32(1.5)), be([0], np.int64))
    with raises(scree.ShapeError, "0-D"):
        scree.from_lengths(be(np.float32(1.5)), [0])


def test_values_not_an_array():
    with raises(scree.BackendError, "list"):
        scree.Array([[1.0, 2.0]], np.array([0, 1]))
    with raises(scree.BackendError, "list"):
        scree.pack([[1.0, 2.0], [3.0]])
    with raises(scree.BackendError, "str"):
        scree.from_lengths("abc", [3])


@pytest.mark.parametrize("direction", ["numpy-values/torch-offsets", "torch-values/numpy-offsets"])
def test_array_mixed_backends_raise_backend_error(direction):
    v = _rand(5, 2)
    off = np.array([0, 2, 5])
    if direction.startswith("numpy"):
        args = (v, torch.from_numpy(off))
    else:
        args = (torch.from_numpy(v), off)
    with raises(scree.BackendError, "offsets"):
        scree.Array(*args)


def test_validate_false_skips_only_the_check(be):
    """validate=False is the documented trusted path: a *valid* layout still works and gives the
    same result as the validated one (the flag must not change the answer)."""
    v = be(_rand(5, 2))
    off = be([0, 2, 2, 5], np.int64)
    a, b = scree.Array(v, off), scree.Array(v, off, validate=False)
    assert a.max_length == b.max_length == 3
    np.testing.assert_array_equal(np.asarray(a.to_padded()[0]), np.asarray(b.to_padded()[0]))


# ---- from_lengths -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["list", "native-int64", "native-int32"])
def test_negative_length_names_index(be, kind):
    lengths = [2, 3, -1, 1]
    if kind != "list":
        lengths = be(lengths, np.int64 if kind.endswith("64") else np.int32)
    with raises(scree.RaggedError, "lengths[2]", "-1"):
        scree.from_lengths(be(_rand(5, 2)), lengths)


@pytest.mark.parametrize("lengths, total", [([2, 2], 4), ([2, 4], 6), ([], 0)])
def test_lengths_sum_mismatch(be, lengths, total):
    with raises(scree.RaggedError, f"sum(lengths) = {total}", "values.shape[0]", "(5, 2)"):
        scree.from_lengths(be(_rand(5, 2)), lengths)


@pytest.mark.parametrize("bad, fragment", [([2.0, 3.0], "float"), ([True, True], "bool"), (["2", "3"], "<U1")])
def test_non_integer_lengths(be, bad, fragment):
    with raises(scree.DTypeError, "lengths", fragment):
        scree.from_lengths(be(_rand(5, 2)), bad)


def test_non_integer_native_lengths(be):
    with raises(scree.DTypeError, "lengths", "float32"):
        scree.from_lengths(be(_rand(5, 2)), be([2, 3], np.float32))


def test_2d_lengths(be):
    with raises(scree.ShapeError, "lengths", "1-D", "(1, 2)"):
        scree.from_lengths(be(_rand(5, 2)), [[2, 3]])


# ---- pack -----------------------------------------------------------------------------------------

def test_pack_mixed_dtypes(path):
    seqs = [path(_rand(2, 3)), path(_rand(1, 3)), path(_rand(4, 3, dtype=np.float64))]
    with raises(scree.DTypeError, "sequences[2]", "float64", "float32"):
        scree.pack(seqs)


def test_pack_mixed_feature_shapes(path):
    seqs = [path(_rand(2, 3)), path(_rand(1, 3)), path(_rand(4, 4))]
    with raises(scree.ShapeError, "sequences[2]", "(4,)", "(3,)"):
        scree.pack(seqs)
    with raises(scree.ShapeError, "sequences[1]"):
        scree.pack([path(_rand(2, 3)), path(_rand(2, 3, 1))])


def test_pack_mixed_backends():
    with raises(scree.BackendError, "sequences[1]", "torch", "numpy"):
        scree.pack([_rand(2, 3), torch.from_numpy(_rand(2, 3))])
    with raises(scree.BackendError, "sequences[2]", "numpy", "torch"):
        scree.pack([torch.from_numpy(_rand(2, 3)), torch.from_numpy(_rand(1, 3)), _rand(2, 3)])


@pytest.mark.parametrize("empty", [[], (), iter([])], ids=["list", "tuple", "iterator"])
def test_pack_empty(empty):
    with raises(scree.ArgumentError, "at least one sequence"):
        scree.pack(empty)


def test_pack_0d_element(path):
    with raises(scree.ShapeError, "sequences[1]", "0-D"):
        scree.pack([path(_rand(2)), path(np.float32(2.5))])
    with raises(scree.ShapeError, "sequences[0]", "0-D"):
        scree.pack([path(np.float32(2.5)), path(_rand(2))])


# ---- from_padded ------------------------------------------------------------------------------------

def test_from_padded_mask_wrong_shape(path):
    padded = path(_rand(3, 4, 2))
    for bad in [(3, 3), (2, 4), (3, 4, 2), (12,)]:
        with raises(scree.ShapeError, "mask shape", str(bad), "(3, 4)"):
            scree.from_padded(padded, mask=path(np.ones(bad, dtype=bool)))


def test_from_padded_mask_and_lengths(path):
    with raises(scree.ArgumentError, "mask or lengths", "not both"):
        scree.from_padded(path(_rand(3, 4, 2)), mask=path(np.ones((3, 4), dtype=bool)), lengths=[1, 2, 3])


@pytest.mark.parametrize("side", ["right", "left"])
def test_from_padded_length_longer_than_padded(path, side):
    with raises(scree.ShapeError, "lengths", "5"):
        scree.from_padded(path(_rand(3, 4, 2)), lengths=[1, 5, 3], padding_side=side)


@pytest.mark.parametrize("lengths", [[1, 2], [1, 2, 3, 4], []])
def test_from_padded_wrong_number_of_lengths(path, lengths):
    with raises(scree.ShapeError, "lengths", str(len(lengths)), "3"):
        scree.from_padded(path(_rand(3, 4, 2)), lengths=lengths)


def test_from_padded_negative_length(path):
    with raises(scree.RaggedError, "lengths[1]", "-2"):
        scree.from_padded(path(_rand(3, 4, 2)), lengths=[1, -2, 3])


@pytest.mark.parametrize("side", ["middle", "Right", "", None])
def test_from_padded_bad_padding_side(path, side):
    with raises(scree.ArgumentError, "padding_side", repr(side)):
        scree.from_padded(path(_rand(3, 4, 2)), lengths=[1, 2, 3], padding_side=side)


def test_from_padded_1d(path):
    with raises(scree.ShapeError, "padded", "(3,)"):
        scree.from_padded(path(_rand(3)))


def test_from_padded_mixed_backends():
    with raises(scree.BackendError, "mask", "torch", "numpy"):
        scree.from_padded(_rand(2, 3, 1), mask=torch.ones(2, 3, dtype=torch.bool))
    with raises(scree.BackendError, "mask", "numpy", "torch"):
        scree.from_padded(torch.from_numpy(_rand(2, 3, 1)), mask=np.ones((2, 3), dtype=bool))


# ---- to_padded --------------------------------------------------------------------------------------

@pytest.fixture
def arr(path):
    """Lengths [2, 0, 3] with feature 2; on the NumPy, torch or reference path."""
    return scree.from_lengths(path(_rand(5, 2)), [2, 0, 3])


@pytest.mark.parametrize("max_length", [2, 0, -1])
def test_to_padded_max_length_too_small(arr, max_length):
    with raises(scree.ShapeError, f"max_length={max_length}", "(3)"):
        arr.to_padded(max_length=max_length)


@pytest.mark.parametrize("side", ["up", "LEFT", None])
def test_to_padded_bad_padding_side(arr, side):
    with raises(scree.ArgumentError, "padding_side", repr(side)):
        arr.to_padded(padding_side=side)
    with raises(scree.ArgumentError, "padding_side", repr(side)):
        bridges.to_hf_padded(arr, padding_side=side)


# ---- indexing -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("i", [3, 4, 100, -4, -100])
def test_int_index_out_of_range(arr, i):
    # IndexError (not a scree class) is what Python's iteration protocols rely on.
    with raises(IndexError, f"sequence index {i}", "3 sequences", typed=False):
        arr[i]
    with raises(IndexError, str(i), typed=False):
        arr[np.int64(i)]


def test_index_array_out_of_range(arr, path):
    with raises(IndexError, "sequence index 5", "position 1", typed=False):
        arr[[0, 5, 1]]
    with raises(IndexError, "sequence index -4", "position 2", typed=False):
        arr[path([0, 1, -4], np.int64)]


@pytest.mark.parametrize("index", [
    [0.0, 1.0], np.array([0.5]), 1.5, "a", None,
], ids=["float-list", "float-ndarray", "float-scalar", "str", "None"])
def test_non_integer_index(arr, index):
    with raises(scree.ArgumentError, "sequence indices must be integers"):
        arr[index]


@pytest.mark.parametrize("index", [(slice(None), 0), (Ellipsis, 0), (0, None), (slice(None), slice(None), 0)],
                         ids=["all-int", "ellipsis", "newaxis", "three-axes"])
def test_token_level_index_says_what_is_supported(arr, index):
    """arr[:, :2] said "got object"; it slices each sequence's tokens now (test_token_ops.py). Any
    other multi-dimensional index names what an Array is indexed by (a tuple of integers still
    gathers those sequences)."""
    with raises(scree.ArgumentError, "indexed by sequence, then optionally by a token slice"):
        arr[index]
    assert arr[(0, 1)].num_sequences == 2


def test_float_native_index_array(arr, path):
    idx = path([0.0, 2.0], np.float32)
    if isinstance(idx, torch.Tensor):
        idx = idx.detach()
    with raises(scree.ArgumentError, "integers", "float32"):
        arr[idx]


def test_bool_mask_index_wrong_length(arr, path):
    with raises(scree.ShapeError, "boolean", "(3,)", "(2,)"):
        arr[path([True, False])]
    with raises(scree.ShapeError, "boolean", "(3,)", "(4,)"):
        arr[np.array([True, False, True, True])]


def test_iteration_stops_at_len(arr):
    """IndexError at n is what makes iteration/unpack stop; nothing past the end is produced."""
    seqs = list(arr)
    assert len(seqs) == len(arr) == 3
    assert [int(s.shape[0]) for s in seqs] == [2, 0, 3]


# ---- positions / segment_ids / reductions / with_values -------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "int16", "bool", "int"])
def test_positions_bad_dtype(arr, dtype):
    with raises(scree.ArgumentError, "dtype", repr(dtype)):
        arr.positions(dtype=dtype)
    with raises(scree.ArgumentError, "dtype", repr(dtype)):
        arr.segment_ids(dtype=dtype)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint8, np.bool_])
def test_mean_of_integers(be, dtype):
    values = be((RNG.integers(1, 9, size=(5, 2))).astype(dtype))
    a = scree.from_lengths(values, [2, 3])
    with raises(scree.DTypeError, "mean", "floating", np.dtype(dtype).name):
        a.mean()
    # sum of the same integers works and is exact (int64)
    expected = np.stack([np.asarray(values)[:2].astype(np.int64).sum(0), np.asarray(values)[2:].astype(np.int64).sum(0)])
    np.testing.assert_array_equal(np.asarray(a.sum()), expected)


@pytest.mark.parametrize("rows", [4, 6, 0])
def test_with_values_wrong_rows(arr, path, rows):
    with raises(scree.ShapeError, "with_values", "5 rows", f"({rows}, 2)"):
        arr.with_values(path(_rand(rows, 2)))
    with raises(scree.ShapeError, "with_values", "5 rows", f"({rows}, 2)"):
        arr.map(lambda v: path(_rand(rows, 2)))
    with raises(scree.ShapeError, "with_values", "5 rows", "(4, 2)"):
        arr.map(lambda v: v[1:])  # a token-wise fn must keep the rows


def test_with_values_0d(arr, path):
    with raises(scree.ShapeError, "with_values", "()"):
        arr.with_values(path(np.float32(2.0)))


def test_with_values_other_backend():
    a = scree.from_lengths(_rand(5, 2), [2, 3])
    with raises(scree.BackendError, "torch", "numpy"):
        a.with_values(torch.from_numpy(_rand(5, 2)))


def test_to_unknown_backend(arr):
    with raises(scree.BackendError, "'tensorflow'", "numpy, torch, jax, mlx"):
        arr.to("tensorflow")


# ---- from_cu_seqlens ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cu, exc, fragments", [
    ([1, 2, 5], scree.RaggedError, ["offsets[0]"]),
    ([0, 3, 2, 5], scree.RaggedError, ["offsets[2]"]),
    ([0, 2, 4], scree.RaggedError, ["total = 5"]),
    ([0, 2, 9], scree.RaggedError, ["9", "total = 5"]),
])
def test_from_cu_seqlens_bad(be, cu, exc, fragments):
    with raises(exc, *fragments):
        scree.from_cu_seqlens(be(_rand(5, 2)), be(cu, np.int32))


def test_from_cu_seqlens_bad_dtype_shape(be):
    with raises(scree.DTypeError, "float32"):
        scree.from_cu_seqlens(be(_rand(5, 2)), be([0, 2, 5], np.float32))
    with raises(scree.ShapeError, "1-D"):
        scree.from_cu_seqlens(be(_rand(5, 2)), be([[0, 2, 5]], np.int32))


@pytest.mark.parametrize("max_seqlen", [2, 0, -3])
def test_from_cu_seqlens_max_seqlen_too_small(be, max_seqlen):
    with raises(scree.ArgumentError, f"max_seqlen={max_seqlen}", "(3)"):
        scree.from_cu_seqlens(be(_rand(5, 2)), be([0, 2, 5], np.int32), max_seqlen=max_seqlen)
    with raises(scree.ArgumentError, f"max_seqlen={max_seqlen}"):
        bridges.from_cu_seqlens(be(_rand(5, 2)), be([0, 2, 5], np.int32), max_seqlen=max_seqlen)


def test_from_cu_seqlens_max_seqlen_upper_bound_is_accepted(be):
    """A max_seqlen above the real one (FlashAttention treats it as a bound) is not an error, and
    the layout itself is still the validated one."""
    cu = be([0, 2, 5], np.int32)
    a = scree.from_cu_seqlens(be(_rand(5, 2)), cu, max_seqlen=7)
    assert a.offsets is cu and a.max_length >= 3
    assert [int(s.shape[0]) for s in a] == [2, 3]
    # trusted path: the caller's value is taken as is, with no check
    b = scree.from_cu_seqlens(be(_rand(5, 2)), be([0, 2, 5], np.int32), max_seqlen=3, validate=False)
    assert b.max_length == 3


# ---- bridges' bad input -------------------------------------------------------------------------------------

def test_from_position_ids_bad(be):
    v = be(_rand(7, 2))
    with raises(scree.RaggedError, "index 2", "has 3", "expected 2"):
        bridges.from_position_ids(v, be([0, 1, 3, 0, 1, 0, 1], np.int64))
    with raises(scree.RaggedError, "start at 0"):
        bridges.from_position_ids(v, be([1, 2, 3, 0, 1, 0, 1], np.int64))
    with raises(scree.ShapeError, "3 entries", "(7, 2)"):
        bridges.from_position_ids(v, be([0, 1, 2], np.int64))
    with raises(scree.DTypeError, "position_ids", "float32"):
        bridges.from_position_ids(v, be([0, 1.5, 2, 0, 1, 0, 1], np.float32))
    with raises(scree.ShapeError, "position_ids", "(2, 3)"):
        bridges.from_position_ids(be(_rand(6, 2)), be([[0, 1, 2], [0, 1, 2]], np.int64))


def test_from_position_ids_mixed_backends():
    with raises(scree.BackendError, "position_ids", "numpy", "torch"):
        bridges.from_position_ids(torch.from_numpy(_rand(3, 2)), np.array([0, 1, 2]))


def test_cu_seqlens_from_lengths_bad(be):
    with raises(scree.RaggedError, "lengths[1]", "-1"):
        bridges.cu_seqlens_from_lengths(be([3, -1, 2], np.int64))
    with raises(scree.DTypeError, "lengths", "float"):
        bridges.cu_seqlens_from_lengths(be([3.0, 1.0], np.float64))


def test_from_torch_nested_bad():
    with raises(scree.BackendError, "nested tensor", "Tensor"):
        bridges.from_torch_nested(torch.ones(2, 3))
    with raises(scree.BackendError, "nested tensor", "ndarray"):
        bridges.from_torch_nested(np.ones((2, 3)))


def test_from_hf_padded_bad(be):
    with raises(scree.ShapeError, "mask shape", "(3, 3)", "(3, 4)"):
        bridges.from_hf_padded(be(_rand(3, 4, 2)), be(np.ones((3, 3), dtype=np.int64)))


# ---- strided / odd-layout inputs: accepted, and the answer is right ------------------------------------------

def test_strided_inputs_give_correct_results(path):
    """Public functions accept non-contiguous values and offsets (they make them contiguous before
    the C++ call): no error, and bit-identical to the contiguous answer."""
    base = _rand(3, 5)
    values = path(base).T  # (5, 3), non-contiguous
    if isinstance(values, torch.Tensor):
        assert not values.is_contiguous()
    off_base = np.array([0, -9, 2, -9, 2, -9, 5], dtype=np.int64)
    offsets = path(off_base)[::2]   # [0, 2, 2, 5], strided
    a = scree.Array(values, offsets)
    assert a.max_length == 3 and a.num_sequences == 3
    dense = base.T
    padded, mask = a.to_padded(pad_value=-1.0)
    padded = np.asarray(padded.detach() if isinstance(padded, torch.Tensor) else padded)
    np.testing.assert_array_equal(padded[0, :2], dense[0:2])
    np.testing.assert_array_equal(padded[2, :3], dense[2:5])
    assert (padded[1] == -1.0).all() and (padded[0, 2] == -1.0).all()
    sums = a.sum()
    sums = np.asarray(sums.detach() if isinstance(sums, torch.Tensor) else sums)
    np.testing.assert_allclose(sums[0], dense[0:2].sum(0), rtol=1e-6)
    np.testing.assert_allclose(sums[2], dense[2:5].sum(0), rtol=1e-6)
    np.testing.assert_array_equal(sums[1], 0)
    # strided padded input and mask in from_padded
    big = _rand(3, 8, 2)
    pm = np.zeros((3, 8), dtype=bool)
    pm[0, :3] = pm[2, ::2] = True
    back = scree.from_padded(path(big)[:, ::2], mask=path(pm)[:, ::2])
    expected = np.concatenate([big[0, 0:6:2][pm[0, ::2][:3]], big[2, ::2]])
    got = back.values.detach() if isinstance(back.values, torch.Tensor) else back.values
    np.testing.assert_array_equal(np.asarray(got), expected)


# ---- the raw C++ boundary (scree._C) ------------------------------------------------------------------------

OFF = np.array([0, 2, 5], dtype=np.int64)


def _v(dtype=np.float32):
    return _rand(5, 3, dtype=dtype)


def _pad_args(**kw):
    args = dict(values=_v(), offsets=OFF, padded=np.empty((2, 3, 3), np.float32),
                mask=np.empty((2, 3), bool), pad_value=np.zeros(1, np.float32), left=False)
    args.update(kw)
    return args


RAW_CASES = {
    # validate_offsets
    "validate int16": (lambda: _C.validate_offsets(np.array([0, 2, 5], np.int16), 5),
                       scree.DTypeError, ["offsets", "int16"]),
    "validate uint64": (lambda: _C.validate_offsets(np.array([0, 2, 5], np.uint64), 5),
                        scree.DTypeError, ["offsets", "uint64"]),
    "validate float": (lambda: _C.validate_offsets(np.array([0.0, 5.0]), 5), scree.DTypeError, ["float64"]),
    "validate 2-D": (lambda: _C.validate_offsets(np.array([[0, 2, 5]]), 5), scree.ShapeError, ["1-D", "2-D"]),
    "validate empty": (lambda: _C.validate_offsets(np.array([], np.int64), 0), scree.RaggedError, ["empty"]),
    "validate negative total": (lambda: _C.validate_offsets(np.array([0]), -1), scree.RaggedError, ["total", "-1"]),
    "validate strided dip": (lambda: _C.validate_offsets(np.array([0, 9, 3, 9, 2, 9, 5])[::2], 5),
                             scree.RaggedError, ["offsets[2] = 2", "offsets[1] = 3"]),
    "validate torch int32 dip": (lambda: _C.validate_offsets(torch.tensor([0, 6, 5], dtype=torch.int32), 5),
                                 scree.RaggedError, ["offsets[2] = 5"]),
    # pad
    "pad padded dtype": (lambda: _C.pad(**_pad_args(padded=np.empty((2, 3, 3), np.float64))),
                         scree.DTypeError, ["padded", "float32", "float64"]),
    "pad pad_value dtype": (lambda: _C.pad(**_pad_args(pad_value=np.zeros(1, np.float64))),
                            scree.DTypeError, ["pad_value", "float64"]),
    "pad pad_value size": (lambda: _C.pad(**_pad_args(pad_value=np.zeros(2, np.float32))),
                           scree.ShapeError, ["pad_value", "one element"]),
    "pad too short": (lambda: _C.pad(**_pad_args(padded=np.empty((2, 2, 3), np.float32), mask=np.empty((2, 2), bool))),
                      scree.ShapeError, ["sequence 1", "length 3", "padded length 2"]),
    "pad wrong n": (lambda: _C.pad(**_pad_args(padded=np.empty((3, 3, 3), np.float32), mask=np.empty((3, 3), bool))),
                    scree.ShapeError, ["padded", "n = 2"]),
    "pad feature": (lambda: _C.pad(**_pad_args(padded=np.empty((2, 3, 4), np.float32))),
                    scree.ShapeError, ["feature shape"]),
    "pad mask shape": (lambda: _C.pad(**_pad_args(mask=np.empty((2, 4), bool))), scree.ShapeError, ["mask"]),
    "pad values rows": (lambda: _C.pad(**_pad_args(values=_v()[:4])), scree.RaggedError, ["offsets[-1]", "= 5", "total = 4"]),
    "pad int32 offsets": (lambda: _C.pad(**_pad_args(offsets=OFF.astype(np.int32))),
                          scree.DTypeError, ["offsets", "int64", "int32"]),
    "pad non-contiguous values": (lambda: _C.pad(**_pad_args(values=_rand(3, 5).T)),
                                  scree.ArgumentError, ["values", "C-contiguous"]),
    "pad non-contiguous padded": (lambda: _C.pad(**_pad_args(padded=np.empty((2, 3, 6), np.float32)[:, :, ::2])),
                                  scree.ArgumentError, ["padded", "C-contiguous"]),
    "pad torch non-contiguous": (lambda: _C.pad(torch.from_numpy(_rand(3, 5)).T, torch.from_numpy(OFF),
                                                torch.empty(2, 3, 3), None, torch.zeros(1), False),
                                 scree.ArgumentError, ["values", "C-contiguous"]),
    "pad torch bf16 vs f32 pad_value": (lambda: _C.pad(torch.from_numpy(_v()).bfloat16(), torch.from_numpy(OFF),
                                                       torch.empty(2, 3, 3, dtype=torch.bfloat16), None,
                                                       torch.zeros(1), False),
                                        scree.DTypeError, ["pad_value", "bfloat16"]),
    # unpad / mask kernels
    "unpad too long": (lambda: _C.unpad(np.empty((2, 2, 3), np.float32), OFF, np.empty((5, 3), np.float32), False),
                       scree.ShapeError, ["lengths[1] = 3", "padded length 2"]),
    "unpad dtype": (lambda: _C.unpad(np.empty((2, 3, 3), np.float64), OFF, np.empty((5, 3), np.float32), False),
                    scree.DTypeError, ["values", "padded"]),
    "mask_offsets 1-D": (lambda: _C.mask_offsets(np.ones(3, bool), np.empty(2, np.int64)),
                         scree.ShapeError, ["mask", "2-D"]),
    "mask_offsets float": (lambda: _C.mask_offsets(np.ones((2, 3), np.float32), np.empty(3, np.int64)),
                           scree.DTypeError, ["mask", "float32"]),
    "mask_offsets out rows": (lambda: _C.mask_offsets(np.ones((2, 3), bool), np.empty(2, np.int64)),
                              scree.ShapeError, ["out.shape[0] must be 3"]),
    "unpad_mask shapes": (lambda: _C.unpad_mask(np.empty((2, 4, 3), np.float32), np.ones((2, 3), bool),
                                                np.array([0, 3, 6]), np.empty((6, 3), np.float32)),
                          scree.ShapeError, ["(2,4,3)", "(2,3)"]),
    "unpad_mask rows": (lambda: _C.unpad_mask(np.empty((2, 3, 3), np.float32), np.ones((2, 3), bool),
                                              np.array([0, 3, 6]), np.empty((5, 3), np.float32)),
                        scree.RaggedError, ["offsets[-1]", "= 6", "total = 5"]),
    # segment_reduce
    "reduce median": (lambda: _C.segment_reduce(_v(), OFF, np.empty((2, 3), np.float32), "median"),
                      scree.ArgumentError, ["'median'"]),
    "reduce int mean": (lambda: _C.segment_reduce(np.arange(1, 6), OFF, np.empty((2,), np.int64), "mean"),
                        scree.DTypeError, ["mean", "int64"]),
    "reduce out dtype": (lambda: _C.segment_reduce(_v(), OFF, np.empty((2, 3), np.float64), "sum"),
                         scree.DTypeError, ["out", "float32", "float64"]),
    "reduce int sum out": (lambda: _C.segment_reduce(np.arange(1, 6, dtype=np.int32), OFF, np.empty((2,), np.int32), "sum"),
                           scree.DTypeError, ["out must be int64"]),
    "reduce int16": (lambda: _C.segment_reduce(np.arange(1, 6, dtype=np.int16), OFF, np.empty((2,), np.int16), "max"),
                     scree.DTypeError, ["int16"]),
    "reduce bool": (lambda: _C.segment_reduce(np.ones(5, bool), OFF, np.empty((2,), bool), "max"),
                    scree.DTypeError, ["bool"]),
    "reduce non-contiguous": (lambda: _C.segment_reduce(_rand(3, 5).T, OFF, np.empty((2, 3), np.float32), "sum"),
                              scree.ArgumentError, ["values", "C-contiguous"]),
    "reduce torch non-contiguous": (lambda: _C.segment_reduce(torch.from_numpy(_rand(3, 5)).T, torch.from_numpy(OFF),
                                                              torch.empty(2, 3), "sum"),
                                    scree.ArgumentError, ["values", "C-contiguous"]),
    "reduce out rows": (lambda: _C.segment_reduce(_v(), OFF, np.empty((3, 3), np.float32), "sum"),
                        scree.ShapeError, ["out.shape[0] must be 2", "got 3"]),
    "reduce 2-D offsets": (lambda: _C.segment_reduce(_v(), OFF[None], np.empty((2, 3), np.float32), "sum"),
                           scree.ShapeError, ["offsets", "1-D"]),
    "reduce empty offsets": (lambda: _C.segment_reduce(_v(), np.array([], np.int64), np.empty((0, 3), np.float32), "sum"),
                             scree.RaggedError, ["offsets", "empty"]),
    # offsets_from_lengths, pack, gather, index kernels
    "lengths int16": (lambda: _C.offsets_from_lengths(np.array([1, 2], np.int16), np.empty(3, np.int64)),
                      scree.DTypeError, ["lengths", "int16"]),
    "lengths out short": (lambda: _C.offsets_from_lengths(np.array([1, 2]), np.empty(2, np.int64)),
                          scree.ShapeError, ["out.shape[0] must be 3"]),
    "lengths out int32": (lambda: _C.offsets_from_lengths(np.array([1, 2]), np.empty(3, np.int32)),
                          scree.DTypeError, ["out must be int64"]),
    "lengths negative": (lambda: _C.offsets_from_lengths(np.array([1, 4, -2]), np.empty(4, np.int64)),
                         scree.RaggedError, ["lengths[2] = -2"]),
    "pack count": (lambda: _C.pack([_v()[:2]], OFF, np.empty((5, 3), np.float32)),
                   scree.ShapeError, ["1 sources", "2"]),
    "pack dtype": (lambda: _C.pack([_v()[:2], _v(np.float64)[2:]], OFF, np.empty((5, 3), np.float32)),
                   scree.DTypeError, ["sequence 1", "float64"]),
    "pack rows": (lambda: _C.pack([_v()[:2], _v()[2:4]], OFF, np.empty((5, 3), np.float32)),
                  scree.ShapeError, ["sequence 1", "must be 3", "got 2"]),
    "pack non-contiguous": (lambda: _C.pack([_v()[:2], np.asfortranarray(_v()[2:])], OFF, np.empty((5, 3), np.float32)),
                            scree.ArgumentError, ["sequence 1", "C-contiguous"]),
    "gather_offsets int32 indices": (lambda: _C.gather_offsets(OFF, np.array([0, 1], np.int32), np.empty(3, np.int64)),
                                     scree.DTypeError, ["indices", "int32"]),
    "gather mismatched out_offsets": (lambda: _C.gather(_v(), OFF, np.array([1, 0]), np.array([0, 2, 5]),
                                                        np.empty((5, 3), np.float32)),
                                      scree.ArgumentError, ["out_offsets", "at 0"]),
    "gather index out of range": (lambda: _C.gather(_v(), OFF, np.array([0, 2]), np.array([0, 2, 5]),
                                                    np.empty((5, 3), np.float32)),
                                  scree.ArgumentError, ["at 1"]),
    "positions float out": (lambda: _C.positions(OFF, np.empty(5, np.float32)), scree.DTypeError, ["positions", "float32"]),
    "positions out rows": (lambda: _C.positions(OFF, np.empty(4, np.int64)), scree.RaggedError, ["= 5", "total = 4"]),
    "positions 2-D out": (lambda: _C.positions(OFF, np.empty((5, 1), np.int64)), scree.ShapeError, ["out", "1-D"]),
    "segment_ids int16 out": (lambda: _C.segment_ids(OFF, np.empty(5, np.int16)), scree.DTypeError, ["segment_ids", "int16"]),
}


@pytest.mark.parametrize("case", list(RAW_CASES), ids=list(RAW_CASES))
def test_raw_c_boundary_raises_typed_errors(case):
    fn, exc, fragments = RAW_CASES[case]
    with raises(exc, *fragments):
        fn()


def test_raw_c_outputs_untouched_on_error():
    """A rejected call must not have written into its output (checks run before the kernel)."""
    padded = np.full((2, 2, 3), 7.0, np.float32)
    mask = np.ones((2, 2), bool)
    with raises(scree.ShapeError, "sequence 1"):
        _C.pad(_v(), OFF, padded, mask, np.zeros(1, np.float32), False)
    assert (padded == 7.0).all() and mask.all()


@pytest.mark.parametrize("bad", [[0, 2, 5], "abc", None, 3])
def test_raw_c_non_array_is_a_type_error(bad):
    """Non-array arguments are rejected by nanobind's signature check: a TypeError, not a crash."""
    with pytest.raises(TypeError, match="validate_offsets"):
        _C.validate_offsets(bad, 5)


def test_raw_c_read_only_output_is_a_type_error():
    ro = np.empty((2, 3, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="pad"):
        _C.pad(**_pad_args(padded=ro))


def test_raw_c_accepts_what_the_front_end_sends():
    """Sanity of the raw boundary: the same kernels succeed on well-formed input (so the errors above
    are about the input, not a broken binding)."""
    assert _C.validate_offsets(np.array([0, 9, 2, 9, 2, 9, 5])[::2], 5) == (3, 5, 3)
    assert _C.validate_offsets(torch.tensor([0, 2, 5], dtype=torch.int32), 5) == (2, 5, 3)
    v = _v()
    out = np.empty((2, 3), np.float32)
    _C.segment_reduce(v, OFF, out, "max")
    np.testing.assert_array_equal(out, np.stack([v[:2].max(0), v[2:].max(0)]))


@pytest.mark.parametrize("op", ["to_padded", "positions", "segment_ids", "sum", "gather"])
def test_unvalidated_bad_offsets_raise_not_crash(op):
    # validate=False skips the Python-side check; the compiled kernels re-check host offsets
    # before touching memory, so a lying layout is a RaggedError, never a segfault.
    arr = scree.Array(_rand(5, 2), np.array([0, 100000, 5]), validate=False)
    call = {"to_padded": arr.to_padded, "positions": arr.positions,
            "segment_ids": arr.segment_ids, "sum": arr.sum, "gather": lambda: arr[[1, 0]]}[op]
    with raises(scree.RaggedError, "non-decreasing"):
        call()

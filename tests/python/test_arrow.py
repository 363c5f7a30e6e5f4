"""scree.bridges.from_arrow / to_arrow (issue 16): list and large_list arrays, int32 offsets kept
int32, sliced arrays rebased without copying values (same buffer address), ChunkedArrays, the null
policy, fixed-size lists as feature axes, typed errors for what does not map, zero-copy into NumPy
and torch, and round trips."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from scree.bridges import from_arrow, to_arrow

pa = pytest.importorskip("pyarrow")

ROWS = [[1.0, 2.0], [3.0], [], [4.0, 5.0, 6.0], [7.0]]


def _address(child) -> int:
    """Address of the first element of an Arrow primitive child (buffer + slice offset)."""
    return child.buffers()[1].address + child.offset * child.type.byte_width


def _check(arr: scree.Array, rows: list) -> None:
    got = [np.asarray(s).tolist() for s in arr]
    assert got == rows


def test_list_int32_offsets_zero_copy():
    la = pa.array(ROWS, type=pa.list_(pa.float32()))
    a = from_arrow(la)
    _check(a, ROWS)
    assert a.offsets.dtype == np.int32 and a.values.dtype == np.float32
    assert a.values.ctypes.data == _address(la.values)  # the Arrow buffer itself
    assert a.max_length == 3


def test_large_list_int64():
    a = from_arrow(pa.array(ROWS, type=pa.large_list(pa.int64())))
    assert a.offsets.dtype == np.int64 and a.values.dtype == np.int64
    _check(a, [[int(x) for x in r] for r in ROWS])


def test_sliced_array_rebased_without_copying_values():
    la = pa.array(ROWS, type=pa.list_(pa.float64()))
    part = la.slice(1, 3)  # rows [3.0], [], [4.0, 5.0, 6.0]: offsets start at 2
    a = from_arrow(part)
    _check(a, ROWS[1:4])
    np.testing.assert_array_equal(a.host_offsets, [0, 1, 1, 4])
    assert a.values.ctypes.data == _address(la.values) + 2 * 8  # a view from the third value on


def test_chunked_array_is_combined():
    chunked = pa.chunked_array([pa.array(ROWS[:2], type=pa.list_(pa.float32())),
                                pa.array(ROWS[2:], type=pa.list_(pa.float32()))])
    _check(from_arrow(chunked), ROWS)
    table = pa.table({"x": pa.array(ROWS, type=pa.list_(pa.float32()))})
    _check(from_arrow(table["x"]), ROWS)  # one chunk: no copy


def test_null_rows():
    la = pa.array([[1.0], None, [2.0, 3.0], None], type=pa.list_(pa.float64()))
    with pytest.raises(scree.ArgumentError, match="row 1 .* is null"):
        from_arrow(la)
    a = from_arrow(la, nulls="empty")
    _check(a, [[1.0], [], [2.0, 3.0], []])
    with pytest.raises(scree.ArgumentError, match="nulls must be"):
        from_arrow(la, nulls="skip")
    # a null slot whose offsets span values (legal in Arrow): those values are dropped
    offsets = pa.array([0, 1, 3, 4], type=pa.int32())
    spanning = pa.ListArray.from_arrays(offsets, pa.array([1.0, 9.0, 9.0, 2.0]), mask=pa.array([False, True, False]))
    _check(from_arrow(spanning, nulls="empty"), [[1.0], [], [2.0]])


def test_null_elements_are_an_error():
    with pytest.raises(scree.ArgumentError, match="null elements .* position 1"):
        from_arrow(pa.array([[1.0, None], [2.0]], type=pa.list_(pa.float64())))


def test_fixed_size_lists_become_feature_axes():
    rows = [[[1, 2, 3], [4, 5, 6]], [], [[7, 8, 9]]]
    a = from_arrow(pa.array(rows, type=pa.list_(pa.list_(pa.int32(), 3))))
    assert a.values.shape == (3, 3) and a.feature_shape == (3,)
    _check(a, rows)
    nested = pa.array([[[[1, 2], [3, 4]]]], type=pa.list_(pa.list_(pa.list_(pa.int16(), 2), 2)))
    assert from_arrow(nested).values.shape == (1, 2, 2)


def test_what_does_not_map():
    with pytest.raises(scree.UnsupportedError, match="ragged axis"):
        from_arrow(pa.array([[[1], [2, 3]]], type=pa.list_(pa.list_(pa.int32()))))
    with pytest.raises(scree.DTypeError, match="string"):
        from_arrow(pa.array([["a", "b"]]))
    with pytest.raises(scree.UnsupportedError, match="list or large_list"):
        from_arrow(pa.array([1, 2, 3]))
    with pytest.raises(scree.BackendError, match="pyarrow Array"):
        from_arrow([[1.0, 2.0]])


def test_bool_values_are_unpacked():
    a = from_arrow(pa.array([[True, False], [True]], type=pa.list_(pa.bool_())))
    assert a.values.dtype == np.bool_
    _check(a, [[True, False], [True]])


def test_into_torch_zero_copy():
    torch = pytest.importorskip("torch")
    la = pa.array(ROWS, type=pa.list_(pa.float32()))
    a = from_arrow(la, backend="torch")
    assert isinstance(a.values, torch.Tensor) and a.values.data_ptr() == _address(la.values)
    _check(a.to("numpy"), ROWS)


@pytest.mark.parametrize("offsets_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("feature", [(), (3,), (2, 0)])
def test_round_trip(offsets_dtype, feature, rng):
    lengths = [3, 0, 1, 4]
    values = rng.standard_normal((sum(lengths), *feature)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(offsets_dtype)
    a = scree.from_offsets(values, offsets)
    t = to_arrow(a)
    assert (pa.types.is_list if offsets_dtype == np.int32 else pa.types.is_large_list)(t.type)
    back = from_arrow(t)
    np.testing.assert_array_equal(back.values, values)
    np.testing.assert_array_equal(back.offsets, offsets)
    assert back.offsets.dtype == offsets_dtype
    if not feature:
        assert _address(t.values) == values.ctypes.data  # to_arrow is zero-copy from NumPy


def test_to_arrow_from_torch():
    torch = pytest.importorskip("torch")
    a = scree.from_lengths(torch.arange(6, dtype=torch.float64).reshape(6, 1), [2, 4])
    assert to_arrow(a).to_pylist() == [[[0.0], [1.0]], [[2.0], [3.0], [4.0], [5.0]]]

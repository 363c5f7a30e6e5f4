"""scree.bridges.from_awkward / to_awkward (issue 16): one level of raggedness over numeric
content, zero-copy both ways (same buffers), regular inner dimensions as feature axes, sliced and
non-contiguous (ListArray) layouts, and typed errors for deeper lists, missing values and records."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from scree.bridges import from_awkward, to_awkward

ak = pytest.importorskip("awkward")

ROWS = [[1.0, 2.0], [], [3.0], [4.0, 5.0, 6.0]]


def _rows(arr: scree.Array) -> list:
    return [np.asarray(s).tolist() for s in arr]


def test_from_awkward_zero_copy():
    x = ak.Array(ROWS)
    a = from_awkward(x)
    assert _rows(a) == ROWS
    assert np.shares_memory(a.values, np.asarray(x.layout.content.data))
    assert np.shares_memory(a.offsets, np.asarray(x.layout.offsets.data))


def test_sliced_and_list_array_layouts():
    x = ak.Array(ROWS)
    assert _rows(from_awkward(x[1:])) == ROWS[1:]
    assert _rows(from_awkward(x[[3, 0]])) == [ROWS[3], ROWS[0]]  # a ListArray (starts / stops): made contiguous


def test_regular_dimensions_become_features():
    x = ak.to_regular(ak.Array([[[1, 2, 3], [4, 5, 6]], [], [[7, 8, 9]]]), axis=2)
    a = from_awkward(x)
    assert a.feature_shape == (3,) and _rows(a) == [[[1, 2, 3], [4, 5, 6]], [], [[7, 8, 9]]]
    inner = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(np.array([0, 1, 3])),
                                                 ak.contents.NumpyArray(np.arange(12.0).reshape(3, 2, 2))))
    assert from_awkward(inner).feature_shape == (2, 2)


def test_what_does_not_map():
    with pytest.raises(scree.UnsupportedError, match="more than one variable-length axis"):
        from_awkward(ak.Array([[[1], [2, 3]], []]))
    with pytest.raises(scree.ArgumentError, match="missing"):
        from_awkward(ak.Array([[1.0, None], [2.0]]))
    with pytest.raises(scree.ArgumentError, match="missing"):
        from_awkward(ak.Array([[1.0], None]))
    with pytest.raises(scree.DTypeError):
        from_awkward(ak.Array([[{"x": 1}], []]))
    with pytest.raises(scree.UnsupportedError, match="var"):
        from_awkward(ak.Array([1.0, 2.0]))
    with pytest.raises(scree.BackendError):
        from_awkward([[1.0]])


@pytest.mark.parametrize("offsets_dtype", [np.int32, np.int64])
def test_round_trip_zero_copy(offsets_dtype, rng):
    values = rng.standard_normal((7, 3)).astype(np.float32)
    a = scree.from_offsets(values, np.array([0, 2, 2, 7], offsets_dtype))
    x = to_awkward(a)
    assert str(x.type).endswith("var * 3 * float32") or "var" in str(x.type)
    assert np.shares_memory(np.asarray(x.layout.content.data), values)
    back = from_awkward(x)
    np.testing.assert_array_equal(back.values, values)
    np.testing.assert_array_equal(back.offsets, a.offsets)
    assert back.offsets.dtype == offsets_dtype

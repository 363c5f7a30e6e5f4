"""awkward arrays <-> scree.Array for one level of raggedness over numeric content: an awkward
`var * T` array is a ListOffsetArray (offsets + content), the Array's own layout, so both ways are
zero-copy on the CPU (NumPy views of the same buffers); regular inner dimensions (`var * 3 * T`,
or a NumPy content with an inner shape) become feature axes. Anything deeper or of another kind
(lists of lists, records, unions, options, strings) is a typed error. awkward is imported inside
the functions."""

from __future__ import annotations

from typing import Any

import numpy as np

from scree._array import Array
from scree._errors import ArgumentError, BackendError, DTypeError, UnsupportedError
from scree.bridges._optional import optional_module

__all__ = ["from_awkward", "to_awkward"]


def _ak() -> Any:
    return optional_module("awkward", "the awkward bridge")


def _content(ak: Any, node: Any) -> np.ndarray:
    """The numeric content under the ragged axis as NumPy (rows, *feature), zero-copy where the
    content is a NumPy buffer (regular dimensions sliced to their length)."""
    feature: list[int] = []
    while isinstance(node, ak.contents.RegularArray):
        feature.append(node.size)
        node = node.content[: node.length * node.size] if node.size else node.content
    if isinstance(node, (ak.contents.ListOffsetArray, ak.contents.ListArray)):
        raise UnsupportedError("the awkward array has more than one variable-length axis; scree.Array has one")
    if not isinstance(node, ak.contents.NumpyArray):
        kind = type(node).__name__
        if isinstance(node, (ak.contents.IndexedOptionArray, ak.contents.ByteMaskedArray,
                             ak.contents.BitMaskedArray, ak.contents.UnmaskedArray)):
            raise ArgumentError(f"the awkward array holds missing values ({kind}) inside its lists; scree values cannot")
        raise DTypeError(f"awkward {kind} content (records, unions, strings, ...) cannot become scree values")
    data = np.asarray(node.data)
    if data.dtype.kind not in "biuf":
        raise DTypeError(f"awkward content of dtype {data.dtype} cannot become scree values")
    rows = len(data) // max(int(np.prod(feature)), 1) if feature else len(data)
    return data.reshape((rows, *feature, *data.shape[1:])) if feature else data


def from_awkward(array: Any) -> Array:
    """Array over an awkward array of type `n * var * T` (T numeric, possibly under regular
    dimensions): zero-copy. A ListArray (starts / stops not contiguous) is made contiguous first
    (a copy); lists that do not start at content position 0 are rebased (n + 1 offsets copied)."""
    ak = _ak()
    if not isinstance(array, ak.Array):
        raise BackendError(f"from_awkward takes an awkward Array, got {type(array).__module__}."
                           f"{type(array).__qualname__}")
    layout = array.layout
    if isinstance(layout, ak.contents.ListArray):
        layout = layout.to_ListOffsetArray64(True)
    if isinstance(layout, (ak.contents.IndexedOptionArray, ak.contents.ByteMaskedArray, ak.contents.BitMaskedArray,
                           ak.contents.UnmaskedArray)):
        raise ArgumentError("the awkward array has missing (None) rows; drop them (ak.drop_none) or fill them first")
    if not isinstance(layout, ak.contents.ListOffsetArray):
        raise UnsupportedError(f"from_awkward needs an `n * var * T` array, got {array.type}")
    offsets = np.asarray(layout.offsets.data)
    if offsets.dtype == np.uint32:
        offsets = offsets.astype(np.int64)
    start, stop = int(offsets[0]), int(offsets[-1])
    content = layout.content
    if start or stop < content.length:
        content = content[start:stop]
        offsets = offsets - offsets.dtype.type(start)
    return Array(_content(ak, content), offsets)


def to_awkward(arr: Array) -> Any:
    """An awkward array `n * var * feature... * T` over arr's values and offsets (zero-copy from
    NumPy; other backends and devices are brought to NumPy first)."""
    ak = _ak()
    host = arr if arr.backend == "numpy" else arr.to("numpy")
    offsets = np.ascontiguousarray(host.offsets)
    index = ak.index.Index32(offsets) if offsets.dtype == np.int32 else ak.index.Index64(offsets.astype(np.int64))
    return ak.Array(ak.contents.ListOffsetArray(index, ak.contents.NumpyArray(np.ascontiguousarray(host.values))))

"""Apache Arrow list arrays <-> scree.Array. A `list<T>` column is exactly values + offsets, so the
bridge is zero-copy both ways for numeric values without nulls: the Array's values are a NumPy
view of the Arrow child buffer (and torch / JAX views of that through DLPack), its offsets the
Arrow offsets (int32 for ListArray, kept as int32; int64 for LargeListArray). pyarrow is imported
inside the functions, so `import scree` stays free of it.

What maps and what does not:

* `list<numeric>` and `large_list<numeric>`: feature shape (); `list<fixed_size_list<k>>` (nested
  fixed-size lists too): feature shape (k, ...). Lists of lists, strings or structs: an error.
* A sliced array (offsets not starting at 0): the offsets are rebased (a copy of n + 1 integers),
  the values stay a view of the child buffer.
* A ChunkedArray (a column of a Table or a HF dataset): its chunks combined, one copy of the
  values (unless it has a single chunk).
* Null rows: `nulls="error"` (default) raises scree.ArgumentError naming the first null row;
  `nulls="empty"` makes them empty sequences. Nulls inside the lists are an error either way.
* bool values are bit-packed in Arrow: converted (a copy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from scree._array import Array
from scree._errors import ArgumentError, BackendError, DTypeError, UnsupportedError
from scree.bridges._optional import optional_module

__all__ = ["from_arrow", "to_arrow"]


def _pa() -> Any:
    return optional_module("pyarrow", "the Arrow bridge")


def _values(pa: Any, child: Any) -> np.ndarray:
    """A list array's (already sliced) child as NumPy (total, *feature): zero-copy for numeric
    types without nulls, fixed-size lists becoming trailing axes."""
    rows, feature = len(child), []
    while pa.types.is_fixed_size_list(child.type):
        if child.null_count:
            raise ArgumentError("the fixed-size lists inside the rows hold nulls; scree values cannot")
        feature.append(child.type.list_size)
        child = child.flatten()
    t = child.type
    views = [getattr(pa.types, name, lambda _: False) for name in ("is_list_view", "is_large_list_view")]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or any(is_view(t) for is_view in views):
        raise UnsupportedError(f"nested variable-length lists ({t}) have more than one ragged axis; scree.Array has "
                               "one: flatten the inner lists first")
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise DTypeError(f"Arrow lists of {t} cannot become scree values (numeric and bool element types only)")
    if child.null_count:
        first = int(np.flatnonzero(np.asarray(child.is_null()))[0])
        raise ArgumentError(f"the lists hold null elements (the first at flat position {first}); scree values cannot")
    flat = child.to_numpy(zero_copy_only=not pa.types.is_boolean(t))
    return flat.reshape((rows, *feature))


def from_arrow(array: Any, nulls: str = "error", backend: str = "numpy", device: str | None = None) -> Array:
    """Array over an Arrow `list` / `large_list` array or a ChunkedArray of them (see the module
    doc for what maps). backend / device: where the Array lives ('numpy' by default; 'torch' and
    'jax' through DLPack, zero-copy on the CPU where the buffers allow)."""
    pa = _pa()
    if nulls not in ("error", "empty"):
        raise ArgumentError(f"nulls must be 'error' or 'empty', got {nulls!r}")
    if isinstance(array, pa.ChunkedArray):
        array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    if not isinstance(array, pa.Array):
        raise BackendError(f"from_arrow takes a pyarrow Array or ChunkedArray, got {type(array).__qualname__}")
    t = array.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise UnsupportedError(f"from_arrow needs a list or large_list array, got {t}")
    offsets = array.offsets.to_numpy(zero_copy_only=True)  # n + 1, sliced with the array
    start, stop = int(offsets[0]), int(offsets[-1])
    child = array.values.slice(start, stop - start)
    if start:
        offsets = offsets - offsets.dtype.type(start)  # rebased: n + 1 integers, the values stay a view
    if array.null_count:
        valid = np.asarray(array.is_valid())
        if nulls == "error":
            raise ArgumentError(f"row {int(np.flatnonzero(~valid)[0])} of the Arrow array is null "
                                "(from_arrow(..., nulls='empty') makes null rows empty sequences)")
        lengths = np.where(valid, np.diff(offsets), 0)
        if (lengths != np.diff(offsets)).any():  # null slots that span values: keep only the valid rows' values
            keep = np.repeat(valid, np.diff(offsets))
            child = child.filter(pa.array(keep))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(offsets.dtype)
    arr = Array(_values(pa, child), offsets)
    return arr if backend == "numpy" and device is None else arr.to(backend, device)


def to_arrow(arr: Array) -> Any:
    """An Arrow list array with arr's sequences: `list` with int32 offsets where arr's offsets are
    int32, `large_list` otherwise; feature axes become nested fixed-size lists. Zero-copy from
    NumPy values (numeric, contiguous); other backends and devices are brought to NumPy first (a
    device copy is a sync); bool values are bit-packed (a copy). Round trips through from_arrow."""
    pa = _pa()
    host = arr if arr.backend == "numpy" else arr.to("numpy")
    values = np.ascontiguousarray(host.values)
    offsets = np.ascontiguousarray(host.offsets)
    if values.dtype == np.bool_:
        child = pa.array(values.reshape(-1))
    else:
        try:
            ptype = pa.from_numpy_dtype(values.dtype)
        except (pa.ArrowNotImplementedError, TypeError):
            raise DTypeError(f"{values.dtype} values have no Arrow type") from None
        child = pa.Array.from_buffers(ptype, values.size, [None, pa.py_buffer(values.reshape(-1))])
    for axis in range(values.ndim - 1, 0, -1):  # innermost feature axis first; a size of 0 is fine
        count = int(np.prod(values.shape[:axis]))
        child = pa.Array.from_buffers(pa.list_(child.type, int(values.shape[axis])), count, [None], children=[child])
    if offsets.dtype != np.int32:
        offsets = offsets.astype(np.int64, copy=False)
    large = offsets.dtype == np.int64
    itype = pa.int64() if large else pa.int32()
    arrow_offsets = pa.Array.from_buffers(itype, len(offsets), [None, pa.py_buffer(offsets)])  # zero-copy
    return (pa.LargeListArray if large else pa.ListArray).from_arrays(arrow_offsets, child)

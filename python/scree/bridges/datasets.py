"""HuggingFace `datasets` columns -> scree.Array, through Arrow (scree.bridges.arrow): a column of
token lists is an Arrow list column already, so no Python lists, NumPy objects or padding are made
on the way. `datasets` is imported by the caller, never here."""

from __future__ import annotations

from typing import Any

from scree._array import Array
from scree._errors import ArgumentError, BackendError
from scree.bridges.arrow import from_arrow

__all__ = ["from_datasets"]


def from_datasets(data: Any, column: str, nulls: str = "error", backend: str = "numpy",
                  device: str | None = None) -> Array:
    """The Array of one list column of a `datasets.Dataset`, or of a batch in Arrow form (a
    pyarrow Table or RecordBatch, e.g. `ds.with_format("arrow")[i:j]` or what
    `ds.map(fn, batched=True)` hands `fn` under that format).

    A whole Dataset whose rows were not re-indexed (no select / shuffle / filter) is read straight
    from its Arrow table: zero-copy for one chunk, one copy to combine several. After a re-index
    its rows are gathered first (`with_format("arrow")`, one copy). nulls, backend and device as
    in scree.bridges.from_arrow."""
    if hasattr(data, "with_format") and hasattr(data, "column_names"):  # a datasets.Dataset
        if column not in data.column_names:
            raise ArgumentError(f"the dataset has no column {column!r} (columns: {', '.join(data.column_names)})")
        if getattr(data, "_indices", None) is None:  # no re-index: the Arrow table as it is stored
            col = data.data.column(column)  # (datasets' Table wraps a pyarrow Table: a ChunkedArray)
        else:
            col = data.with_format("arrow")[column]
        return from_arrow(col, nulls=nulls, backend=backend, device=device)
    if hasattr(data, "column") and hasattr(data, "schema"):  # a pyarrow Table or RecordBatch
        if column not in data.schema.names:
            raise ArgumentError(f"the batch has no column {column!r} (columns: {', '.join(data.schema.names)})")
        return from_arrow(data.column(column), nulls=nulls, backend=backend, device=device)
    raise BackendError(f"from_datasets takes a datasets.Dataset or a pyarrow Table / RecordBatch, got "
                       f"{type(data).__module__}.{type(data).__qualname__} (a batch in Python or NumPy format: "
                       "ds.with_format('arrow'))")

"""scree.bridges.from_datasets (issue 16): a real `datasets.Dataset` built here, its token column
read straight from the Arrow table (zero-copy, the same buffer), after select/shuffle through the
re-indexed rows, and batches in Arrow form; typed errors for a missing column and for batches in
Python format."""

from __future__ import annotations

import numpy as np
import pytest

import scree
from scree.bridges import from_datasets

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")


@pytest.fixture
def ds(rng):
    rows = [rng.integers(0, 32000, n).tolist() for n in (5, 0, 1, 9, 3, 7)]
    return datasets.Dataset.from_dict({"input_ids": rows, "label": list(range(len(rows)))}), rows


def _rows(arr: scree.Array) -> list:
    return [np.asarray(s).tolist() for s in arr]


def test_whole_dataset_zero_copy(ds):
    d, rows = ds
    a = from_datasets(d, "input_ids")
    child = d.data.column("input_ids").chunk(0).values
    assert _rows(a) == rows and a.values.dtype == np.dtype(child.type.to_pandas_dtype())  # (datasets picks int32 or int64)
    assert a.values.ctypes.data == child.buffers()[1].address + child.offset * child.type.byte_width  # its own buffer


def test_reindexed_dataset(ds):
    d, rows = ds
    picked = d.select([3, 0, 5])
    assert _rows(from_datasets(picked, "input_ids")) == [rows[3], rows[0], rows[5]]
    shuffled = d.shuffle(seed=1)
    assert _rows(from_datasets(shuffled, "input_ids")) == [rows[i] for i in shuffled["label"]]


def test_arrow_batches(ds):
    d, rows = ds
    batch = d.with_format("arrow")[2:5]
    assert isinstance(batch, pa.Table)
    assert _rows(from_datasets(batch, "input_ids")) == rows[2:5]
    seen = []

    def collect(b):
        seen.append(_rows(from_datasets(b, "input_ids")))
        return b

    d.with_format("arrow").map(collect, batched=True, batch_size=4)
    assert [r for part in seen for r in part] == rows


def test_errors(ds):
    d, _ = ds
    with pytest.raises(scree.ArgumentError, match="no column 'tokens'"):
        from_datasets(d, "tokens")
    with pytest.raises(scree.ArgumentError, match="no column 'tokens'"):
        from_datasets(d.with_format("arrow")[:2], "tokens")
    with pytest.raises(scree.BackendError, match="with_format"):
        from_datasets(d[:2], "input_ids")  # a dict of Python lists

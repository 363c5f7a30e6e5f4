"""PackCollator: a DataLoader collate_fn that packs a batch of variable-length examples into
scree.Arrays (no padding), or, for HuggingFace models, into the packed-batch dict that
`DataCollatorWithFlattening` makes (input_ids and position_ids of shape (1, total), the flash-attention
keyword arguments cu_seq_lens_q/k and max_length_q/k, labels with -100 at each sequence start).
Frameworks are imported only for the hf=True output (torch) or when the examples are theirs."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from scree._array import Array
from scree._construct import pack
from scree._errors import ArgumentError, ShapeError

__all__ = ["PackCollator"]


def _natives(fields: list[Any]) -> list[Any]:
    """A batch's fields as native arrays: lists and tuples (HF datasets rows) through NumPy, an
    empty one taking the dtype of the others (np.asarray([]) would be float64)."""
    out = [np.asarray(x) if isinstance(x, (list, tuple)) else x for x in fields]
    listed = [a for x, a in zip(fields, out) if isinstance(x, (list, tuple)) and len(x)]
    if listed:
        dt = listed[0].dtype
        out = [a.astype(dt) if isinstance(x, (list, tuple)) and not len(x) else a for x, a in zip(fields, out)]
    return out


class PackCollator:
    """collate_fn(examples) -> packed Arrays.

    examples: native arrays (one sequence each) -> one Array; dicts -> a dict of Arrays, one per
    key in `keys` (default: every field whose value is a list, tuple or array), all over the same
    layout (a ShapeError names the first key whose lengths differ). hf=True: the dict a HF model
    takes for a packed batch, as torch tensors (input_ids (1, total), position_ids (1, total),
    cu_seq_lens_q / cu_seq_lens_k int32, max_length_q / max_length_k, and labels: the packed
    `labels` field if the examples have one, else input_ids with -100 at each sequence's first
    token, as DataCollatorWithFlattening does)."""

    def __init__(self, keys: Sequence[str] | None = None, hf: bool = False):
        self.keys = list(keys) if keys is not None else None
        self.hf = bool(hf)

    def __call__(self, examples: Sequence[Any]) -> Any:
        examples = list(examples)
        if not examples:
            raise ArgumentError("PackCollator got an empty batch")
        if not isinstance(examples[0], dict):
            arr = pack(_natives(examples))
            return self._hf({"input_ids": arr}) if self.hf else arr
        keys = self.keys or [k for k, v in examples[0].items() if isinstance(v, (list, tuple)) or hasattr(v, "shape")]
        arrays: dict[str, Array] = {}
        for k in keys:
            if any(k not in e for e in examples):
                raise ArgumentError(f"example {next(i for i, e in enumerate(examples) if k not in e)} has no field {k!r}")
            arrays[k] = pack(_natives([e[k] for e in examples]))
        first = keys[0]
        for k in keys[1:]:
            if not np.array_equal(arrays[k].host_offsets, arrays[first].host_offsets):
                raise ShapeError(f"field {k!r} has other sequence lengths than {first!r} in this batch")
        return self._hf(arrays) if self.hf else arrays

    @staticmethod
    def _hf(arrays: dict[str, Array]) -> dict[str, Any]:
        import torch

        if "input_ids" not in arrays:
            raise ArgumentError("hf=True needs an 'input_ids' field")
        ids = arrays["input_ids"].to("torch")
        values = ids.values.to(torch.int64)
        starts = torch.as_tensor(ids.host_offsets[:-1][np.diff(ids.host_offsets) > 0])
        if "labels" in arrays:
            labels = arrays["labels"].to("torch").values.to(torch.int64)
        else:
            labels = values.clone()
            labels[starts] = -100  # no label for a sequence's first token (nothing before it to predict from)
        cu = ids.cu_seqlens()
        return {"input_ids": values[None], "position_ids": ids.positions()[None], "labels": labels[None],
                "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": ids.max_length,
                "max_length_k": ids.max_length}

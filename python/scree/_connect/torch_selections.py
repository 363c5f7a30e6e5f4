"""torch.compile support of scree's selections whose size depends on the offsets' values (gather,
sequence and token slices, truncate, filter: scree.kernels.reference.*_on_device): the two
primitives they end in, as torch custom ops whose fake implementations give the result an
unbacked size (`new_dynamic_size`). dynamo traces them with fullgraph=True and its default
settings, where torch.nonzero, or repeat_interleave without output_size, would break the graph
unless capture_dynamic_output_shape_ops is set. Run (eagerly or in the compiled graph) they are
the backend's eager forms. Installed into the torch backend namespace when scree first meets torch
(scree._connect)."""

from __future__ import annotations

import torch

from scree import _backends

_NS = _backends.get("torch")


@torch.library.custom_op("scree::rows_of_ranges", mutates_args=())
def rows_of_ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return _NS.eager_rows_of_ranges(starts, lengths)


@rows_of_ranges.register_fake
def _(starts, lengths):
    return starts.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.custom_op("scree::true_rows", mutates_args=())
def true_rows(mask: torch.Tensor) -> torch.Tensor:
    return _NS.eager_true_rows(mask)


@true_rows.register_fake
def _(mask):
    return mask.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)

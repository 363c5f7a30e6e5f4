"""HuggingFace padded batches: (hidden `(B, L, *feature)`, attention_mask (B, L)) <-> scree.Array.
Round trips are bit-exact for right and left padding: tokens are copied, never recomputed."""

from __future__ import annotations

from typing import Any

from scree._array import Array
from scree._backends import dtypes
from scree._construct import from_padded

__all__ = ["from_hf_padded", "to_hf_padded"]


def from_hf_padded(x: Any, attention_mask: Any) -> Array:
    """Array of the tokens of `x` where attention_mask is nonzero (left or right padding alike)."""
    return from_padded(x, mask=attention_mask)


def to_hf_padded(arr: Array, padding_side: str = "right", pad_value: Any = 0,
                 max_length: int | None = None) -> tuple[Any, Any]:
    """(x `(n, L, *feature)`, attention_mask (n, L) int64 of 0/1), as a HF tokenizer would pad."""
    ns, length = arr._ns, arr._layout.max_length if max_length is None else max_length
    if isinstance(length, int) and length >= 0:  # (unknown under jax.jit; bad values: to_padded says)
        # to_padded checks its own two arrays; the int64 mask is 8x its bool one (2^31 slots: 16 GiB).
        n, itemsize = arr.num_sequences, dtypes.ITEMSIZE[dtypes.checked_dtype(ns, arr.values)]
        dtypes.checked_size(ns, arr.values, [((n, length, *arr.feature_shape), itemsize), ((n, length), 1),
                                             ((n, length), 8)], f"max_length={length}")
    padded, mask = arr.to_padded(pad_value=pad_value, padding_side=padding_side, max_length=max_length)
    return padded, arr._ns.astype(mask, "int64")

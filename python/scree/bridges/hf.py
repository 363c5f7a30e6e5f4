"""HuggingFace padded batches: (hidden (B, L, *feature), attention_mask (B, L)) <-> scree.Array.
Round trips are bit-exact for right and left padding: tokens are copied, never recomputed."""

from __future__ import annotations

from typing import Any

from scree._array import Array
from scree._construct import from_padded

__all__ = ["from_hf_padded", "to_hf_padded"]


def from_hf_padded(x: Any, attention_mask: Any) -> Array:
    """Array of the tokens of `x` where attention_mask is nonzero (left or right padding alike)."""
    return from_padded(x, mask=attention_mask)


def to_hf_padded(arr: Array, padding_side: str = "right", pad_value: Any = 0,
                 max_length: int | None = None) -> tuple[Any, Any]:
    """(x (n, L, *feature), attention_mask (n, L) int64 of 0/1), as a HF tokenizer would pad."""
    padded, mask = arr.to_padded(pad_value=pad_value, padding_side=padding_side, max_length=max_length)
    return padded, arr._ns.astype(mask, "int64")

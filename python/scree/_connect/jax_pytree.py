"""scree.Array as a JAX pytree: children (values, offsets), no auxiliary data, registered when scree
first meets JAX (scree._connect registers this through scree._backends.on_load).

Nothing that depends on the offsets' values (host offsets, lengths, max_length) is static aux data,
so a jitted function compiles once per (total, n, feature shape, dtypes) and never once per offsets
value. The price: inside jit the Array knows only shapes. Per-token and per-sequence ops
(positions, segment_ids, lengths, cu_seqlens, sum/mean/max, with_values, map, concat_sequences,
the masked reference attention) work on traced offsets; ops whose output shape depends on the
lengths need the size given as a static Python int (to_padded's max_length, as FlashAttention's
max_seqlen) and ops that index sequences on the host (arr[i], iteration, slicing, gather) raise
scree.UnsupportedError there. After unflattening outside jit (jax.grad results, jax.tree.map) the
host bookkeeping is recomputed lazily from the offsets."""

from __future__ import annotations

from typing import Any, Sequence

import jax

from scree._array import Array


def _flatten_with_keys(arr: Array) -> tuple[tuple, None]:
    return ((jax.tree_util.GetAttrKey("values"), arr.values),
            (jax.tree_util.GetAttrKey("offsets"), arr.offsets)), None


def _flatten(arr: Array) -> tuple[tuple, None]:
    return (arr.values, arr.offsets), None


def _unflatten(aux: None, children: Sequence[Any]) -> Array:
    values, offsets = children
    return Array._unflattened(values, offsets)


try:
    jax.tree_util.register_pytree_with_keys(Array, _flatten_with_keys, _unflatten, _flatten)
except ValueError:  # already registered (module reloaded)
    pass

"""Combining Arrays: scree.cat (the sequences of several Arrays in one) and scree.concat_sequences
(sequence by sequence)."""

from __future__ import annotations

from typing import Sequence

from scree import _backends
from scree._array import Array
from scree._errors import ArgumentError, BackendError, DTypeError, ShapeError
from scree.kernels import layout, reference

__all__ = ["cat", "concat_sequences"]


def _checked(arrays: Sequence[Array], what: str, same_count: bool) -> tuple:
    """(backend namespace, list of Arrays) after the checks both functions share, each error
    naming the culprit arrays[i]."""
    arrs = list(arrays) if not isinstance(arrays, Array) else None
    if arrs is None:
        raise ArgumentError(f"{what} takes a list of Arrays, got a single Array")
    if not arrs:
        raise ArgumentError(f"{what} needs at least one Array")
    for i, a in enumerate(arrs):
        if not isinstance(a, Array):
            raise BackendError(f"arrays[{i}] must be a scree.Array, got {type(a).__module__}.{type(a).__qualname__}")
    ns = _backends.common(**{f"arrays[{i}]": a.values for i, a in enumerate(arrs)})
    first = arrs[0]
    for i, a in enumerate(arrs[1:], start=1):
        if same_count and a.num_sequences != first.num_sequences:
            raise ShapeError(f"arrays[{i}] has {a.num_sequences} sequences, arrays[0] has {first.num_sequences}")
        if a.feature_shape != first.feature_shape:
            raise ShapeError(f"arrays[{i}] has feature shape {a.feature_shape}, arrays[0] has {first.feature_shape}")
        if ns.dtype_name(a.values) != ns.dtype_name(first.values):
            raise DTypeError(f"arrays[{i}] has dtype {ns.dtype_name(a.values)}, "
                             f"arrays[0] has {ns.dtype_name(first.values)}")
    return ns, arrs


def cat(arrays: Sequence[Array]) -> Array:
    """The sequences of arrays[0], then those of arrays[1], ... as one Array (along the sequence
    axis: len(result) == sum of len(a)), as torch.cat of their lists of sequences. Values are
    concatenated (a copy, differentiable), offsets shifted on their own device (no sync). The
    same checks and errors as concat_sequences, except that the sequence counts may differ; the
    inverse is Array.split."""
    ns, arrs = _checked(arrays, "cat", same_count=False)
    return arrs[0] if len(arrs) == 1 else reference.cat(arrs)


def concat_sequences(arrays: Sequence[Array]) -> Array:
    """Per-sequence concatenation: sequence i of the result is ``arrays[0][i] ++ arrays[1][i] ++ ...``.

    This is how per-example pieces of different kinds become one packed batch, e.g. a multimodal
    model's text-token and image-patch embeddings interleaved per example (text, image, text, ...)
    without padding. Every Array needs the same number of sequences, backend, device, dtype and
    feature shape; sequences of length 0 are fine (an example without an image). The result is a
    new Array (a copy); the C++ pack kernel does it for host arrays, the reference (one scatter of
    all rows, differentiable, jit-able with JAX) elsewhere.

    Raises scree.ArgumentError for an empty list, scree.BackendError for a non-Array or mixed
    backends/devices, scree.ShapeError for differing sequence counts or feature shapes, and
    scree.DTypeError for differing dtypes, each naming the culprit ``arrays[i]``.
    """
    ns, arrs = _checked(arrays, "concat_sequences", same_count=True)
    first = arrs[0]
    if len(arrs) == 1:
        return first
    return layout.concat_sequences(ns, arrs)

"""scree's exception types. The C++ core raises these through its exception translator
(src/bindings/python.cpp looks them up here by name), so every bad input surfaces as a typed
`ValueError` or `TypeError` subclass that names the culprit."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = [
    "ScreeError",
    "RaggedError",
    "ShapeError",
    "DTypeError",
    "UnsupportedError",
    "ArgumentError",
    "BackendError",
    "DeviceError",
    "OutOfMemoryError",
    "framework_unsupported",
]


class ScreeError(Exception):
    """Base class of every error scree raises on purpose."""


class RaggedError(ScreeError, ValueError):
    """Offsets or lengths break the ragged-layout invariants (start at 0, non-decreasing, end at total)."""


class ShapeError(ScreeError, ValueError):
    """Shapes of arguments disagree (values vs offsets, q vs k, padded vs mask, ...)."""


class DTypeError(ScreeError, TypeError):
    """A wrong or mismatched element type."""


class UnsupportedError(ScreeError, ValueError):
    """A valid request this build or device cannot serve (e.g. a head dim without a kernel)."""


class ArgumentError(ScreeError, ValueError):
    """Any other bad argument value (out-of-range index, unknown option)."""


class BackendError(ScreeError, TypeError):
    """Arrays from different frameworks or devices mixed in one call, or an unknown array type."""


class DeviceError(ScreeError, RuntimeError):
    """The GPU runtime reported a failure (a kernel launch, an illegal address): not bad input,
    but surfaced as a Python exception instead of a crash."""


class OutOfMemoryError(ScreeError, MemoryError):
    """An array scree was asked to make does not fit the memory left (checked before allocating:
    MLX allocates lazily and dies with SIGSEGV when that fails, and Linux lets NumPy and torch
    overcommit, then kills the process when the pages are touched)."""


@contextmanager
def framework_unsupported(what: str) -> Iterator[None]:
    """Run framework ops, turning the framework's NotImplementedError (a dtype it has no kernel
    for, e.g. torch's bitwise_not or add on uint64) into an UnsupportedError naming `what`."""
    try:
        yield
    except NotImplementedError as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise UnsupportedError(f"{what}: the framework has no kernel for it ({first})") from e

"""What scree knows of element types and sizes, framework-free, written once for every backend and
boundary check: the dtype names scree serves (`checked_dtype`), whether a scalar fits a dtype
exactly (`scalar`, for pad values), and whether arrays of given shapes can exist on a framework
and fit the memory left, asked before anything allocates them (`checked_size`)."""

from __future__ import annotations

import math
import numbers
import os
import sys
from types import ModuleType
from typing import Any, Sequence

from scree._errors import ArgumentError, DTypeError, OutOfMemoryError

__all__ = ["NAMES", "ITEMSIZE", "checked_dtype", "scalar", "checked_size", "host_memory_available"]

# Element types scree serves: every one its layout kernels can move (they copy bytes) and that has
# one meaning in every framework that has it. Others (float8, int4, complex32, object, strings)
# raise DTypeError when an Array is built; ops refuse some of these per op (complex reductions,
# attention on non-floats) with a DTypeError naming the op.
ITEMSIZE = {
    "bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "uint32": 4, "float32": 4, "int64": 8, "uint64": 8, "float64": 8,
    "complex64": 8, "complex128": 16,
}
NAMES = frozenset(ITEMSIZE)


def checked_dtype(ns: ModuleType, x: Any, what: str = "values") -> str:
    """x's dtype name, one of NAMES; DTypeError naming `what` and the dtype otherwise."""
    name = ns.dtype_name(x)
    if name not in NAMES:
        raise DTypeError(f"{what} has dtype {name}, which scree does not support "
                         f"(supported: {', '.join(sorted(NAMES, key=lambda n: (ITEMSIZE[n], n)))})")
    return name


_INT_RANGE = {name: (0, 2 ** (8 * k) - 1) if name.startswith("u") else (-(2 ** (8 * k - 1)), 2 ** (8 * k - 1) - 1)
              for name, k in ITEMSIZE.items() if name.startswith(("int", "uint"))}
# A finite value rounds to infinity at or beyond (2 - 2**-p) * 2**emax, the midpoint between the
# largest finite value and 2**(emax + 1) (round to nearest even); p counts the implicit bit.
# float64's bound is past Python's floats: float() itself raises OverflowError there.
_FLOAT_OVERFLOW = {"float16": (2 - 2.0**-11) * 2.0**15, "bfloat16": (2 - 2.0**-8) * 2.0**127,
                   "float32": (2 - 2.0**-24) * 2.0**127, "float64": math.inf}


def _number(value: Any, what: str, dtype: str) -> Any:
    """value as a Python bool, int, float or complex (NumPy scalars and 0-d arrays of any framework
    through .item()); ArgumentError for anything else (None, strings, arrays of several values)."""
    if isinstance(value, (bool, int, float, complex)):
        return value
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # NumPy scalars, 0-d arrays
        value = value.item()
    elif isinstance(value, numbers.Number):  # Fraction, Decimal, ...
        value = complex(value) if not isinstance(value, numbers.Real) else \
            int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(value, (bool, int, float, complex)):
        return value
    raise ArgumentError(f"{what} must be a number to fill a {dtype} array, got {value!r}")


def scalar(value: Any, dtype: str, what: str = "pad_value") -> Any:
    """value as the Python scalar an array of `dtype` holds with the same value: a bool for bool
    (0 or 1 only), an int in the type's range for integers (a float only when integral: NaN, inf
    and 2.5 have no integer), a float or complex for floating types (rounded as the dtype rounds;
    never a finite value that overflows to infinity, never an imaginary part dropped).
    ArgumentError naming `what`, the value and the dtype otherwise: the frameworks' own casts wrap
    (300 -> 44 into uint8, NaN -> INT_MIN), drop, or raise their own errors."""
    v = _number(value, what, dtype)
    where = f"{what}={value!r} into a {dtype} array"
    if dtype == "bool":
        if not (v == 0 or v == 1):
            raise ArgumentError(f"{where}: only 0/False and 1/True are bool values")
        return bool(v)
    if isinstance(v, complex) and not dtype.startswith("complex"):
        if v.imag:
            raise ArgumentError(f"{where}: the imaginary part would be dropped")
        v = v.real
    if dtype in _INT_RANGE:
        if isinstance(v, float):
            if not v.is_integer():
                raise ArgumentError(f"{where}: not an integer")
            v = int(v)
        lo, hi = _INT_RANGE[dtype]
        if not lo <= v <= hi:
            raise ArgumentError(f"{where}: out of the range [{lo}, {hi}] (it would wrap)")
        return int(v)
    try:
        c = complex(v)
    except OverflowError:
        raise ArgumentError(f"{where}: overflows {dtype}") from None
    limit = _FLOAT_OVERFLOW["float32" if dtype == "complex64" else "float64" if dtype == "complex128" else dtype]
    if any(math.isfinite(p) and abs(p) >= limit for p in (c.real, c.imag)):
        raise ArgumentError(f"{where}: overflows {dtype} (it would become infinite)")
    return c if dtype.startswith("complex") else c.real


# Below this many bytes the memory left is not asked (reading it costs ~50 us; any machine
# running scree has this much).
_ASK_MEMORY_FROM = 1 << 28


def checked_size(ns: ModuleType, like: Any, arrays: Sequence[tuple[tuple[int, ...], int]], what: str) -> None:
    """Before allocating arrays of these (shape, itemsize) on ns like `like`: ArgumentError naming
    `what` when a shape cannot exist (an extent past ns.max_extent(), the framework's index type:
    int32 for MLX shapes and for JAX without jax_enable_x64; or a stride past the platform's
    address space), OutOfMemoryError when host memory (NumPy, torch CPU, JAX CPU, MLX's unified
    memory) cannot hold them all. Not while torch.compile traces (it cannot trace these host-side
    checks; the compiled graph's allocation raises the framework's own error)."""
    if ns.is_tracing():
        return
    limit = ns.max_extent()
    total = 0
    for shape, itemsize in arrays:
        if any(d > limit for d in shape):
            name = _DISPLAY.get(ns.name, ns.name)
            raise ArgumentError(f"{what} makes an array of shape {tuple(shape)}; {name} arrays take at most {limit} "
                                f"entries along an axis" + _extent_hint(ns, limit))
        # NumPy and torch refuse a shape whose strides overflow even when another axis is 0
        if math.prod(max(d, 1) for d in shape) * itemsize > sys.maxsize:
            raise ArgumentError(f"{what} makes an array of shape {tuple(shape)}: more bytes than this platform "
                                f"addresses ({sys.maxsize})")
        total += math.prod(shape) * itemsize
    if total >= _ASK_MEMORY_FROM and ns.host_readable(like):
        left = host_memory_available()
        if total > left:
            raise OutOfMemoryError(f"{what} needs {_gib(total)} for arrays of shapes "
                                   f"{', '.join(str(tuple(s)) for s, _ in arrays)}; this process can allocate "
                                   f"about {_gib(left)} more")


_DISPLAY = {"numpy": "NumPy", "jax": "JAX", "mlx": "MLX"}


def _extent_hint(ns: ModuleType, limit: int) -> str:
    if ns.name == "jax" and limit < sys.maxsize:
        return " without jax_enable_x64 (its int32 indices would wrap)"
    return ""


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def host_memory_available() -> int:
    """Bytes this process may still allocate on the host, as the OS tells: available memory plus
    free swap (Linux's MemAvailable; elsewhere the physical memory), and under an address-space
    limit (RLIMIT_AS) what is left of it. sys.maxsize where the OS tells nothing."""
    left = sys.maxsize
    info = _proc_kib("/proc/meminfo", ("MemAvailable:", "SwapFree:"))
    if info:
        left = sum(info) * 1024
    else:
        try:
            left = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return left
    if soft != resource.RLIM_INFINITY:
        used = _proc_kib("/proc/self/status", ("VmSize:",))
        left = min(left, soft - (used[0] * 1024 if used else 0))
    return max(left, 0)


def _proc_kib(path: str, keys: tuple[str, ...]) -> list[int]:
    """The kB values of `keys` in a /proc file ([] where it cannot be read, e.g. not Linux)."""
    try:
        with open(path) as f:
            found = {k: int(line.split()[1]) for line in f for k in keys if line.startswith(k)}
    except (OSError, ValueError, IndexError):
        return []
    return [found[k] for k in keys] if len(found) == len(keys) else []

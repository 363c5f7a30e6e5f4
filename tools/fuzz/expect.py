"""What a right answer looks like, and the comparison of an actual result with it.

An oracle (oracle_layout.py, oracle_attention.py) returns an Expect:
  answer  the call must return `value` (a typed scree error on it is reported as 'typed', with
          refused=True, so valid inputs that scree refuses stay visible);
  raise   no right answer exists: the call must raise a typed scree error;
  either  a typed error, or exactly `value`;
  any     a typed error or any answer (the spec leaves the answer open; only untyped errors,
          crashes and hangs count).
`value` is a tree of matchers: Nat (a native array), Arr (a scree.Array), Int (an int in a range),
Tup (a tuple or list of matchers), Free (anything)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tools.fuzz.prelude import dtype_of, fw_of, host

# dtype names whose values a comparison reads exactly
EXACT = ("int", "uint", "bool")


@dataclass
class Expect:
    kind: str                 # answer | raise | either | any
    value: Any = None
    why: str = ""             # the rule that decided (shown in reports)


@dataclass
class Nat:
    """A native array of framework `fw` (None: any), dtype in `dtypes` (empty: any), close to `data`.
    `atol`: per-element absolute tolerance (array or float; 0 = exact); `ref_lo`: the reference
    run in the input dtype (FlashAttention's rule: err <= rtol * err(ref_lo) + atol); `where`: a
    boolean array (broadcast to data) of the entries judged, None for all (attention leaves the
    sequences whose inputs hold NaN or inf unjudged)."""
    fw: str | None
    dtypes: tuple
    data: np.ndarray
    atol: Any = 0.0
    ref_lo: np.ndarray | None = None
    where: np.ndarray | None = None
    rtol: float = 2.0                 # the factor of FlashAttention's rule (2 outputs, 3 gradients)


@dataclass
class Arr:
    """A scree.Array: values matching `values` (a Nat) over `offsets`."""
    values: Nat
    offsets: list


@dataclass
class Int:
    lo: int
    hi: int


@dataclass
class Tup:
    items: list = field(default_factory=list)
    kind: type = tuple


class Free:
    """Anything (a part of the result the oracle does not judge)."""


def mismatch(exp: Any, got: Any, where: str = "out") -> str | None:
    """None when `got` matches `exp`, else a short reason naming the part that differs."""
    import scree

    if isinstance(exp, Free):
        return None
    if isinstance(exp, Int):
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            return f"{where}: expected an int, got {type(got).__name__}"
        return None if exp.lo <= int(got) <= exp.hi else f"{where}: {int(got)} not in [{exp.lo}, {exp.hi}]"
    if isinstance(exp, Tup):
        if not isinstance(got, exp.kind) or len(got) != len(exp.items):
            return f"{where}: expected a {exp.kind.__name__} of {len(exp.items)}, got {type(got).__name__}" + (
                f" of {len(got)}" if hasattr(got, "__len__") else "")
        for i, (e, g) in enumerate(zip(exp.items, got)):
            bad = mismatch(e, g, f"{where}[{i}]")
            if bad:
                return bad
        return None
    if isinstance(exp, Arr):
        if not isinstance(got, scree.Array):
            return f"{where}: expected a scree.Array, got {type(got).__name__}"
        off = host(got.offsets).astype(np.int64).tolist() if not isinstance(got.offsets, list) else got.offsets
        if off != list(exp.offsets):
            return f"{where}.offsets: {off} != {list(exp.offsets)}"
        return mismatch(exp.values, got.values, f"{where}.values")
    if isinstance(exp, Nat):
        return _native(exp, got, where)
    raise TypeError(f"unknown matcher {exp!r}")


def _native(exp: Nat, got: Any, where: str) -> str | None:
    fw = fw_of(got)
    if fw not in ("numpy", "torch", "jax", "mlx"):
        return f"{where}: expected a native array, got {type(got).__name__}"
    if exp.fw is not None and fw != exp.fw:
        return f"{where}: framework {fw}, expected {exp.fw}"
    dt = dtype_of(got)
    if exp.dtypes and dt not in exp.dtypes:
        return f"{where}: dtype {dt}, expected {'/'.join(exp.dtypes)}"
    shape = tuple(got.shape)
    if shape != tuple(exp.data.shape):
        return f"{where}: shape {shape}, expected {tuple(exp.data.shape)}"
    a = host(got)
    e = exp.data
    if e.size == 0:
        return None
    if dt.startswith(EXACT) and exp.ref_lo is None and np.all(np.asarray(exp.atol) == 0) and e.dtype.kind in "biu":
        if not np.array_equal(a, e):
            i = _first(a != e)
            return f"{where}: values differ at {i}: {a[i]!r} != {e[i]!r}"
        return None
    return _close(exp, a, e, where, dt)


def _first(mask: np.ndarray) -> tuple:
    idx = np.argwhere(np.asarray(mask))
    return tuple(int(i) for i in idx[0]) if len(idx) else ()


def _close(exp: Nat, a: np.ndarray, e: np.ndarray, where: str, dt: str) -> str | None:
    cplx = np.iscomplexobj(a) or np.iscomplexobj(e)
    a = a.astype(np.complex128 if cplx else np.float64)
    e = e.astype(np.complex128 if cplx else np.float64)
    fa, fe = np.isfinite(a), np.isfinite(e)
    lo_finite = np.isfinite(exp.ref_lo) if exp.ref_lo is not None else np.ones(e.shape, bool)
    judged = np.ones(e.shape, bool) if exp.where is None else np.broadcast_to(exp.where, e.shape)
    # Non-finite values must be met exactly (NaN where NaN, the same infinity), except where the
    # input-dtype reference itself overflowed although the fp64 one did not.
    same = (np.isnan(e) & np.isnan(a)) | (a == e)
    if dt in _FMAX and not cplx:  # a value beyond the result dtype's range rounds to infinity
        same |= (np.abs(e) > _FMAX[dt]) & (a == np.sign(e) * np.inf)
    bad = (~fe | ~fa) & ~same & ~(fe & ~lo_finite) & judged
    if bad.any():
        i = _first(bad)
        return f"{where}: non-finite mismatch at {i}: {a[i]} vs expected {e[i]}"
    both = fe & fa & lo_finite & judged
    err = np.abs(a - e)
    err = np.where(both, err, 0.0)
    atol = np.broadcast_to(np.asarray(exp.atol, dtype=np.float64), e.shape)
    if exp.ref_lo is not None:
        lo = exp.ref_lo.astype(a.dtype)
        base = np.abs(np.where(np.isfinite(lo) & both, lo - e, 0.0)).max(initial=0.0)
        ok = err.max(initial=0.0) <= exp.rtol * base + atol.max(initial=0.0)
        if not ok:
            i = _first(err == err.max())
            ratio = err.max() / max(exp.rtol * base + atol.max(initial=0.0), 1e-300)
            kind = "precision" if ratio < 10 else "max error"  # within 10x of the bound: a precision question
            return (f"{where}: {kind} {ratio:.1f}x the bound: error {err.max():.3g} at {i} ({a[i]} vs {e[i]}) > {exp.rtol:g} x reference error "
                    f"{base:.3g} + atol {atol.max():.3g}")
        return None
    bad = err > atol
    if bad.any():
        i = _first(bad)
        return f"{where}: values differ at {i}: {a[i]} vs expected {e[i]} (tolerance {atol[i]:.3g})"
    return None


_FMAX = {"float16": 65504.0, "bfloat16": 3.3895e38, "float32": 3.4028235e38}


def eps(dt: str) -> float:
    return {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52,
            "complex64": 2.0**-23, "complex128": 2.0**-52}.get(dt, 0.0)


"""Elementwise math on Arrays: Python operators, NumPy ufuncs (Array.__array_ufunc__) and torch
functions (Array.__torch_function__) applied to the values, the result keeping the Array's Layout
(its offsets, host copy, max_length and kernel plans are shared, never recomputed).

What an operand of an Array `a` (values (total, *feature), n sequences) may be:

* another Array over the same layout: the same Layout object (arrays made with with_values, map,
  or an operator from one batch), or equal offsets (compared on the host; where neither host copy
  exists, reading one is a device sync, the only one here; under jax.jit offsets cannot be
  compared and Arrays of equal n and total are taken to match). Different offsets: ShapeError
  naming both layouts.
* a Python number or a 0-d array: a scalar;
* a native array of lower rank than values: broadcast against the feature axes by NumPy rules
  (a bias (D,), a per-head scale (H, 1));
* a native array of the values' rank: its leading axis says what it is. total rows: one row per
  token; 1 row: broadcast; n rows: **one row per sequence**, repeated over that sequence's tokens
  (its trailing axes broadcast against the feature axes). Where n == total the token reading wins;
  `a.expand(x)` repeats per-sequence rows explicitly.

Matrix products (`a @ W`, `W @ a`) take their other operand as it is (a weight, not a
per-token operand); results whose first axis is not the token axis raise ShapeError. This module
knows nothing of the Array class beyond its fields: scree._array binds these functions as its
methods."""

from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np

from scree import _backends
from scree._errors import BackendError, ShapeError, UnsupportedError, framework_unsupported

__all__ = ["binary", "unary", "expand", "array_ufunc", "torch_function", "OPERATORS"]

_SCALARS = (bool, int, float, complex, np.generic)

# The binary operators an Array defines (reflected forms too, except comparisons, which Python
# reflects itself): name -> the operator on values.
OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "truediv": operator.truediv,
    "floordiv": operator.floordiv, "mod": operator.mod, "pow": operator.pow,
    "and": operator.and_, "or": operator.or_, "xor": operator.xor,
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "eq": operator.eq, "ne": operator.ne, "matmul": operator.matmul,
}


def _is_array(a: Any, x: Any) -> bool:
    return isinstance(x, type(a))


def _describe(arr: Any) -> str:
    h = arr._host_offsets_without_sync()
    lens = "" if h is None else f", lengths {np.diff(h)[:8].tolist()}{'...' if len(h) > 9 else ''}"
    return f"n={arr.num_sequences}, total={arr.total}{lens}"


def same_layout(a: Any, b: Any) -> None:
    """Nothing when b's sequences are a's (see the module doc), else ShapeError naming both."""
    la, lb = a._layout, b._layout
    if la is lb or la.offsets is lb.offsets:
        return
    if la.ns is not lb.ns:
        _backends.common(a=a.values, b=b.values)  # raises, naming both frameworks / devices
    if la.total != lb.total or a.num_sequences != b.num_sequences:
        raise ShapeError(f"elementwise operands are Arrays over different layouts ({_describe(a)} vs {_describe(b)})")
    ha, hb = a._known_host_offsets(), b._known_host_offsets()
    if ha is None or hb is None:  # traced under jax.jit: only the shapes are known
        return
    if not np.array_equal(ha, hb):
        raise ShapeError(f"elementwise operands are Arrays over different layouts ({_describe(a)} vs {_describe(b)})")


def _native(a: Any, x: Any, what: str) -> Any:
    """x as an array of a's framework (JAX takes NumPy arrays, as jnp functions do)."""
    ns = a._ns
    if ns.owns(x):
        return x
    adopted = ns.adopt(x)
    if adopted is not None:
        return adopted
    try:
        _backends.of(x)
    except BackendError:
        raise BackendError(f"{what} must be a number, a scree.Array or a {ns.name} array, "
                           f"got {type(x).__name__}") from None
    _backends.common(values=a.values, **{what: x})  # raises, naming both frameworks
    return x


def expand(a: Any, per_sequence: Any) -> Any:
    """per_sequence (n, *f) repeated over each sequence's tokens: (total, *pad, *f), with ones
    inserted after the token axis so that f broadcasts against the feature axes as NumPy aligns
    them (a per-sequence scalar of shape (n,) becomes (total, 1, ..., 1)). Differentiable."""
    x = _native(a, per_sequence, "per_sequence")
    ns = a._ns
    shape = tuple(ns.shape(x))
    if len(shape) < 1 or shape[0] != a.num_sequences:
        raise ShapeError(f"expand needs one row per sequence ({a.num_sequences}), got shape {shape}")
    rank = len(ns.shape(a.values))
    if len(shape) > rank:
        raise ShapeError(f"a per-sequence operand of shape {shape} has more axes than the values "
                         f"{tuple(ns.shape(a.values))}")
    rows = x[a.segment_ids()]
    if len(shape) < rank:
        rows = ns.reshape(rows, (a.total,) + (1,) * (rank - len(shape)) + shape[1:])
    return rows


def operand(a: Any, x: Any, what: str = "operand") -> Any:
    """x in a form that broadcasts against a's values token by token (the module doc's rules)."""
    if _is_array(a, x):
        same_layout(a, x)
        return x.values
    if isinstance(x, _SCALARS):
        return x
    x = _native(a, x, what)
    ns = a._ns
    shape, vshape = tuple(ns.shape(x)), tuple(ns.shape(a.values))
    if len(shape) < len(vshape):
        return x
    if len(shape) > len(vshape):
        raise ShapeError(f"{what} of shape {shape} has more axes than the Array's values {vshape}")
    lead = shape[0]
    if lead == a.total or lead == 1:
        return x
    if lead == a.num_sequences:
        return expand(a, x)
    raise ShapeError(f"{what} of shape {shape} against values {vshape}: its first axis must be the token count "
                     f"({a.total}), the number of sequences ({a.num_sequences}) or 1, or it must have fewer axes")


def wrap(a: Any, values: Any, what: str) -> Any:
    """values (a result computed from a's values) as an Array over a's Layout."""
    ns = a._ns
    if not ns.owns(values):
        raise BackendError(f"{what} returned {type(values).__name__}, not a {ns.name} array")
    shape = tuple(ns.shape(values))
    if len(shape) < 1 or shape[0] != a.total:
        raise ShapeError(f"{what} gave shape {shape}: the first axis must stay the token axis ({a.total} tokens)")
    return type(a)._over(values, a._layout)


def binary(a: Any, other: Any, name: str, reflected: bool = False) -> Any:
    """a <op> other (other <op> a when reflected), as an Array over a's layout."""
    fn = OPERATORS[name]
    if name == "matmul":
        y = other.values if _is_array(a, other) else other
        if _is_array(a, other):
            same_layout(a, other)
    else:
        y = operand(a, other)
    with framework_unsupported(f"the operator {name} on {a._ns.dtype_name(a.values)} values"):
        out = fn(y, a.values) if reflected else fn(a.values, y)
    return wrap(a, out, f"the operator {name}")


def unary(a: Any, fn: Callable[[Any], Any], name: str) -> Any:
    with framework_unsupported(f"{name} of {a._ns.dtype_name(a.values)} values"):
        return wrap(a, fn(a.values), name)


# ---- NumPy ------------------------------------------------------------------------------------
_UFUNC_OPERATORS = {"add": "add", "subtract": "sub", "multiply": "mul", "true_divide": "truediv",
                    "divide": "truediv", "floor_divide": "floordiv", "remainder": "mod", "power": "pow",
                    "bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor", "less": "lt",
                    "less_equal": "le", "greater": "gt", "greater_equal": "ge", "equal": "eq",
                    "not_equal": "ne", "matmul": "matmul"}


def array_ufunc(a: Any, ufunc: Any, method: str, inputs: tuple, kwargs: dict) -> Any:
    """NumPy's ufunc protocol: a ufunc called on Arrays of NumPy values runs on the values with
    the operands resolved as for operators. Reductions and accumulations over the token axis would
    mix sequences (use the per-sequence reductions), `out=` has no Array to write into: both raise
    UnsupportedError. Arrays of other frameworks meet NumPy only through operators (`np_x + a`
    runs a's framework's operator with np_x), anything else raises BackendError."""
    first = next(x for x in inputs if _is_array(a, x))
    if method != "__call__":
        raise UnsupportedError(f"np.{ufunc.__name__}.{method} over a scree.Array would mix its sequences; "
                               "use the per-sequence reductions (arr.sum(), arr.max(), ...) or arr.values")
    if "out" in kwargs:
        raise UnsupportedError(f"np.{ufunc.__name__}(..., out=...) on a scree.Array: Arrays are immutable, "
                               "the result is a new Array")
    if first._ns.name != "numpy":
        op = _UFUNC_OPERATORS.get(ufunc.__name__)
        if op is None or len(inputs) != 2 or kwargs:
            raise BackendError(f"np.{ufunc.__name__} on a {first._ns.name} scree.Array: use {first._ns.name}'s own "
                               "function on arr.values, or arr.map(fn)")
        if _is_array(a, inputs[0]):
            return binary(inputs[0], inputs[1], op)
        return binary(inputs[1], inputs[0], op, reflected=True)
    if ufunc.__name__ == "matmul":  # the other operand is a matrix, not a per-token operand
        args = [x.values if _is_array(first, x) else x for x in inputs]
        for x in inputs:
            if _is_array(first, x):
                same_layout(first, x)
    else:
        args = [x.values if x is first else operand(first, x, f"input {i} of np.{ufunc.__name__}")
                for i, x in enumerate(inputs)]
    out = ufunc(*args, **kwargs)
    if isinstance(out, tuple):
        return tuple(wrap(first, o, f"np.{ufunc.__name__}") for o in out)
    return wrap(first, out, f"np.{ufunc.__name__}")


# ---- torch ------------------------------------------------------------------------------------
def _arrays_in(x: Any, a_type: type, found: list) -> None:
    if isinstance(x, a_type):
        found.append(x)
    elif isinstance(x, (list, tuple)):
        for y in x:
            _arrays_in(y, a_type, found)
    elif isinstance(x, dict):
        for y in x.values():
            _arrays_in(y, a_type, found)


def _unwrapped(x: Any, a_type: type) -> Any:
    if isinstance(x, a_type):
        return x.values
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrapped(y, a_type) for y in x)
    if isinstance(x, dict):
        return {k: _unwrapped(y, a_type) for k, y in x.items()}
    return x


def torch_function(a_type: type, func: Any, args: tuple, kwargs: dict | None) -> Any:
    """torch's function protocol: torch.exp(a), F.gelu(a), F.linear(a, W), torch.where(m, a, b)
    run on the values of the Arrays among the arguments (all over one layout); other arguments pass
    as they are (torch broadcasts them; per-sequence operands: use operators or a.expand). Tensor
    results whose first axis is the token axis become Arrays over that layout (in tuples too);
    anything else (torch.sum(a), a shape) is returned as torch gives it. Autograd flows."""
    kwargs = kwargs or {}
    if len(args) == 2 and not kwargs and isinstance(args[1], a_type) and not isinstance(args[0], a_type):
        name = _TENSOR_OPERATORS.get(getattr(func, "__name__", ""))
        if name is not None:
            # tensor <op> Array reaches here (torch asks the Array before Python would): the
            # operator's reflected form, so the tensor is resolved as an operand (per-sequence rows
            # included)
            return binary(args[1], args[0], name, reflected=True)
    found: list = []
    _arrays_in(args, a_type, found)
    _arrays_in(kwargs, a_type, found)
    first = found[0]
    if first._ns.name != "torch":
        raise BackendError(f"{getattr(func, '__name__', func)} is a torch function; this scree.Array holds "
                           f"{first._ns.name} values")
    for other in found[1:]:
        same_layout(first, other)
    out = func(*_unwrapped(args, a_type), **_unwrapped(kwargs, a_type))
    return _rewrapped(first, out)


# What torch hands over for `t <op> x` differs by operator and version (the dunder of Tensor or
# TensorBase, or the method it calls: t / x arrives as TensorBase.div), so functions are matched by
# name (a string comparison torch.compile can trace; comparing the function objects it cannot).
# torch.add(t, arr) etc. match too, with the same meaning.
_TENSOR_OPERATORS = {
    **{f"__{name}__": name for name in OPERATORS}, **{name: name for name in OPERATORS},
    "div": "truediv", "true_divide": "truediv", "floor_divide": "floordiv", "remainder": "mod",
    "bitwise_and": "and", "bitwise_or": "or", "bitwise_xor": "xor",
}


def _rewrapped(a: Any, out: Any) -> Any:
    ns = a._ns
    if ns.owns(out):
        shape = tuple(ns.shape(out))
        return type(a)._over(out, a._layout) if len(shape) >= 1 and shape[0] == a.total else out
    if isinstance(out, (list, tuple)):
        items = [_rewrapped(a, o) for o in out]
        if hasattr(out, "_fields"):  # a namedtuple
            return type(out)(*items)
        return type(out)(items)  # list, tuple, torch.return_types (a structseq takes a sequence)
    return out

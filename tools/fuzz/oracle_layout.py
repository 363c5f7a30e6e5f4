"""The oracle of the layout entry points (constructors, Array methods, bridges): what a right
outcome is, decided from the recipe and host snapshots of the inputs taken before the call.

The semantics are scree.kernels.reference's (read from python/scree/kernels/reference.py and the
docstrings of python/scree/_array.py and _construct.py), re-implemented here in plain NumPy on the
host copies: running the reference itself on NumPy would share the NumPy backend's code with the
call under test, so a bug there (e.g. a complex sum) could not show. Rules that the docs leave
open are 'either'/'any' (see expect.py), never guesses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tools.fuzz.expect import Arr, Expect, Int, Nat, Tup, eps
from tools.fuzz.generate import NEW_OPS
from tools.fuzz.prelude import FRAMEWORKS

ORDINARY = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool", "complex64")
NARROW = {"int64": "int32", "float64": "float32", "uint64": "uint32", "complex128": "complex64"}  # JAX, no x64
CHECKED_ELEMENTS = 1 << 26  # larger results are not compared (any answer, or a typed error)
MAX_ELEMENTS = 1 << 34      # larger results do not fit a worker (8 GiB): only a typed error is right


@dataclass
class Snap:
    """One setup variable as the oracle sees it: framework, dtype name, shape, host copy (or the
    plain Python value for lists, tuples, scalars)."""
    fw: str
    dtype: str
    shape: tuple
    h: Any


@dataclass
class Built:
    """How building an Array spec must go: status ok | either | bad | unchecked (validate=False
    over bad offsets: no answer exists for what reads the layout), with the host values, their
    framework and dtype, the effective offsets and the max_length bound a caller claimed."""
    status: str
    why: str = ""
    x: Any = None
    fw: str = ""
    dtype: str = ""
    offs: list | None = None
    bound: int | None = None

    @property
    def longest(self) -> int:
        return max((b - a for a, b in zip(self.offs, self.offs[1:])), default=0)


_RANK = {"ok": 0, "either": 1, "unchecked": 2, "bad": 3}


def _worse(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    return a if _RANK[a[0]] >= _RANK[b[0]] else b


def int_dtypes(dt: str, fw: str) -> tuple:
    """Names an int64 result may have: JAX without x64 has no 64-bit ints."""
    return (dt, "int32") if fw == "jax" and dt == "int64" else (dt,)


def _layout_ok(offs: list, total: int) -> str:
    if len(offs) < 1:
        return "offsets have no entries"
    if offs[0] != 0:
        return "offsets[0] != 0"
    if any(b < a for a, b in zip(offs, offs[1:])):
        return "offsets decrease"
    if offs[-1] != total:
        return "offsets[-1] != total"
    return ""


def built(spec: dict, snap: dict, name: str) -> Built:
    """What building Array `name` (spec from generate.array) must give."""
    xs = snap[f"{name}_x"]
    st: tuple[str, str] = ("ok", "")
    if len(xs.shape) < 1:
        return Built("bad", "0-d values")
    total = xs.shape[0]
    how = spec["how"]
    b = Built("ok", x=xs.h, fw=xs.fw, dtype=xs.dtype)
    if how == "pack":
        odd = spec.get("odd")
        n = len(spec["layout"]) - 1
        if n < 1:
            return Built("bad", "pack of no sequences")
        if odd and not (odd[1] == xs.dtype or odd[1] == xs.fw):
            if n == 1 and odd[1] not in ("none", "scalar", "list"):
                return Built("unchecked", f"pack of one sequence made {odd[1]}")  # consistent, other data
            return Built("bad", f"pack with a spoiled sequence ({odd[1]})")
        b.offs = list(spec["layout"])
        return b
    shared = spec.get("layout_of")
    o = snap.get(f"{name}_o") or snap.get(f"{shared}_o")
    raw = o.h
    if isinstance(raw, (list, tuple)):
        if how == "from_cu_seqlens":
            st = ("either", "cu_seqlens given as a Python sequence")
        data = [int(v) for v in raw]
    else:
        if o.fw != xs.fw:
            st = ("either", f"offsets/lengths from {o.fw}, values from {xs.fw}")
        if raw.ndim != 1:
            return Built("bad", f"{raw.ndim}-D offsets/lengths")
        if how == "from_lengths":
            if o.dtype.startswith(("float", "complex", "bool")):
                return Built("bad", f"{o.dtype} lengths")
        elif o.dtype not in ("int32", "int64"):
            return Built("bad", f"{o.dtype} offsets")
        data = [int(v) for v in raw.tolist()]
    if how == "from_lengths":
        if any(v < 0 for v in data):
            return Built("bad", "negative length")
        offs = [0]
        for v in data:
            offs.append(offs[-1] + v)
        if offs[-1] != total:
            return Built("bad", "sum(lengths) != total")
    else:
        offs = data
    b.offs = offs
    bad = _layout_ok(offs, total)
    if bad:
        if spec["validate"]:
            return Built("bad", bad)
        st = _worse(st, ("unchecked", f"validate=False over bad offsets ({bad})"))
    m = spec.get("max_length", None)
    if spec["how"] in ("Array", "from_cu_seqlens") and m is not None and not bad:  # (from_offsets has none)
        if isinstance(m, bool) or not isinstance(m, (int, float)):
            st = _worse(st, ("bad", f"max_length={m!r}") if isinstance(m, str) else ("either", f"max_length={m!r}"))
        elif m < b.longest:
            st = _worse(st, ("bad" if spec["validate"] else "unchecked", f"max_length {m} < longest"))
        elif isinstance(m, float):
            st = _worse(st, ("either", f"float max_length {m}"))
        else:
            b.bound = int(m)
    b.status, b.why = st
    return b


def _np_dt(name: str) -> Any:
    return np.float32 if name == "bfloat16" else np.dtype(name)  # host copies widen bfloat16


def _segments(b: Built) -> list:
    return [b.x[a:c] for a, c in zip(b.offs, b.offs[1:])]


def _values_nat(b: Built, rows: np.ndarray, dtypes: tuple | None = None) -> Nat:
    return Nat(b.fw, dtypes or (b.dtype,), rows)


def array_answer(b: Built, rows: Any = None, offs: list | None = None) -> Arr:
    """The Array `b` describes (rows default to all values)."""
    return Arr(_values_nat(b, b.x if rows is None else rows), b.offs if offs is None else offs)


def gather_answer(b: Built, idx: list[int]) -> Arr:
    segs = _segments(b)
    pieces = [segs[i] for i in idx]
    rows = np.concatenate(pieces) if pieces else b.x[:0]
    offs = [0]
    for p in pieces:
        offs.append(offs[-1] + len(p))
    return array_answer(b, rows, offs)


# ---- per-sequence reductions ---------------------------------------------------------------------

def _kind(dt: str) -> str:
    if dt == "bool":
        return "bool"
    if dt.startswith(("int", "uint")):
        return "int"
    if dt.startswith("complex"):
        return "complex"
    return "float"


def reduction(b: Built, op: str) -> Expect:
    segs, dt, fw = _segments(b), b.dtype, b.fw
    feat = b.x.shape[1:]
    kind = _kind(dt)
    if op == "mean" and kind in ("int", "bool"):
        return Expect("raise", why="mean of integers (DTypeError documented)")
    if kind == "complex":  # (sum and mean would be meaningful; scree refuses all three, documented)
        return Expect("raise", why=f"{op} of complex values (DTypeError documented)")
    if kind in ("int", "bool") and op == "sum":
        exact = [np.sum(s.astype(object), axis=0) if len(s) else np.zeros(feat, object) for s in segs]
        data = np.array(exact, dtype=object).reshape(len(segs), *feat)
        lim = 2**31 if fw == "jax" else 2**63
        if data.size and (np.max(data) >= lim or np.min(data) < -lim):
            return Expect("any", why="integer sum overflows the result type")
        e = Nat(fw, int_dtypes("int64", fw), data.astype(np.int64))
        return Expect("either" if kind == "bool" else "answer", e, "sum of integers -> int64")
    if kind in ("int", "bool"):  # max
        low = False if kind == "bool" else np.iinfo(np.dtype(dt)).min
        # The dtype named up front: uint64 maxima mixed with Python ints would make a float64 array,
        # whose 2**64 - 1 rounds to 2**64 and wraps to 0 on the way back.
        target = np.dtype(dt) if kind == "int" else np.dtype(bool)
        data = np.array([s.max(axis=0) if len(s) else np.full(feat, low, dtype=target) for s in segs],
                        dtype=target).reshape(len(segs), *feat)
        e = Nat(fw, (dt,), data)
        return Expect("either" if kind == "bool" else "answer", e, "max of integers, empty -> lowest")
    wide = np.complex128 if kind == "complex" else np.float64
    with np.errstate(all="ignore"):
        out, tol = [], []
        for s in segs:
            s = s.astype(wide)
            if op == "max":
                out.append(s.max(axis=0) if len(s) else np.full(feat, -np.inf))
                tol.append(np.zeros(feat))
                continue
            tot = s.sum(axis=0) if len(s) else np.zeros(feat, wide)
            mag = np.abs(s).sum(axis=0) if len(s) else np.zeros(feat)
            n = max(len(s), 1)
            # a naive sum in the input dtype is within n * eps * sum|x|; rounding the result adds eps * |result|
            t = (n + 2) * eps(dt) * mag + eps(dt) * np.abs(tot) + 1e-300
            if op == "mean":
                tot, t = (tot / len(s), t / n) if len(s) else (np.full(feat, np.nan, wide), np.zeros(feat))
            out.append(tot)
            tol.append(t)
        data = np.array(out, dtype=wide).reshape(len(segs), *feat)
        atol = np.array(tol).reshape(len(segs), *feat)
        # overflow of the result type: the cast of the exact answer, so inf where it does not fit
        cast = data.astype(np.complex64 if dt == "complex64" else np.float32) if dt in ("float16", "bfloat16", "float32", "complex64") else data
        if dt == "float16":
            cast = data.astype(np.float16)
        over = np.isfinite(data) & ~np.isfinite(cast)
    if over.any():
        return Expect("any", why="the result overflows its dtype")
    why = {"sum": "per-sequence sum, same dtype", "mean": "per-sequence mean, empty -> NaN",
           "max": "per-sequence max, NaN propagates, empty -> -inf"}[op]
    return Expect("either" if kind == "complex" else "answer", Nat(fw, (dt,), data, atol), why)


# ---- entry points --------------------------------------------------------------------------------

# Judged for crashes, hangs and untyped errors only (generate.NEW_OPS, plus the token slicing).
ANY_ANSWER = (*NEW_OPS, "slice_tokens", "truncate")

def expect(recipe: dict, snap: dict) -> Expect:
    entry = recipe["entry"]
    if entry == "concat_sequences":
        return _concat(recipe, snap)
    if entry in ("from_padded", "bridges.from_hf_padded"):
        return _from_padded(recipe, snap)
    if entry == "bridges.cu_seqlens_from_lengths":
        return _cu_from_lengths(recipe, snap)
    if entry == "bridges.from_position_ids":
        return _position_ids(recipe, snap)
    if entry == "bridges.from_torch_nested":
        return _from_nested(recipe, snap)
    b = built(recipe["a"], snap, "a")
    if b.status == "bad":
        return Expect("raise", why=b.why)
    if b.status == "unchecked":  # README: "unspecified values, never a crash"
        return Expect("any", why=b.why)
    e = _method(entry, recipe, b, snap)
    if b.status == "either" and e.kind == "answer":
        e = Expect("either", e.value, b.why)
    return e


def _method(entry: str, recipe: dict, b: Built, snap: dict) -> Expect:
    args, fw, dt = recipe.get("args", {}), b.fw, b.dtype
    offs, n = b.offs, len(b.offs) - 1
    if entry in ("Array", "from_offsets", "from_lengths", "from_cu_seqlens", "pack"):
        return Expect("answer", array_answer(b), "values over the given layout")
    if entry in ("sum", "mean", "max"):
        return reduction(b, entry)
    if entry in ANY_ANSWER:
        return Expect("any", why=f"{entry}: values checked by the unit tests against scree.kernels.reference")
    if entry in ("positions", "segment_ids"):
        want = args.get("dtype", "int64")
        ids = [i for i in range(n) for _ in range(offs[i + 1] - offs[i])]
        data = np.array(ids if entry == "segment_ids" else
                        [t - offs[i] for t, i in zip(range(offs[-1]), ids)], dtype=np.int64)
        if want not in ("int32", "int64"):
            return Expect("either", Nat(fw, (), data), f"dtype={want!r}")
        return Expect("answer", Nat(fw, int_dtypes(want, fw), data), f"{entry}, {want}")
    if entry == "lengths":
        return Expect("answer", Nat(fw, int_dtypes("int64", fw), np.diff(np.array(offs, np.int64))), "diff(offsets)")
    if entry == "max_length":
        return Expect("answer", Int(b.longest, b.longest if b.bound is None else b.bound), "longest, or the given bound")
    if entry == "cu_seqlens":
        return Expect("answer", Nat(fw, ("int32",), np.array(offs, np.int64)), "offsets as int32")
    if entry == "bridges.to_cu_seqlens":
        return Expect("answer", Tup([Nat(fw, ("int32",), np.array(offs, np.int64)),
                                     Int(b.longest, b.longest if b.bound is None else b.bound)]), "(cu_seqlens, max)")
    if entry in ("to_padded", "bridges.to_hf_padded"):
        return _to_padded(b, args, entry == "bridges.to_hf_padded")
    if entry == "getitem":
        return _getitem(b, args["index"])
    if entry == "unpack":
        return Expect("answer", Tup([Nat(fw, (dt,), s) for s in _segments(b)], list), "list of sequences")
    if entry == "with_values":
        return _with_values(b, snap["new"])
    if entry == "to":
        return _to(b, args)
    if entry == "bridges.to_torch_nested":
        if fw != "torch" and dt not in ORDINARY:
            return Expect("any", why=f"{dt} to torch")
        return Expect("answer", Tup([Nat("torch", (), b.x), Nat("torch", ("int64",), np.array(offs))]),
                      "nested tensor over the same values and offsets")
    raise KeyError(entry)


def _to_padded(b: Built, args: dict, hf: bool) -> Expect:
    side = args.get("padding_side", "right")
    if side not in ("right", "left"):
        return Expect("raise", why=f"padding_side={side!r}")
    m = args.get("max_length", None)
    if m is not None and (isinstance(m, bool) or not isinstance(m, int)):
        return Expect("any", why=f"max_length={m!r}")
    if m is not None and m < b.longest:
        return Expect("raise", why=f"max_length {m} < longest {b.longest}")
    L = m if m is not None else (b.bound if b.bound is not None else b.longest)
    n, feat = len(b.offs) - 1, b.x.shape[1:]
    size = max(n * L * int(np.prod(feat, dtype=np.int64)), n * L)
    if n and (size > MAX_ELEMENTS or L > MAX_ELEMENTS):
        return Expect("raise", why=f"padded to length {L}")
    if size > CHECKED_ELEMENTS or L > CHECKED_ELEMENTS:
        return Expect("any", why=f"padded to length {L} (too big to compare)")
    pad = args.get("pad_value", 0)
    kind = _kind(b.dtype)
    # Array.to_padded's rule: the pad must hold its value in the dtype (floats round, never to inf)
    if isinstance(pad, (str, bytes, type(None))):
        return Expect("raise", why=f"pad_value={pad!r}")
    if not isinstance(pad, (int, float, complex, np.number)):
        return Expect("any", why=f"pad_value={pad!r}")
    if isinstance(pad, complex) and kind != "complex":
        if pad.imag:
            return Expect("raise", why=f"pad_value={pad!r} into {b.dtype} (imaginary part)")
        pad = pad.real
    if kind == "int":
        info = np.iinfo(np.dtype(b.dtype))
        if isinstance(pad, float) and not math.isfinite(pad):
            return Expect("raise", why=f"pad_value={pad!r} into {b.dtype}")
        if not (info.min <= pad <= info.max):
            return Expect("raise", why=f"pad_value={pad!r} out of {b.dtype}'s range")
        if isinstance(pad, float) and not pad.is_integer():
            return Expect("raise", why=f"fractional pad_value into {b.dtype}")
    if kind == "bool" and pad not in (0, 1):
        return Expect("raise", why=f"pad_value={pad!r} into bool")
    if kind in ("float", "complex") and _overflows(pad, b.dtype):
        return Expect("raise", why=f"pad_value={pad!r} overflows {b.dtype}")
    with np.errstate(all="ignore"):
        padv = np.array(pad).astype(b.x.dtype)
    padded = np.full((n, L, *feat), padv, dtype=b.x.dtype)
    mask = np.zeros((n, L), bool)
    for i, s in enumerate(_segments(b)):
        start = L - len(s) if side == "left" else 0
        padded[i, start:start + len(s)] = s
        mask[i, start:start + len(s)] = True
    atol = 0.0
    if b.dtype in ("float16", "bfloat16"):  # a pad value rounds to the dtype
        atol = np.where(mask.reshape(n, L, *([1] * len(feat))), 0.0, abs(float(pad)) * eps(b.dtype) if math.isfinite(float(pad)) else 0.0)
        atol = np.broadcast_to(atol, padded.shape)
    mask_nat = Nat(b.fw, int_dtypes("int64", b.fw) if hf else ("bool",), mask.astype(np.int64) if hf else mask)
    return Expect("answer", Tup([Nat(b.fw, (b.dtype,), padded, atol), mask_nat]), f"padded to {L}, {side}")


def _overflows(pad: Any, dtype: str) -> bool:
    """Whether a finite pad (or a part of a complex one) becomes infinite in `dtype` (NumPy's and
    ml_dtypes' own casts; a Python int past float64 too)."""
    parts = (pad.real, pad.imag) if isinstance(pad, complex) else (pad,)
    target = {"complex64": np.float32, "complex128": np.float64}.get(dtype) or \
        (__import__("ml_dtypes").bfloat16 if dtype == "bfloat16" else np.dtype(dtype))
    for p in parts:
        try:
            f = float(p)
        except OverflowError:
            return True
        with np.errstate(all="ignore"):
            if math.isfinite(f) and not np.isfinite(np.array(f).astype(target).astype(np.float64)):
                return True
    return False


def _getitem(b: Built, idx: list) -> Expect:
    n, kind = len(b.offs) - 1, idx[0]
    segs = _segments(b)
    if kind in ("int", "np_int", "array0d"):
        i = idx[1]
        if not -n <= i < n:
            return Expect("raise", why="sequence index out of range (IndexError documented)")
        return Expect("answer", Nat(b.fw, (b.dtype,), segs[i]), "arr[i] is sequence i")
    if kind == "bool":
        return Expect("raise", why="a bool index")
    if kind == "slice":
        start, stop, step = idx[1:]
        if step == 0:
            return Expect("raise", why="slice step 0")
        return Expect("answer", gather_answer(b, list(range(n))[slice(start, stop, step)]), "arr[a:b:c]")
    if kind == "none":
        return Expect("raise", why="arr[None]")
    if kind == "mask":
        if len(idx[1]) != n:
            return Expect("raise", why="mask of the wrong length")
        return Expect("answer", gather_answer(b, [i for i, m in enumerate(idx[1]) if m]), "boolean mask")
    flat = np.array(idx[1]).reshape(-1).tolist()
    if any(isinstance(v, float) for v in flat):
        return Expect("raise", why="float sequence indices")
    if any(not -n <= v < n for v in flat):
        return Expect("raise", why="index out of range (IndexError documented)")
    picks = [v % n for v in flat] if n else []
    exact = kind in ("list", "fw_index") and not (flat and isinstance(idx[1][0], list))
    return Expect("answer" if exact else "either", gather_answer(b, picks), f"gather {kind}")


def _with_values(b: Built, snapn: Snap) -> Expect:
    if len(snapn.shape) < 1 or snapn.shape[0] != b.x.shape[0]:
        return Expect("raise", why="with_values: wrong number of rows")
    if snapn.fw != b.fw:
        if b.fw == "jax" and snapn.fw == "numpy":
            narrow = NARROW.get(snapn.dtype, snapn.dtype)
            return Expect("either", Arr(Nat("jax", (narrow,), snapn.h.astype(_np_dt(narrow))), b.offs),
                          "JAX adopts NumPy values (narrowing 64-bit types)")
        return Expect("raise", why=f"with_values: {snapn.fw} values for a {b.fw} Array")
    return Expect("answer", Arr(Nat(b.fw, (snapn.dtype,), snapn.h), b.offs), "same layout, new values")


def _to(b: Built, args: dict) -> Expect:
    target = args["backend"]
    if target is None:
        target = b.fw
    if target not in FRAMEWORKS:
        return Expect("raise", why=f"backend {target!r}")
    dev = args.get("device", None)
    if dev == "meta" and target == "torch":
        return Expect("any", why="torch's meta device (no data to compare)")
    if dev not in (None, "cpu"):
        return Expect("raise", why=f"device {dev!r} (no GPU here)")
    if target == "mlx" and b.dtype == "complex128":
        return Expect("raise", why="MLX has no complex128 (DTypeError, never a silent complex64)")
    if target == "numpy" and b.dtype == "bfloat16" and b.fw != "numpy":
        return Expect("raise", why="bfloat16 to NumPy (DTypeError documented)")
    dts, data = (b.dtype,), b.x
    if target == "jax" and b.dtype in NARROW:  # JAX without x64 narrows 64-bit types, as documented
        if b.dtype in ("int64", "uint64") and b.x.size:
            info = np.iinfo(NARROW[b.dtype])
            if b.x.min() < info.min or b.x.max() > info.max:
                return Expect("raise", why=f"{b.dtype} values that would wrap in {NARROW[b.dtype]} (JAX without x64)")
        dts, data = (NARROW[b.dtype],), b.x.astype(NARROW[b.dtype])
    return Expect("answer", Arr(Nat(target, dts, data), b.offs), f"same values on {target}")


def _concat(recipe: dict, snap: dict) -> Expect:
    names = sorted(k for k in recipe if k.startswith("a") and k[1:].isdigit())
    bs = [built(recipe[k], snap, k) for k in names]
    args = recipe.get("args", {})
    if args.get("defect") in ("notarray", "single", "emptylist"):
        return Expect("raise", why=f"concat_sequences: {args['defect']}")
    worst = max(bs, key=lambda b: _RANK[b.status])
    if worst.status == "bad":
        return Expect("raise", why=worst.why)
    if worst.status == "unchecked":
        return Expect("any", why=worst.why)
    first = bs[0]
    for b in bs[1:]:
        if len(b.offs) != len(first.offs):
            return Expect("raise", why="different sequence counts")
        if b.fw != first.fw:
            return Expect("raise", why="different frameworks")
        if b.dtype != first.dtype:
            return Expect("raise", why="different dtypes")
        if b.x.shape[1:] != first.x.shape[1:]:
            return Expect("raise", why="different feature shapes")
    n = len(first.offs) - 1
    rows, offs = [], [0]
    for i in range(n):
        for b in bs:
            rows.append(b.x[b.offs[i]:b.offs[i + 1]])
        offs.append(offs[-1] + sum(b.offs[i + 1] - b.offs[i] for b in bs))
    data = np.concatenate(rows) if rows else first.x[:0]
    return Expect("either" if worst.status == "either" else "answer", Arr(Nat(first.fw, (first.dtype,), data), offs),
                  "per-sequence concatenation")


def _from_padded(recipe: dict, snap: dict) -> Expect:
    args = recipe.get("args", {})
    p = snap["p"]
    side = args.get("padding_side", "right")
    if side not in ("right", "left"):
        return Expect("raise", why=f"padding_side={side!r}")
    if "m" in snap and "lens" in snap:
        return Expect("raise", why="mask and lengths both given")
    if len(p.shape) < 2:
        return Expect("raise", why="padded of rank < 2")
    n, L = p.shape[:2]
    feat = p.shape[2:]
    if "m" in snap:
        m = snap["m"]
        if m.fw != p.fw:
            return Expect("raise", why="mask from another framework")
        if m.shape != (n, L):
            return Expect("raise", why="mask shape != padded.shape[:2]")
        keep = m.h != 0
        lens = keep.sum(axis=1).tolist()
        rows = p.h[keep] if n and L else np.zeros((0, *feat), p.h.dtype)
    else:
        if "lens" in snap:
            ls = snap["lens"]
            if isinstance(ls.h, (list, tuple)):
                lens = [int(v) for v in ls.h]
            else:
                if ls.fw != p.fw:
                    return Expect("either", why="lengths from another framework")
                if ls.dtype.startswith(("float", "bool")):
                    return Expect("raise", why=f"{ls.dtype} lengths")
                lens = [int(v) for v in ls.h.tolist()]
            if len(lens) != n or any(v < 0 or v > L for v in lens):
                return Expect("raise", why="lengths do not fit padded")
        else:
            lens = [L] * n
        pieces = [p.h[i, L - ln:] if side == "left" else p.h[i, :ln] for i, ln in enumerate(lens)]
        rows = np.concatenate(pieces) if pieces else np.zeros((0, *feat), p.h.dtype)
    offs = [0]
    for v in lens:
        offs.append(offs[-1] + int(v))
    return Expect("answer", Arr(Nat(p.fw, (p.dtype,), rows.reshape(offs[-1], *feat)), offs), "tokens of padded")


def _cu_from_lengths(recipe: dict, snap: dict) -> Expect:
    ls = snap["lens"]
    if isinstance(ls.h, (list, tuple)):
        return Expect("either" if ls.h else "any", why="lengths as a Python list")
    if ls.h.ndim != 1:
        return Expect("raise", why=f"{ls.h.ndim}-D lengths")
    if ls.dtype.startswith(("float", "bool", "complex")):
        return Expect("raise", why=f"{ls.dtype} lengths")
    lens = [int(v) for v in ls.h.tolist()]
    if any(v < 0 for v in lens):
        return Expect("raise", why="negative length")
    offs = [0]
    for v in lens:
        offs.append(offs[-1] + v)
    if offs[-1] > 2**31 - 1:
        return Expect("raise", why="total does not fit int32 cu_seqlens")
    longest = max(lens, default=0)
    return Expect("answer", Tup([Nat(ls.fw, ("int32",), np.array(offs, np.int64)), Int(longest, longest)]),
                  "(cumsum, max)")


def _position_ids(recipe: dict, snap: dict) -> Expect:
    x, pos = snap["x"], snap["pos"]
    if pos.fw != x.fw:
        return Expect("raise", why="position_ids from another framework")
    if not pos.dtype.startswith(("int", "uint")):
        return Expect("raise", why=f"{pos.dtype} position_ids")
    if not (pos.h.ndim == 1 or (pos.h.ndim == 2 and pos.h.shape[0] == 1)):
        return Expect("raise", why=f"position_ids of shape {pos.h.shape}")
    p = pos.h.reshape(-1).astype(np.int64).tolist()
    if len(x.shape) < 1 or len(p) != x.shape[0]:
        return Expect("raise", why="position_ids length != values rows")
    offs = [i for i, v in enumerate(p) if v == 0] + [len(p)]
    if p and (offs[0] != 0):
        return Expect("raise", why="position_ids do not start at 0")
    for a, c in zip(offs, offs[1:]):
        if p[a:c] != list(range(c - a)):
            return Expect("raise", why="position_ids skip")
    if not p:
        offs = [0]
    return Expect("answer", Arr(Nat(x.fw, (x.dtype,), x.h), offs), "sequences restart at position 0")


def _from_nested(recipe: dict, snap: dict) -> Expect:
    kind = recipe["args"]["layout"]
    if kind == "dense":
        return Expect("raise", why="a plain tensor")
    if kind == "holes":
        return Expect("raise", why="jagged with holes (UnsupportedError documented)")
    x = snap["a_x"]
    offs = list(recipe["a"]["layout"])
    bad = _layout_ok(offs, x.shape[0]) if len(x.shape) else "0-d"
    if bad:
        return Expect("raise", why=bad)
    return Expect("answer", Arr(Nat("torch", (x.dtype,), x.h), offs), "values and offsets of the nested tensor")

"""Building blocks of a fuzz case's setup: small deterministic input makers (V values, O offsets
or lengths, S a list of sequences for pack) that every rendered case and every saved repro calls,
plus `host`/`fw_of`/`dtype_of`, the framework-neutral views the oracle reads.

They exist so that a repro stays a few readable lines (`x = V('numpy', 'float64', (6, 2),
'arange', view='flip')`) while still being exactly the input the fuzzer ran. Everything is small:
"huge" in this harness always means a huge *claimed* size, never a big buffer."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np

warnings.filterwarnings("ignore")  # JAX's int64 -> int32 notes, NumPy casts of NaN to int, ...

FRAMEWORKS = ("numpy", "torch", "jax", "mlx")


def _np_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes  # ships with JAX: NumPy's own bfloat16, a dtype scree may not expect

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _master(dtype: str, shape: tuple, fill: str, seed: int) -> np.ndarray:
    """Host data of `shape` already rounded to `dtype` (so the framework copy is exact)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == "bool":
        return (rng.random(shape) < 0.5) if fill != "zeros" else np.zeros(shape, bool)
    integer = dtype.startswith(("int", "uint"))
    if fill == "arange":
        base = np.arange(n, dtype=np.float64).reshape(shape)
    elif fill == "zeros":
        base = np.zeros(shape)
    elif integer:
        lo = 0 if dtype.startswith("uint") else -5
        base = rng.integers(lo, 10, size=shape).astype(np.float64)
        if fill == "big":  # near the type's extremes: sums overflow narrow accumulators
            info = np.iinfo(np.dtype(dtype))
            base = np.where(rng.random(shape) < 0.5, info.max, info.min if lo < 0 else info.max // 2)
            return np.asarray(base).astype(dtype)
    else:
        base = rng.standard_normal(shape) * 2.0
        specials = {"nan": [np.nan], "inf": [np.inf, -np.inf], "big": [1e30, -1e30, 6e4, -6e4],
                    "mixed": [np.nan, np.inf, -np.inf, 1e30, 0.0, -0.0]}.get(fill)
        if specials and n:
            hit = rng.random(shape) < 0.3
            base = np.where(hit, rng.choice(specials, size=shape), base)
    if dtype.startswith("complex"):
        base = base + 1j * np.roll(base.reshape(-1), 1).reshape(shape)
    with np.errstate(all="ignore"):
        return base.astype(_np_dtype(dtype))


def _to_fw(a: np.ndarray, fw: str, dtype: str) -> Any:
    """Host array `a` (already `dtype`) as a `fw` array of that dtype (JAX without x64 narrows
    64-bit types, as it does for users)."""
    if fw == "numpy":
        return a
    if fw == "torch":
        import torch

        if dtype == "bfloat16":
            return torch.from_numpy(np.array(a, dtype=np.float32)).to(torch.bfloat16)
        if dtype in ("uint16", "uint32", "uint64"):  # torch.from_numpy lacks these
            return torch.from_numpy(a.astype(np.int64)).to(getattr(torch, dtype))
        return torch.from_numpy(np.array(a, order="C"))  # a copy that keeps 0-d arrays 0-d
    if fw == "jax":
        import jax.numpy as jnp

        return jnp.asarray(a)
    if fw == "mlx":
        import mlx.core as mx

        a = np.array(a, order="C")  # a fresh copy: MLX refuses negative strides, even of one element
        if dtype == "bfloat16":
            return mx.array(a.astype(np.float32)).astype(mx.bfloat16)
        return mx.array(a, dtype=getattr(mx, "bool_" if dtype == "bool" else dtype))
    raise ValueError(f"unknown framework {fw}")


def _view(x: Any, fw: str, view: str | None, shape: tuple) -> Any:
    """x (built larger where the view needs it) cut down to `shape` through a strided view."""
    if view in (None, "none"):
        return x
    if view == "flip":
        if fw == "torch":
            import torch

            if x.dtype in (torch.uint16, torch.uint32, torch.uint64):
                return x  # torch cannot flip these: left as they are
            return torch.flip(x, (0,))  # torch has no negative strides: a reversed copy
        return x[::-1]
    if view == "step":  # built with 2x rows: every other row
        return x[::2]
    if view == "offset":  # built with 1 extra row: starts one row (an unaligned address) in
        return x[1:]
    if view == "T":  # built with the last two axes swapped: a transposed view
        if fw == "torch":
            return x.transpose(-1, -2)
        if fw == "mlx":
            import mlx.core as mx

            return mx.swapaxes(x, -1, -2)
        return x.swapaxes(-1, -2)
    if view == "bcast":  # one row broadcast to all rows: stride 0
        if fw == "torch":
            return x[:1].expand(*shape)
        mod = {"numpy": np, "jax": None, "mlx": None}[fw] or _mod(fw)
        return mod.broadcast_to(x[:1], shape)
    if view == "fortran" and fw == "numpy":
        return np.asfortranarray(x)
    return x


def _mod(fw: str) -> Any:
    if fw == "jax":
        import jax.numpy as jnp

        return jnp
    import mlx.core as mx

    return mx


def _base_shape(shape: tuple, view: str | None) -> tuple:
    if view == "step" and shape:
        return (shape[0] * 2, *shape[1:])
    if view == "offset" and shape:
        return (shape[0] + 1, *shape[1:])
    if view == "T" and len(shape) >= 2:
        return (*shape[:-2], shape[-1], shape[-2])
    return shape


def V(fw: str, dtype: str, shape: Any, fill: str = "randn", seed: int = 0, view: str | None = None) -> Any:
    """Values: a `fw` array of `dtype` and `shape`, filled deterministically (randn, arange, zeros,
    nan, inf, big, mixed), optionally seen through a strided `view` (flip, step, offset, T, bcast,
    fortran)."""
    shape = tuple(shape)
    view = view if (view != "T" or len(shape) >= 2) and (shape or view is None) else None
    return _view(_to_fw(_master(dtype, _base_shape(shape, view), fill, seed), fw, dtype), fw, view, shape)


def O(fw: str, dtype: str, data: Any, form: str = "1d") -> Any:
    """Offsets or lengths `data` (Python ints, possibly huge or negative) as a `fw` array of `dtype`
    (out-of-range values wrap, as a C cast would); `form`: 1d, 0d (first entry only), 2d (a row),
    col (a column), list, tuple, rev (a negative-stride view of the same entries), step (every
    other entry of a longer buffer)."""
    if form == "list":
        return list(data)
    if form == "tuple":
        return tuple(data)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        big = np.array([int(d) % (1 << 64) for d in data], dtype=np.uint64)  # two's complement bits
        a = big.view(np.int64).astype(_np_dtype(dtype)) if dtype != "bool" else big != 0
    if form == "0d":
        a = a[:1].reshape(()) if a.size else np.zeros((), a.dtype)
    elif form == "2d":
        a = a.reshape(1, -1)
    elif form == "col":
        a = a.reshape(-1, 1)
    if form == "rev":
        return _view(_to_fw(np.ascontiguousarray(a[::-1]), fw, dtype), fw, "flip", a.shape)
    if form == "step":
        return _view(_to_fw(np.repeat(a, 2), fw, dtype), fw, "step", a.shape)
    return _to_fw(np.array(a, order="C"), fw, dtype)  # (ascontiguousarray would make 0-d 1-d)


def S(x: Any, offsets: list, odd: Any = None) -> list:
    """x split at `offsets` into a list of sequences (pack's input); `odd` = (i, kind) spoils
    sequence i: 'none' (None), 'scalar' (a 0-d array), 'float16' or 'int32' (another dtype),
    'torch'/'numpy'/'jax'/'mlx' (another framework), 'feature' (another feature shape), 'list'
    (a Python list)."""
    seqs = [x[int(a):int(b)] for a, b in zip(offsets[:-1], offsets[1:])]
    if odd and seqs:
        i, kind = int(odd[0]) % len(seqs), odd[1]
        s = seqs[i]
        if kind in (fw_of(x), dtype_of(x)):
            pass  # its own framework or dtype: nothing to spoil
        elif kind == "none":
            seqs[i] = None
        elif kind == "scalar":
            seqs[i] = V(fw_of(x), dtype_of(x), (), "randn", i)
        elif kind == "feature":
            seqs[i] = V(fw_of(x), dtype_of(x), (tuple(s.shape)[0], 7), "randn", i)
        elif kind == "list":
            seqs[i] = host(s).tolist()
        elif kind in FRAMEWORKS:
            seqs[i] = _to_fw(host(s), kind, dtype_of(x))
        else:  # the same numbers in another dtype
            with np.errstate(all="ignore"):
                seqs[i] = _to_fw(host(s).astype(_np_dtype(kind)), fw_of(x), kind)
    return seqs


def fw_of(x: Any) -> str:
    """'numpy', 'torch', 'jax', 'mlx', or the Python type's name for anything else."""
    mod = type(x).__module__.split(".", 1)[0]
    return {"jaxlib": "jax"}.get(mod, mod if mod in FRAMEWORKS else type(x).__name__)


def dtype_of(x: Any) -> str:
    """The element type's name, the same spelling in every framework ('float32', 'bfloat16')."""
    dt = getattr(x, "dtype", None)
    if dt is None:
        return type(x).__name__
    name = getattr(dt, "name", None)
    return str(name if isinstance(name, str) else dt).split(".")[-1]


def host(x: Any) -> np.ndarray:
    """A NumPy copy of a native array, bfloat16 widened to float32 (NumPy's own lacks it)."""
    fw = fw_of(x)
    if fw == "torch":
        import torch

        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        if t.dtype == torch.uint64:  # (torch cannot hand it to NumPy; through float64 it rounds)
            return t.contiguous().view(torch.int64).numpy().view(np.uint64).copy()
        if t.dtype in (torch.uint16, torch.uint32):
            t = t.to(torch.int64)
        return t.resolve_conj().numpy().copy()
    if fw == "mlx":
        import mlx.core as mx

        return np.array(x.astype(mx.float32) if x.dtype == mx.bfloat16 else x)
    a = np.array(x)
    return a.astype(np.float32) if a.dtype.name == "bfloat16" else a


def modules() -> dict:
    """The names a rendered case may use (frameworks imported only when present)."""
    import scree
    import scree.bridges
    import scree.kernels.reference

    ns: dict = {"np": np, "scree": scree, "V": V, "O": O, "S": S, "host": host}
    for name, mod in (("torch", "torch"), ("jax", "jax"), ("jnp", "jax.numpy"), ("mx", "mlx.core")):
        try:
            __import__(mod)
            ns[name] = sys.modules[mod]
        except ImportError:
            pass
    return ns

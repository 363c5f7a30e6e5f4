"""JAX glue of the compiled varlen attention: the C++ kernels registered as XLA FFI targets
(scree._C.registrations(): CPU, and CUDA in CUDA builds), called with jax.ffi.ffi_call,
differentiated with jax.custom_vjp. Each direction is one target name with a handler per platform,
so the same ffi_call lowers to the CPU or the GPU kernel wherever XLA places the computation.
The scalars travel as the call's attributes, AttentionArgs.fields() by name, which the handlers
decode into the same record the nanobind binding takes. Offsets travel as device arrays, so it
works under jax.jit with traced offsets (the CPU kernel validates them at run time; the CUDA kernels
clamp every sequence into the buffers); vmap runs the batch sequentially."""

from __future__ import annotations

import contextlib
import re
from functools import partial
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from scree import _backends, _C, _errors
from scree._array import Array
from scree.kernels import attention as K
from scree.kernels.attention_spec import AttentionSpec

_NS = _backends.get("jax")
_FWD, _BWD = "scree_varlen_fwd", "scree_varlen_bwd"
# Suffix of a registrations() key -> JAX's platform name for register_ffi_target.
_PLATFORMS = {"cpu": "cpu", "cuda": "CUDA"}
_registered: frozenset[str] | None = None  # the suffixes registered, once per process


# How a handler's scree::Error reaches Python: JAX's runtime error with "scree.<Class>: message"
# (src/bindings/error_names.h).
_SCREE_ERROR = re.compile(r"scree\.(\w+Error): (.*)", re.DOTALL)


@contextlib.contextmanager
def _scree_errors() -> Iterator[None]:
    """Where an ffi_call runs eagerly, raise the scree error class its handler named instead of
    JAX's runtime error. Under jit the error comes when the compiled function runs, outside scree;
    its message still starts with the class name."""
    try:
        yield
    except Exception as e:  # jax.errors.JaxRuntimeError (its module moved across JAX versions)
        m = _SCREE_ERROR.search(str(e))
        cls = getattr(_errors, m.group(1), None) if m else None
        if isinstance(cls, type) and issubclass(cls, _errors.ScreeError):
            raise cls(m.group(2).strip()) from e
        raise


def _register() -> frozenset[str]:
    """Register every handler this build has (scree_varlen_{fwd,bwd}_{cpu,cuda}) under its name
    without the suffix, for its platform. A CUDA registration on a JAX without GPU support is only
    queued by JAX, never used."""
    global _registered
    if _registered is None:
        found = set()
        for key, capsule in _C.registrations().items():
            target, _, suffix = key.rpartition("_")
            if suffix in _PLATFORMS:
                jax.ffi.register_ffi_target(target, capsule, platform=_PLATFORMS[suffix])
                found.add(suffix)
        _registered = frozenset(found)
    return _registered


def _platform(x: Any) -> str:
    """'cpu' or 'gpu' (JAX's name for CUDA devices): where x lives, or for a tracer (whose placement
    XLA decides) the default backend."""
    if isinstance(x, jax.core.Tracer):
        return jax.default_backend()
    devices = x.devices()
    return next(iter(devices)).platform if len(devices) == 1 else jax.default_backend()


def serves(q: Any = None, v: Any = None) -> bool:
    """Whether a registered handler serves q, v values (v: q's head dim when omitted): the CPU one
    for any float dtype, the CUDA one where this build compiled kernels for the dtype and head dim.
    Without arrays: whether the default backend has a handler at all."""
    platforms = _register()
    where = jax.default_backend() if q is None else _platform(q)
    if where == "cpu":
        return "cpu" in platforms
    if where in ("gpu", "cuda"):
        if q is None:
            return "cuda" in platforms
        dv = (q if v is None else v).shape[-1]
        return "cuda" in platforms and K.cuda_kernel_serves(_NS.dtype_name(q), q.shape[-1], dv)
    return False


def _attrs(args: Any) -> dict[str, Any]:
    """AttentionArgs as FFI attributes: ints are int64 and bools bool already; floats must be named
    float64 (a Python float becomes an f32 attribute)."""
    return {name: np.float64(x) if isinstance(x, float) else x for name, x in args.fields().items()}


def _forward(q, k, v, cu_q, cu_k, args):
    # The CUDA forward's workspace (its tile counter) is a third, discarded output; the CPU handler
    # ignores it (0 bytes). An output, not XLA's scratch allocator: see the backward.
    ws = _C.cuda_fwd_workspace_bytes(q.shape[0], cu_q.shape[0] - 1) if _platform(q) == "gpu" else 0
    out_types = (jax.ShapeDtypeStruct((q.shape[0], q.shape[1], v.shape[2]), q.dtype),
                 jax.ShapeDtypeStruct((q.shape[1], q.shape[0]), K.lse_dtype(_NS.dtype_name(q))),
                 jax.ShapeDtypeStruct((ws,), jnp.uint8))
    with _scree_errors():
        out, lse, _ = jax.ffi.ffi_call(_FWD, out_types, vmap_method="sequential")(q, k, v, cu_q, cu_k,
                                                                                  **_attrs(args))
    return out, lse


@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, cu_q, cu_k, args, deterministic):
    return _forward(q, k, v, cu_q, cu_k, args)


def _attention_fwd(q, k, v, cu_q, cu_k, args, deterministic):
    out, lse = _forward(q, k, v, cu_q, cu_k, args)
    return (out, lse), (q, k, v, cu_q, cu_k, out, lse)


def _attention_bwd(args, deterministic, res, cotangents):
    q, k, v, cu_q, cu_k, out, lse = res
    dout, _ = cotangents  # the gradient through lse is not propagated (as FlashAttention)
    # Read at trace time: a jitted backward keeps the mode it was traced with.
    args = args.with_deterministic(K.resolve_deterministic(deterministic, _NS))
    # The CUDA kernels' workspace is a fourth (discarded) output, sized by the C++ formula; the
    # CPU handler ignores it (0 bytes).
    ws = _C.cuda_bwd_workspace_bytes(q.shape[0], k.shape[0], cu_q.shape[0] - 1, q.shape[1], q.shape[2],
                                     args.deterministic, jnp.dtype(q.dtype).name, args.max_seqlen_k) \
        if _platform(q) == "gpu" else 0
    out_types = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
    out_types += (jax.ShapeDtypeStruct((ws,), jnp.uint8),)
    with _scree_errors():
        dq, dk, dv, _ = jax.ffi.ffi_call(_BWD, out_types, vmap_method="sequential")(
            dout.astype(q.dtype), q, k, v, out, lse, cu_q, cu_k, **_attrs(args))
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def varlen_attention(q: Array, k: Array, v: Array, spec: AttentionSpec, with_lse: bool = True) -> tuple[Any, Any]:
    """(out values, lse) for scree.Arrays q, k, v (lse always: XLA drops it when unused)."""
    args = K.kernel_args(spec, K.plan(q).max_seqlen, K.plan(k).max_seqlen)
    return _attention(q.values, k.values, v.values, q.offsets, k.offsets, args, spec.deterministic)

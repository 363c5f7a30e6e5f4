"""JAX glue of the compiled varlen attention: the C++ kernels registered as XLA FFI targets
(scree._C.registrations(), CPU), called with jax.ffi.ffi_call, differentiated with
jax.custom_vjp. Offsets travel as device arrays, so it works under jax.jit with traced offsets
(the CPU kernel re-validates them at run time); vmap runs the batch sequentially."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scree import _C

_FWD, _BWD = "scree_varlen_fwd_cpu", "scree_varlen_bwd_cpu"
_registered = False


def available() -> bool:
    """Whether this build has the XLA FFI handlers (built with jax importable) and JAX runs on CPU."""
    global _registered
    if not _registered:
        regs = _C.registrations()
        if _FWD not in regs:
            return False
        for name, capsule in regs.items():
            jax.ffi.register_ffi_target(name, capsule, platform="cpu")
        _registered = True
    return jax.default_backend() == "cpu"


def _attrs(args: tuple) -> dict[str, Any]:
    max_q, max_k, scale, causal, left, right, softcap = args
    return dict(max_seqlen_q=np.int64(max_q), max_seqlen_k=np.int64(max_k), scale=np.float64(scale),
                causal=bool(causal), window_left=np.int64(left), window_right=np.int64(right),
                softcap=np.float64(softcap))


def _forward(q, k, v, cu_q, cu_k, args):
    out_types = (jax.ShapeDtypeStruct((q.shape[0], q.shape[1], v.shape[2]), q.dtype),
                 jax.ShapeDtypeStruct((q.shape[1], q.shape[0]), jnp.float32))
    return jax.ffi.ffi_call(_FWD, out_types, vmap_method="sequential")(q, k, v, cu_q, cu_k, **_attrs(args))


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, cu_q, cu_k, args):
    return _forward(q, k, v, cu_q, cu_k, args)


def _attention_fwd(q, k, v, cu_q, cu_k, args):
    out, lse = _forward(q, k, v, cu_q, cu_k, args)
    return (out, lse), (q, k, v, cu_q, cu_k, out, lse)


def _attention_bwd(args, res, cotangents):
    q, k, v, cu_q, cu_k, out, lse = res
    dout, _ = cotangents  # the gradient through lse is not propagated (as FlashAttention)
    out_types = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
    dq, dk, dv = jax.ffi.ffi_call(_BWD, out_types, vmap_method="sequential")(
        dout.astype(q.dtype), q, k, v, out, lse, cu_q, cu_k, **_attrs(args))
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def varlen_attention(q: Any, k: Any, v: Any, args: tuple) -> tuple[Any, Any]:
    """(out values, lse) for scree.Arrays q, k, v; args as scree.kernels.attention.kernel_args."""
    return _attention(q.values, k.values, v.values, q.offsets, k.offsets, tuple(args))

"""MLX glue of the compiled varlen attention. MLX arrays live in host (unified) memory on the
CPU; they reach the C++ kernel as NumPy views through the buffer protocol, and the results come
back as mx.arrays (one copy each way: MLX arrays are immutable, so the kernel cannot write into
them). Gradients through mx.custom_function with a vjp that calls the backward kernel."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

from scree._backends import numpy as _np_backend
from scree.kernels import attention as _attention


def _host(x: Any) -> np.ndarray:
    return np.asarray(x)  # a view where MLX allows it (evaluated, row-contiguous), else a copy


def available(x: Any) -> bool:
    """bfloat16 has no NumPy type, so it stays on the reference; everything else is served."""
    return x.dtype in (mx.float32, mx.float16)


def varlen_attention(q: Any, k: Any, v: Any, args: tuple) -> tuple[Any, Any]:
    """(out values, lse) for scree.Arrays q, k, v; args as scree.kernels.attention.kernel_args."""
    cu_q, cu_k = q.host_offsets, k.host_offsets

    @mx.custom_function
    def attend(qv, kv, vv):
        out, lse = _attention.forward(_np_backend, _host(qv), _host(kv), _host(vv), cu_q, cu_k, args)
        return mx.array(out), mx.array(lse)

    @attend.vjp
    def attend_vjp(primals, cotangents, outputs):
        qv, kv, vv = primals
        dout = cotangents[0]
        out, lse = outputs
        grads = _attention.backward(_np_backend, _host(dout.astype(qv.dtype)), _host(qv), _host(kv), _host(vv),
                                    _host(out), _host(lse), cu_q, cu_k, args)
        return tuple(mx.array(g) for g in grads)

    return attend(q.values, k.values, v.values)

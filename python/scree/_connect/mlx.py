"""MLX glue of the compiled varlen attention. MLX arrays live in host (unified) memory on the
CPU; they reach the C++ kernel as NumPy views through the buffer protocol, and the results come
back as mx.arrays (one copy each way: MLX arrays are immutable, so the kernel cannot write into
them). Gradients through mx.custom_function with a vjp that calls the backward kernel."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

from scree import _backends
from scree._array import Array
from scree.kernels import attention as K
from scree.kernels.attention_spec import AttentionSpec

_HOST = _backends.get("numpy")  # the kernels run on NumPy views of the MLX buffers
_MLX = _backends.get("mlx")


def _host(x: Any) -> np.ndarray:
    return np.asarray(x)  # a view where MLX allows it (evaluated, row-contiguous), else a copy


def serves(q: Any, v: Any) -> bool:
    """On MLX's CPU device, float64, float32, float16 and bfloat16 (which NumPy cannot hold: it runs
    on float32 copies, see varlen_attention). float64 too: MLX's own float64 ops fell ~5e-7 short of
    float64 accuracy on large values (tools/fuzz), the kernels do not."""
    return mx.default_device().type == mx.DeviceType.cpu and q.dtype in (mx.float64, mx.float32, mx.float16,
                                                                          mx.bfloat16)


def varlen_attention(q: Array, k: Array, v: Array, spec: AttentionSpec, with_lse: bool = True) -> tuple[Any, Any]:
    """(out values, lse) for scree.Arrays q, k, v (lse always: mx.grad may ask for the vjp later)."""
    cu_q, cu_k = q.host_offsets, k.host_offsets
    args = K.kernel_args(spec, K.plan(q).max_seqlen, K.plan(k).max_seqlen)

    # bfloat16 has no NumPy type: the kernels run on float32 copies (float32 compute, as the kernels
    # do for bfloat16 everywhere) and the results are rounded back. The framework fallback this
    # replaces computed in bfloat16 itself: ~1.8x torch bfloat16's error on the same inputs.
    dtype = q.values.dtype
    wide = mx.float32 if dtype == mx.bfloat16 else dtype

    def host(x: Any) -> np.ndarray:
        return _host(x.astype(wide))

    @mx.custom_function
    def attend(qv, kv, vv):
        out, lse = K.forward(_HOST, host(qv), host(kv), host(vv), cu_q, cu_k, args)
        return _MLX.from_numpy(out).astype(dtype), _MLX.from_numpy(lse)  # (from_numpy keeps float64)

    @attend.vjp
    def attend_vjp(primals, cotangents, outputs):
        qv, kv, vv = primals
        dout = cotangents[0]
        out, lse = outputs
        bwd_args = args.with_deterministic(K.resolve_deterministic(spec.deterministic, _MLX))
        grads = K.backward(_HOST, host(dout), host(qv), host(kv), host(vv), host(out), _host(lse), cu_q, cu_k,
                           bwd_args)
        return tuple(_MLX.from_numpy(g).astype(dtype) for g in grads)

    return attend(q.values, k.values, v.values)

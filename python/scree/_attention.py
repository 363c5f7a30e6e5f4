"""scree.varlen_attention and scree.varlen_attention_backward: check the arguments once
(kernels.attention_spec), then hand the Arrays to the framework's glue (scree._connect), which runs
the compiled kernel for their backend and device; inputs no compiled kernel serves (MLX bfloat16,
CUDA float32 or head dims this build did not compile) run the reference, differentiably."""

from __future__ import annotations

from typing import Any

from scree import _connect
from scree._array import Array
from scree._layout import poll
from scree.kernels import attention as K
from scree.kernels import attention_reference
from scree.kernels.attention_spec import attention_spec, drop_head_axis, with_head_axis

__all__ = ["varlen_attention", "varlen_attention_backward"]


def varlen_attention(q: Array, k: Array, v: Array, causal: bool = False, scale: float | None = None,
                     window: tuple[int | None, int | None] | None = None, softcap: float | None = None,
                     return_lse: bool = False, deterministic: bool | None = None) -> Array | tuple[Array, Any]:
    """Attention of each query sequence of q over the matching sequence of k, v (DESIGN §3).

    q (Tq, Hq, D), k (Tk, Hk, D), v (Tk, Hk, Dv) Arrays with the same number of sequences,
    Hq % Hk == 0 (GQA/MQA). Causal is bottom-right aligned when a sequence's q and k lengths
    differ; window=(left, right) is a sliding window (ints >= 0; None/-1: unbounded side, as is any
    side at least Tq + Tk long, however large); softcap applies softcap*tanh(s/softcap). A query row
    that sees no key outputs 0 with lse = -inf and passes no gradient on (its dout is not read).
    Returns an Array with q's offsets and values (Tq, Hq, Dv), and lse (Hq, Tq) when return_lse:
    float32, float64 for float64 inputs.
    Gradients flow through the framework's autograd (torch autograd, jax.grad, mx.grad) to q, k, v.

    deterministic: whether the backward must give the same bits on every run (only the CUDA
    backward has a choice). None: SCREE_DETERMINISTIC=1 or the framework's switch
    (torch.use_deterministic_algorithms, XLA's --xla_gpu_deterministic_ops), read when the backward
    runs (JAX: when it is traced).

    Never synchronises the device: max_seqlen comes from the Arrays' layouts (see scree.Array).
    """
    spec = attention_spec(q, k, v, causal, scale, window, softcap, deterministic)
    if not spec.ns.is_tracing():
        poll()  # device checks of earlier Arrays that have landed raise here
    if spec.single_head:
        out, lse = varlen_attention(*(with_head_axis(spec.ns, a) for a in (q, k, v)), causal=causal, scale=scale,
                                    window=window, softcap=softcap, return_lse=True, deterministic=deterministic)
        out, lse = drop_head_axis(spec.ns, q, out, lse)
        return (out, lse) if return_lse else out
    glue = _connect.glue(spec.ns)
    if not glue.serves(q.values, v.values):
        return attention_reference.varlen_attention(q, k, v, causal=causal, scale=scale, window=window,
                                                    softcap=softcap, return_lse=return_lse, upcast=False)
    out_values, lse = glue.varlen_attention(q, k, v, spec, return_lse)
    out = Array._over(out_values, q._layout)
    return (out, lse) if return_lse else out


def varlen_attention_backward(dout: Any, q: Array, k: Array, v: Array, out: Array, lse: Any, causal: bool = False,
                              scale: float | None = None, window: tuple[int | None, int | None] | None = None,
                              softcap: float | None = None,
                              deterministic: bool | None = None) -> tuple[Array, Array, Array]:
    """Gradients (dq, dk, dv) as Arrays, for frameworks without autograd (NumPy): `dout` is the
    gradient of the output (an Array or values (Tq, Hq, Dv)), `out` and `lse` what the forward
    returned with the same options (lse float32, or float64 for float64 inputs: the float64
    backward recomputes the softmax statistics, so a float32 lse gives it the same gradients);
    `deterministic` as in varlen_attention."""
    spec = attention_spec(q, k, v, causal, scale, window, softcap, deterministic)
    B = spec.ns
    d = dout.values if isinstance(dout, Array) else dout
    if spec.single_head:  # (T, D) inputs: run with a head axis, drop it from the gradients
        grads = varlen_attention_backward(
            B.reshape(d, (d.shape[0], 1, d.shape[1])), *(with_head_axis(B, a) for a in (q, k, v, out)),
            B.reshape(lse, (1, lse.shape[0])), causal=causal, scale=scale, window=window, softcap=softcap,
            deterministic=deterministic)
        return tuple(a.with_values(B.reshape(g.values, (g.values.shape[0], g.values.shape[2])))
                     for a, g in zip((q, k, v), grads))
    pq, pk = K.plan(q), K.plan(k)
    args = K.kernel_args(spec, pq.max_seqlen, pk.max_seqlen, K.resolve_deterministic(spec.deterministic, B))
    dq, dk, dv = K.backward(B, B.contiguous(d), q.values, k.values, v.values, out.values, lse, pq.offsets,
                            pk.offsets, args)
    return q.with_values(dq), k.with_values(dk), v.with_values(dv)

"""Reference varlen attention: the readable spec of `scree.varlen_attention` (DESIGN.md section 3).

Written once against the backend namespace (`scree._backends`), so the same code runs on NumPy,
PyTorch, JAX and MLX. It loops over sequences in Python and does plain dense math per
sequence; it is meant to be obviously right, not fast. The fast kernels are tested against it,
and it is differentiable by torch autograd, jax.grad and mx.grad, so it also serves as the
gradient reference. Where the host cannot read the offsets (JAX tracers under jax.jit / vmap) the
per-sequence loop is impossible; there the same math runs once over all tokens as a dense
(Tq, Tk) problem whose mask keeps each query inside its own sequence (O(Tq * Tk) memory: a
reference, not a kernel).

Semantics, per sequence with query length Lq and key length Lk (query row i, key row j):

* scores     s = scale * q_i . k_j, scale defaults to 1/sqrt(D)
* softcap    s -> softcap * tanh(s / softcap), after scaling and before masking (FlashAttention's order)
* visibility with d = Lk - Lq (bottom-right alignment, FlashAttention >= 2.1), key j is visible
             iff  i + d - left <= j <= i + d + right,  where an unbounded side drops its bound;
             causal is the same as right = 0 (combined with any window's left side)
* output     softmax of s over the visible keys, times v; a row with no visible key (empty k,
             or masked away) outputs 0 and has lse = -inf, and being constant it passes no gradient
             on: its dout is never read (a NaN there reaches no dq, dk or dv, as in FlashAttention's
             kernels and scree's, which never visit such a row)
* lse        log(sum(exp(s))) over the visible keys, shape (Hq, Tq)
* GQA/MQA    query head h reads kv head h // (Hq // Hk)
"""

from __future__ import annotations

from typing import Any

from scree._array import Array
from scree.kernels.attention_spec import attention_spec, drop_head_axis, with_head_axis

__all__ = ["varlen_attention"]

_NEG_INF = float("-inf")


def varlen_attention(
    q: "Array",
    k: "Array",
    v: "Array",
    causal: bool = False,
    scale: float | None = None,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
    upcast: bool = True,
) -> "Array | tuple[Array, Any]":
    """Attention of every query sequence of `q` over the matching sequence of `k`, `v`.

    Args:
        q: Array with values (Tq, Hq, D).
        k: Array with values (Tk, Hk, D); same number of sequences as q; Hq % Hk == 0.
        v: Array with values (Tk, Hk, Dv) and the same offsets as k.
        causal: mask keys after the (bottom-right aligned) diagonal.
        scale: score multiplier; default 1/sqrt(D).
        window: (left, right) sliding window; each side an int >= 0, or None / -1 for unbounded
            (as is any side at least Tq + Tk long, however large).
        softcap: cap scores to (-softcap, softcap) with tanh; None or 0 disables it (as in
            FlashAttention, where 0.0 is the "off" value).
        return_lse: also return the log-sum-exp of the scores, shape (Hq, Tq).
        upcast: do the math in float64 and cast the output back to q's dtype (the fp64 reference);
            False does the same computation in the input dtype (the baseline of FlashAttention's
            tolerance rule).

    Returns:
        Array with q's offsets and values (Tq, Hq, Dv) in q's dtype, or (out, lse) when
        `return_lse`; lse is float64 for float64 inputs and float32 otherwise.

    Single-head inputs may drop the head axis: q, k, v all (T, D) give out (Tq, Dv) and lse (Tq,).
    """
    spec = attention_spec(q, k, v, causal, scale, window, softcap)
    B = spec.ns
    if spec.single_head:
        heads = [with_head_axis(B, a) for a in (q, k, v)]
        res = varlen_attention(*heads, causal=causal, scale=scale, window=window, softcap=softcap,
                               return_lse=True, upcast=upcast)
        out, lse = drop_head_axis(B, q, *res)
        return (out, lse) if return_lse else out
    Hq, Dv, dtype = spec.heads_q, spec.head_dim_v, spec.dtype
    scale, left, right, cap = spec.scale, spec.left, spec.right, spec.softcap

    work = "float64" if upcast else dtype
    lse_dtype = "float64" if dtype == "float64" else "float32"
    q_off, k_off = q._known_host_offsets(), k._known_host_offsets()
    if q_off is None or k_off is None:  # traced offsets (jax.jit / vmap): one masked dense problem
        o, lse = _attend_packed(B, q, k, v, work, scale, left, right, cap)
        out = q.with_values(B.astype(o, dtype))
        lse = B.astype(lse, lse_dtype)
        return (out, lse) if return_lse else out

    outs, lses = [], []
    for b in range(len(q_off) - 1):
        q0, q1 = int(q_off[b]), int(q_off[b + 1])
        k0, k1 = int(k_off[b]), int(k_off[b + 1])
        o, lse = _attend_one(
            B,
            B.astype(q.values[q0:q1], work),
            B.astype(k.values[k0:k1], work),
            B.astype(v.values[k0:k1], work),
            scale, left, right, cap,
        )
        outs.append(o)
        lses.append(lse)

    if outs:
        out_values = B.astype(B.concat(outs, axis=0), dtype)
        lse_all = B.astype(B.concat(lses, axis=1), lse_dtype)
    else:  # zero sequences: nothing to attend, but the shapes still follow the spec
        out_values = B.zeros((0, Hq, Dv), dtype, like=q.values)
        lse_all = B.zeros((Hq, 0), lse_dtype, like=q.values)
    out = q.with_values(out_values)
    return (out, lse_all) if return_lse else out


def _attend_one(B: Any, q: Any, k: Any, v: Any, scale: float, left: int | None,
                right: int | None, softcap: float | None) -> tuple[Any, Any]:
    """Dense attention of one sequence: q (Lq, Hq, D), k (Lk, Hk, D), v (Lk, Hk, Dv), all in the
    working dtype. Returns out (Lq, Hq, Dv) and lse (Hq, Lq)."""
    visible = _visibility(B, q.shape[0], k.shape[0], left, right, like=q)
    return _attend_dense(B, q, k, v, scale, softcap, visible)


def _attend_packed(B: Any, q: "Array", k: "Array", v: "Array", work: str, scale: float,
                   left: int | None, right: int | None, softcap: float | None) -> tuple[Any, Any]:
    """All sequences at once, without host offsets: dense attention of all Tq queries over all
    Tk keys, where query i (sequence b, position p) sees key j (sequence c, position r) iff b == c
    and r lies in the window around p + (Lk_b - Lq_b) (bottom-right alignment, as _visibility).
    Same values as the per-sequence loop; returns out (Tq, Hq, Dv) and lse (Hq, Tq)."""
    seg_q, seg_k = q.segment_ids(), k.segment_ids()
    shift = B.astype(k.lengths, "int64") - B.astype(q.lengths, "int64")  # (n,) Lk - Lq
    Tq, Tk = q.total, k.total
    col = lambda x: B.reshape(x, (Tq, 1))  # noqa: E731
    row = lambda x: B.reshape(x, (1, Tk))  # noqa: E731
    visible = col(seg_q) == row(seg_k)
    rel = row(k.positions()) - col(q.positions()) - col(shift[seg_q])
    if right is not None:
        visible = visible & (rel <= right)
    if left is not None:
        visible = visible & (rel >= -left)
    return _attend_dense(B, B.astype(q.values, work), B.astype(k.values, work), B.astype(v.values, work),
                         scale, softcap, visible)


def _attend_dense(B: Any, q: Any, k: Any, v: Any, scale: float, softcap: float | None,
                  visible: Any) -> tuple[Any, Any]:
    """Dense attention of q (Lq, Hq, D) over k (Lk, Hk, D), v (Lk, Hk, Dv) where key j is visible
    to query i iff visible[i, j] (None: all visible). Returns out (Lq, Hq, Dv), lse (Hq, Lq)."""
    Lq, Hq, D = q.shape
    Lk, Hk, _ = k.shape
    Dv = v.shape[2]
    G = Hq // Hk
    # Split query heads into (kv head, group member) so that each kv head is read in place by its
    # G query heads; query head h = kv_head * G + g, i.e. kv head = h // G.
    qg = B.reshape(q, (Lq, Hk, G, D))
    s = B.einsum("qhgd,khd->hgqk", qg, k) * scale  # (Hk, G, Lq, Lk)
    if softcap is not None:
        s = softcap * B.tanh(s / softcap)
    if visible is not None:
        # Out-of-place select (not a masked write) keeps torch autograd intact.
        s = B.where(visible, s, _NEG_INF)

    # Stable softmax. A row whose keys are all masked has max -inf; shifting it by 0 instead makes
    # every exp 0, so its sum is 0 and it falls into the "no visible key" case below without NaNs.
    # amax has no identity, so an empty key range (Lk == 0) gets its zero shift directly.
    if Lk > 0:
        m = B.amax(s, axis=-1, keepdims=True)
        m = B.where(B.isfinite(m), m, 0.0)
    else:
        m = B.zeros((Hk, G, Lq, 1), B.dtype_name(s), like=s)
    p = B.exp(s - m)
    denom = B.sum(p, axis=-1, keepdims=True)
    seen = denom > 0
    denom = B.where(seen, denom, 1.0)  # rows with no visible key: p is all 0

    # Such a row's output is selected as 0, not computed as 0 x v: the product would turn an inf in
    # v into NaN, and its gradient (p^T dout) a NaN in that row's dout into NaN in dv.
    o = B.where(seen, B.einsum("hgqk,khd->hgqd", p / denom, v), 0.0)
    o = B.einsum("hgqd->qhgd", o)  # (Lq, Hk, G, Dv)
    lse = B.where(seen, B.log(denom) + m, _NEG_INF)  # (Hk, G, Lq, 1)
    return B.reshape(o, (Lq, Hq, Dv)), B.reshape(lse, (Hq, Lq))


def _visibility(B: Any, Lq: int, Lk: int, left: int | None, right: int | None,
                like: Any) -> Any:
    """Boolean (Lq, Lk) mask of visible keys, or None when every key is visible."""
    if left is None and right is None:
        return None
    # rel[i, j] = how far key j lies right of the key aligned with query i. Bottom-right alignment:
    # the last query aligns with the last key, so query i aligns with key i + (Lk - Lq).
    rel = (B.reshape(B.arange(Lk, like=like), (1, Lk))
           - B.reshape(B.arange(Lq, like=like), (Lq, 1))
           - (Lk - Lq))
    visible = None
    if right is not None:
        visible = rel <= right
    if left is not None:
        within_left = rel >= -left
        visible = within_left if visible is None else visible & within_left
    return visible

"""Role: the one definition of scree.nn's math — RMSNorm, rotary embedding by position within each
sequence, SwiGLU, GQA self-attention over `scree.varlen_attention`, a pre-norm transformer block —
as pure functions on scree.Arrays of any framework (NumPy, PyTorch, JAX, MLX).

Like `scree/kernels/attention_reference.py`, every function is written once against the backend
namespace of `scree._backends` (plus Python's array operators, which the four frameworks share),
so the torch modules of `scree.nn` (which call these functions with their parameters) and the
JAX / MLX functional forms (`scree.nn.functional_jax`, `scree.nn.functional_mlx`) compute the same
thing by construction. The only ops the namespace lacks, cos and sin for the rotary tables, come
from the framework's own module (numpy / torch / jax.numpy / mlx.core all spell them alike); no
framework is imported here: the one owning the input is already in sys.modules.

No padding anywhere: token-wise maps run on the packed values (total, feature); attention runs
per sequence through the offsets. Parameters are plain native arrays in a mapping (names below);
linear weights have torch's layout (out_features, in_features).

Parameter names of `transformer_block` (`attention` and `swiglu` take the matching subsets):
    attn_norm (dim,)        RMSNorm weight before attention
    w_qkv     ((Hq + 2 Hk) * Dh, dim)   fused q, k, v projection   [b_qkv optional]
    w_o       (dim, Hq * Dh)            output projection          [b_o optional]
    mlp_norm  (dim,)        RMSNorm weight before the MLP
    w_gate, w_up (hidden, dim), w_down (dim, hidden)               SwiGLU
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from scree import _backends
from scree._array import Array
from scree._errors import ArgumentError, ShapeError
from scree._attention import varlen_attention

__all__ = ["BlockConfig", "rms_norm", "rotary", "rotary_tables", "linear", "silu", "swiglu", "attention",
           "transformer_block", "causal_lm"]

# The framework module whose cos / sin the rotary tables use, per backend name.
_MATH = {"numpy": "numpy", "torch": "torch", "jax": "jax.numpy", "mlx": "mlx.core"}


@dataclass(frozen=True)
class BlockConfig:
    """Shapes and options of one pre-norm block (the same for the torch modules and functions).

    causal / window / softcap / scale are passed to scree.varlen_attention unchanged (window is
    (left, right), None for unbounded). rope_base=None disables the rotary embedding."""
    dim: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_hidden: int | None = None
    eps: float = 1e-6
    rope_base: float | None = 10000.0
    causal: bool = True
    window: tuple[int | None, int | None] | None = None
    softcap: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        kv = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        hd = self.dim // self.num_heads if self.head_dim is None else self.head_dim
        hidden = 4 * self.dim if self.mlp_hidden is None else self.mlp_hidden
        if self.num_heads % kv:
            raise ArgumentError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={kv} (GQA)")
        if self.rope_base is not None and hd % 2:
            raise ArgumentError(f"rotary embedding needs an even head_dim, got {hd}")
        object.__setattr__(self, "num_kv_heads", kv)
        object.__setattr__(self, "head_dim", hd)
        object.__setattr__(self, "mlp_hidden", hidden)


def _split(x: Any) -> tuple[Any, Any, Array | None]:
    """(namespace, values, Array or None) for an Array or a native array."""
    if isinstance(x, Array):
        return x._ns, x.values, x
    return _backends.of(x), x, None


def _wrap(arr: Array | None, values: Any) -> Any:
    return values if arr is None else arr.with_values(values)


def _xp(B: Any) -> Any:
    return sys.modules[_MATH[B.name]]


def rms_norm(x: Any, weight: Any, eps: float = 1e-6) -> Any:
    """x / sqrt(mean(x^2 over the last axis) + eps) * weight, computed in float32 at least and cast
    back to x's dtype before the weight multiplies (HF Llama's order). Token-wise: x may be an
    Array (returns an Array with the same offsets) or a native array."""
    B, v, arr = _split(x)
    dt = B.dtype_name(v)
    work = "float64" if dt == "float64" else "float32"
    h = B.astype(v, work)
    inv = (B.sum(h * h, axis=-1, keepdims=True) / v.shape[-1] + eps) ** -0.5
    return _wrap(arr, weight * B.astype(h * inv, dt))


def linear(x: Any, weight: Any, bias: Any = None) -> Any:
    """x @ weight.T (+ bias), weight (out, in) as torch.nn.Linear keeps it; Array or native x."""
    B, v, arr = _split(x)
    y = v @ weight.T
    return _wrap(arr, y if bias is None else y + bias)


def silu(x: Any) -> Any:
    """x * sigmoid(x), with sigmoid(x) = (1 + tanh(x / 2)) / 2 (exact, and overflow-free)."""
    B, v, arr = _split(x)
    return _wrap(arr, v * (0.5 + 0.5 * B.tanh(0.5 * v)))


def swiglu(x: Any, params: Mapping[str, Any]) -> Any:
    """w_down(silu(w_gate x) * w_up x), token-wise (Array or native x)."""
    B, v, arr = _split(x)
    h = silu(linear(v, params["w_gate"])) * linear(v, params["w_up"])
    return _wrap(arr, linear(h, params["w_down"]))


def rotary_tables(positions: Any, head_dim: int, base: float = 10000.0, dtype: str = "float32") -> tuple[Any, Any]:
    """(cos, sin), each (total, head_dim) in `dtype`, for integer positions (total,): angle
    p * base^(-2i/head_dim) for pair i, laid out as HF Llama's tables (the half-size table repeated
    twice along the last axis, for rotate-half)."""
    B = _backends.of(positions)
    inv = (1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(dtype)
    inv = B.from_numpy(inv, like=positions)
    ang = B.reshape(B.astype(positions, dtype), (-1, 1)) * B.reshape(inv, (1, -1))
    ang = B.concat([ang, ang], axis=-1)
    xp = _xp(B)
    return xp.cos(ang), xp.sin(ang)


def rotary(x: Array, base: float = 10000.0, positions: Any = None) -> Array:
    """Rotary embedding of x (values (total, heads, head_dim)) where each token's angle comes from
    its position *within its own sequence* (`x.positions()`), so a packed batch rotates exactly as
    each sequence would alone. rotate-half convention (HF Llama / NeoX): the first and second
    halves of head_dim form the pairs. `positions` (total,) overrides the positions."""
    if not isinstance(x, Array):
        raise ArgumentError("rotary needs a scree.Array (positions come from its offsets)")
    B, v = x._ns, x.values
    if len(v.shape) != 3:
        raise ShapeError(f"rotary expects values (total, heads, head_dim), got {tuple(v.shape)}")
    D = v.shape[-1]
    work = "float64" if B.dtype_name(v) == "float64" else "float32"  # float32 at least, as HF Llama
    cos, sin = rotary_tables(x.positions() if positions is None else positions, D, base, work)
    cos, sin = B.reshape(cos, (-1, 1, D)), B.reshape(sin, (-1, 1, D))
    h = D // 2
    rotated = B.concat([-v[..., h:], v[..., :h]], axis=-1)
    out = B.astype(v, work) * cos + B.astype(rotated, work) * sin
    return x.with_values(B.astype(out, B.dtype_name(v)))


def attention(x: Array, params: Mapping[str, Any], config: BlockConfig) -> Array:
    """Self-attention with GQA on a packed batch: fused qkv projection -> rotary (positions within
    each sequence) -> scree.varlen_attention (causal / window / softcap from config) -> output
    projection. x: Array with values (total, dim); returns the same layout."""
    c = config
    B, v = x._ns, x.values
    T = v.shape[0]
    Hq, Hk, Dh = c.num_heads, c.num_kv_heads, c.head_dim
    qkv = linear(v, params["w_qkv"], params.get("b_qkv"))
    q = B.reshape(qkv[:, :Hq * Dh], (T, Hq, Dh))
    k = B.reshape(qkv[:, Hq * Dh:(Hq + Hk) * Dh], (T, Hk, Dh))
    val = B.reshape(qkv[:, (Hq + Hk) * Dh:], (T, Hk, Dh))
    q, k, val = (x.with_values(a) for a in (q, k, val))
    if c.rope_base is not None:
        pos = x.positions()
        q, k = rotary(q, c.rope_base, pos), rotary(k, c.rope_base, pos)
    o = varlen_attention(q, k, val, causal=c.causal, scale=c.scale, window=c.window, softcap=c.softcap)
    return x.with_values(linear(B.reshape(o.values, (T, Hq * Dh)), params["w_o"], params.get("b_o")))


def transformer_block(x: Array, params: Mapping[str, Any], config: BlockConfig) -> Array:
    """Pre-norm block: h = x + attention(rms_norm(x)); out = h + swiglu(rms_norm(h))."""
    h = x.with_values(x.values + attention(rms_norm(x, params["attn_norm"], config.eps), params, config).values)
    m = swiglu(rms_norm(h.values, params["mlp_norm"], config.eps), params)
    return h.with_values(h.values + m)


def causal_lm(tokens: Array, params: Mapping[str, Any], config: BlockConfig) -> Array:
    """A small language model on packed token ids: embedding -> blocks -> final RMSNorm -> logits.
    params: embed (vocab, dim), blocks (a sequence of block parameter mappings), norm (dim,),
    lm_head (vocab, dim). Returns an Array of logits (total, vocab) with the tokens' offsets."""
    h = tokens.with_values(params["embed"][tokens.values])
    for p in params["blocks"]:
        h = transformer_block(h, p, config)
    return h.with_values(linear(rms_norm(h.values, params["norm"], config.eps), params["lm_head"]))


# ---- parameters for the functional forms (JAX, MLX, NumPy) -------------------------------------

def init_block_params(config: BlockConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Float32 NumPy parameters of one block: norms at 1, linear weights uniform in +-1/sqrt(fan_in)
    (torch.nn.Linear's default range)."""
    c = config

    def lin(out_f: int, in_f: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(in_f)
        return rng.uniform(-bound, bound, size=(out_f, in_f)).astype(np.float32)

    return {"attn_norm": np.ones(c.dim, np.float32),
            "w_qkv": lin((c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.dim),
            "w_o": lin(c.dim, c.num_heads * c.head_dim),
            "mlp_norm": np.ones(c.dim, np.float32),
            "w_gate": lin(c.mlp_hidden, c.dim), "w_up": lin(c.mlp_hidden, c.dim), "w_down": lin(c.dim, c.mlp_hidden)}


def init_causal_lm_params(vocab: int, num_layers: int, config: BlockConfig, rng: np.random.Generator) -> dict:
    """Float32 NumPy parameters of `causal_lm` (embedding N(0, 1), as torch.nn.Embedding)."""
    return {"embed": rng.standard_normal((vocab, config.dim)).astype(np.float32),
            "blocks": [init_block_params(config, rng) for _ in range(num_layers)],
            "norm": np.ones(config.dim, np.float32),
            "lm_head": rng.uniform(-1, 1, size=(vocab, config.dim)).astype(np.float32) / np.sqrt(config.dim)}


def params_to(params: Any, backend: str) -> Any:
    """A parameter tree (dicts / lists of native arrays of any framework, e.g. a torch module's
    `.params()`) as arrays of `backend` ('numpy', 'torch', 'jax', 'mlx'); None leaves stay None.
    Leaving torch detaches (the copy is a snapshot of the weights)."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        return {k: params_to(v, backend) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [params_to(v, backend) for v in params]
    src = _backends.of(params)
    host = np.asarray(params) if src.name == "numpy" else src.to_numpy(params)
    return _backends.get(backend).from_numpy(np.array(host))


def framework_params_api(backend: str) -> tuple[Any, Any, Any]:
    """(init_block_params, init_causal_lm_params, params_from) returning `backend` arrays: the
    parameter entry points of functional_jax / functional_mlx, written once."""

    def init_block(config: BlockConfig, seed: int = 0) -> dict[str, Any]:
        return params_to(init_block_params(config, np.random.default_rng(seed)), backend)

    def init_lm(vocab: int, num_layers: int, config: BlockConfig, seed: int = 0) -> dict[str, Any]:
        return params_to(init_causal_lm_params(vocab, num_layers, config, np.random.default_rng(seed)), backend)

    def params_from(params: Any) -> Any:
        return params_to(params, backend)

    init_block.__doc__ = f"Parameters of one block as {backend} arrays (float32)."
    init_lm.__doc__ = f"Parameters of causal_lm as {backend} arrays (float32)."
    params_from.__doc__ = (f"A parameter tree of another framework (e.g. `scree.nn.TransformerBlock(...).params()`) "
                           f"as {backend} arrays.")
    for f, name in ((init_block, "init_block_params"), (init_lm, "init_causal_lm_params"), (params_from, "params_from")):
        f.__name__ = f.__qualname__ = name
    return init_block, init_lm, params_from

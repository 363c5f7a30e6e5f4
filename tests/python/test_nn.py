"""scree.nn: the torch modules on packed Arrays against an independent padded implementation with
masks (forward and gradients, fp64), rotary positions restarting per sequence, and the JAX / MLX
functional forms against the torch modules with the same weights (forward, jit, gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import scree  # noqa: E402
from scree.nn import BlockConfig, CausalLM, RMSNorm, RotaryEmbedding, SwiGLU, TransformerBlock  # noqa: E402
from scree.nn import functional as F  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LENGTHS = [5, 1, 9, 0, 3]  # an empty sequence too: legal everywhere


# ---- an independent padded reference (plain torch, masks, no scree) -------------------------------

def _rms(h, w, eps):
    return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, base):
    """x (B, L, H, D), positions 0..L-1 in every row (right padding)."""
    L, D = x.shape[1], x.shape[3]
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None]
    ang = torch.cat([ang, ang], -1)[None, :, None, :]
    rot = torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)
    return x * ang.cos().to(x.dtype) + rot * ang.sin().to(x.dtype)


def padded_block(x, mask, p, c: BlockConfig):
    """The pre-norm block on padded x (B, L, dim) with a key-padding mask (B, L) and explicit
    causal / window masks, GQA by repeating kv heads."""
    B, L, _ = x.shape
    Hq, Hk, Dh = c.num_heads, c.num_kv_heads, c.head_dim
    h = _rms(x, p["attn_norm"], c.eps)
    qkv = h @ p["w_qkv"].T
    q = qkv[..., :Hq * Dh].reshape(B, L, Hq, Dh)
    k = qkv[..., Hq * Dh:(Hq + Hk) * Dh].reshape(B, L, Hk, Dh)
    v = qkv[..., (Hq + Hk) * Dh:].reshape(B, L, Hk, Dh)
    if c.rope_base is not None:
        q, k = _rope(q, c.rope_base), _rope(k, c.rope_base)
    k, v = k.repeat_interleave(Hq // Hk, dim=2), v.repeat_interleave(Hq // Hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * (c.scale or 1 / math.sqrt(Dh))
    if c.softcap:
        s = c.softcap * torch.tanh(s / c.softcap)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    visible = mask[:, None, None, :].expand(B, 1, L, L)
    if c.causal:
        visible = visible & (j <= i)
    if c.window is not None:
        left, right = c.window
        if left is not None:
            visible = visible & (j >= i - left)
        if right is not None:
            visible = visible & (j <= i + right)
    attn = torch.softmax(s.masked_fill(~visible, float("-inf")), -1).nan_to_num(0.0)
    o = torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(B, L, Hq * Dh) @ p["w_o"].T
    h = x + o
    m = _rms(h, p["mlp_norm"], c.eps)
    m = (torch.nn.functional.silu(m @ p["w_gate"].T) * (m @ p["w_up"].T)) @ p["w_down"].T
    return h + m


CONFIGS = {
    "gqa-causal": BlockConfig(dim=32, num_heads=4, num_kv_heads=2, mlp_hidden=48),
    "mha-bidirectional": BlockConfig(dim=32, num_heads=2, causal=False, mlp_hidden=40),
    "mqa-window-softcap": BlockConfig(dim=32, num_heads=4, num_kv_heads=1, head_dim=12, causal=True,
                                      window=(3, 0), softcap=1.5, scale=0.3),
    "no-rope-window": BlockConfig(dim=24, num_heads=3, rope_base=None, causal=False, window=(2, 1)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_block_matches_padded_reference(name, rng):
    c = CONFIGS[name]
    torch.manual_seed(int(rng.integers(1 << 31)))
    block = TransformerBlock(config=c).double()
    with torch.no_grad():  # norms away from 1 so their weights matter
        block.attn_norm.weight.uniform_(0.5, 1.5)
        block.mlp_norm.weight.uniform_(0.5, 1.5)
    seqs = [torch.randn(n, c.dim, dtype=torch.float64) for n in LENGTHS]
    x = scree.pack(seqs)
    xv = x.values.detach().requires_grad_(True)
    out = block(x.with_values(xv))
    assert isinstance(out, scree.Array) and out.offsets.tolist() == x.offsets.tolist()

    padded, mask = x.to_padded()
    padded = padded.detach().requires_grad_(True)
    ref = padded_block(padded, mask, block.params(), c)
    ref_packed = scree.from_padded(ref, mask=mask).values
    torch.testing.assert_close(out.values, ref_packed, rtol=1e-10, atol=1e-10)

    # Gradients: the same random cotangent on the real tokens only.
    g = torch.randn_like(out.values)
    params = list(block.parameters())
    grads = torch.autograd.grad(out.values, [xv, *params], g)
    g_pad = scree.from_lengths(g, LENGTHS).to_padded()[0]
    ref_grads = torch.autograd.grad(ref, [padded, *params], g_pad)
    torch.testing.assert_close(grads[0], scree.from_padded(ref_grads[0], mask=mask).values, rtol=1e-9, atol=1e-10)
    for a, b in zip(grads[1:], ref_grads[1:]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_rotary_restarts_at_each_sequence(rng):
    """A packed batch rotates exactly as each sequence alone; position 0 is the identity."""
    rope = RotaryEmbedding(8, base=100.0)
    seqs = [torch.from_numpy(rng.standard_normal((n, 3, 8)).astype(np.float32)) for n in (4, 7, 1)]
    packed = rope(scree.pack(seqs))
    for s, got in zip(seqs, packed):
        alone = rope(scree.pack([s])).values
        torch.testing.assert_close(got, alone, rtol=0, atol=0)
        torch.testing.assert_close(got[0], s[0], rtol=0, atol=0)
        torch.testing.assert_close(got, _rope(s[None].double(), 100.0)[0].float(), rtol=1e-5, atol=1e-6)


def test_token_wise_modules_take_arrays_and_tensors(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    x = scree.from_lengths(torch.randn(9, 16), [2, 7])
    norm, mlp = RMSNorm(16, eps=1e-5), SwiGLU(16, 24)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    for mod, ref in ((norm, lambda t: _rms(t, norm.weight, 1e-5)),
                     (mlp, lambda t: mlp.down(torch.nn.functional.silu(mlp.gate(t)) * mlp.up(t)))):
        out = mod(x)
        assert isinstance(out, scree.Array) and out.lengths.tolist() == [2, 7]
        torch.testing.assert_close(out.values, ref(x.values), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mod(x.values), out.values, rtol=0, atol=0)


def test_causal_lm_packed_equals_one_by_one(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = CausalLM(vocab=32, num_layers=2, dim=32, num_heads=4, num_kv_heads=2)
    seqs = [torch.from_numpy(rng.integers(0, 32, n)) for n in (6, 2, 11)]
    with torch.no_grad():
        packed = model(scree.pack(seqs))
        for s, got in zip(seqs, packed):
            torch.testing.assert_close(got, model(scree.pack([s])).values, rtol=1e-5, atol=1e-5)


def test_config_checks():
    with pytest.raises(scree.ArgumentError, match="multiple of num_kv_heads"):
        BlockConfig(dim=32, num_heads=4, num_kv_heads=3)
    with pytest.raises(scree.ArgumentError, match="even head_dim"):
        BlockConfig(dim=30, num_heads=2)
    with pytest.raises(TypeError):
        TransformerBlock(config=BlockConfig(dim=8, num_heads=2), dim=8)


# ---- JAX and MLX functional forms share the definition ----------------------------------------

def _torch_reference(c: BlockConfig, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    block = TransformerBlock(config=c)
    with torch.no_grad():
        block.attn_norm.weight.uniform_(0.5, 1.5)
    x = scree.pack([torch.from_numpy(rng.standard_normal((n, c.dim)).astype(np.float32)) for n in LENGTHS])
    xv = x.values.requires_grad_(True)
    out = block(x.with_values(xv))
    (out.values ** 2).sum().backward()
    return block, x, out.values.detach().numpy(), xv.grad.numpy()


def test_jax_functional_matches_torch(rng):
    jax = pytest.importorskip("jax")
    from scree.nn import functional_jax as FJ

    c = CONFIGS["gqa-causal"]
    block, x, want, want_grad = _torch_reference(c, rng)
    params = FJ.params_from(block.params())
    xj = x.to("jax")
    got = jax.jit(FJ.transformer_block, static_argnums=2)(xj, params, c)
    np.testing.assert_allclose(np.asarray(got.values), want, rtol=1e-4, atol=1e-5)
    assert np.asarray(got.offsets).tolist() == x.offsets.tolist()

    def loss(values):
        return (FJ.transformer_block(xj.with_values(values), params, c).values ** 2).sum()
    grad = jax.jit(jax.grad(loss))(xj.values)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-4)


def test_mlx_functional_matches_torch(rng):
    mx = pytest.importorskip("mlx.core")
    from scree.nn import functional_mlx as FM

    c = CONFIGS["gqa-causal"]
    block, x, want, want_grad = _torch_reference(c, rng)
    params = FM.params_from(block.params())
    xm = x.to("mlx")
    got = FM.transformer_block(xm, params, c)
    np.testing.assert_allclose(np.array(got.values), want, rtol=1e-4, atol=1e-5)

    def loss(values):
        return (FM.transformer_block(xm.with_values(values), params, c).values ** 2).sum()
    grad = mx.grad(loss)(xm.values)
    np.testing.assert_allclose(np.array(grad), want_grad, rtol=1e-4, atol=1e-4)


def test_numpy_functional_matches_torch(rng):
    """The same definition runs on NumPy (forward only: NumPy has no autograd)."""
    c = CONFIGS["mqa-window-softcap"]
    block, x, want, _ = _torch_reference(c, rng)
    got = F.transformer_block(x.to("numpy"), F.params_to(block.params(), "numpy"), c)
    np.testing.assert_allclose(got.values, want, rtol=1e-4, atol=1e-5)


def test_init_params_run_everywhere(rng):
    """Functional parameter initialisation gives a working block (fresh NumPy params on torch). The
    functional call runs without autograd, the module's with it: the CPU attention then takes its
    few-rows path for the 1- and 3-token sequences only in the first (fwd_few_rows.h, for calls that
    ask for no lse), so the two agree to float32 rounding, not bit for bit."""
    c = CONFIGS["gqa-causal"]
    p = F.params_to(F.init_block_params(c, rng), "torch")
    block = TransformerBlock(config=c)
    with torch.no_grad():
        for name, t in zip(block.params(), block.params().values()):
            if t is not None:
                t.copy_(p[name])
    x = scree.pack([torch.randn(n, c.dim) for n in LENGTHS])
    torch.testing.assert_close(F.transformer_block(x, p, c).values, block(x).values.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_block_on_cuda_matches_cpu(rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    c = CONFIGS["gqa-causal"]
    torch.manual_seed(int(rng.integers(1 << 31)))
    block = TransformerBlock(config=c)
    x = scree.pack([torch.randn(n, c.dim) for n in LENGTHS])
    with torch.no_grad():
        want = block(x).values
        got = block.cuda()(x.to(device="cuda")).values.cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

"""Multimodal packing: per example, a text prompt, an image (a variable number of patches, or
none) and a text continuation, interleaved into ONE scree.Array with no padding anywhere, then
positions (for RoPE), varlen attention and per-example pooling, on every installed backend.

    text_a[i] ++ image[i] ++ text_b[i]   for each example i   ->   scree.concat_sequences

The batch is built once on NumPy (the reference result) and moved to torch, JAX and MLX with
`Array.to(...)`; each backend must agree with NumPy. Backends that are not installed are skipped.
"""

import importlib
import time

import numpy as np

import scree

D, HEADS, PATCH = 32, 4, 48  # model dim, attention heads, pixels per image patch
rng = np.random.default_rng(0)

# ---- one batch of 6 examples: token ids, image patches (0 to 3 images of 4 patches each) ----------
text_a_lengths = [5, 0, 12, 3, 7, 1]          # prompt tokens (one example has no prompt)
patch_counts = [8, 4, 0, 12, 4, 0]            # image patches (two examples have no image)
text_b_lengths = [3, 9, 2, 0, 6, 4]           # continuation tokens
vocab = rng.standard_normal((100, D)).astype(np.float32) * 0.5   # a token embedding table
patch_proj = (rng.standard_normal((PATCH, D)) / np.sqrt(PATCH)).astype(np.float32)

token_ids_a = scree.from_lengths(rng.integers(0, 100, sum(text_a_lengths)), text_a_lengths)
token_ids_b = scree.from_lengths(rng.integers(0, 100, sum(text_b_lengths)), text_b_lengths)
pixels = scree.from_lengths(rng.standard_normal((sum(patch_counts), PATCH)).astype(np.float32), patch_counts)

# Embed each modality on its own packed rows (token-wise work touches no padding).
text_a = token_ids_a.map(lambda ids: vocab[ids])
text_b = token_ids_b.map(lambda ids: vocab[ids])
image = pixels.map(lambda p: p @ patch_proj)
# Which modality each token has (0 text, 1 image), packed the same way.
kind = [a.map(lambda v, k=k: np.full(v.shape[0], k, np.int32)) for a, k in ((text_a, 0), (image, 1), (text_b, 0))]

wq, wk, wv = ((rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32) for _ in range(3))


def forward(text_a, image, text_b, kind, wq, wk, wv):
    """The same code for every backend: interleave, then attend within each example."""
    seq = scree.concat_sequences([text_a, image, text_b])          # one packed multimodal batch
    modality = scree.concat_sequences(kind)
    positions = seq.positions()                                     # restart at 0 per example
    heads = lambda w: seq.map(lambda x: (x @ w).reshape(x.shape[0], HEADS, D // HEADS))  # noqa: E731
    out = scree.varlen_attention(heads(wq), heads(wk), heads(wv), causal=True)
    pooled = out.map(lambda o: o.reshape(o.shape[0], D)).mean()    # one vector per example
    return seq, modality, positions, pooled


want_seq, want_kind, want_pos, want_pooled = forward(text_a, image, text_b, kind, wq, wk, wv)
lengths = [a + p + b for a, p, b in zip(text_a_lengths, patch_counts, text_b_lengths)]
assert want_seq.lengths.tolist() == lengths
padded_tokens = len(lengths) * max(lengths)
print(f"{len(lengths)} examples, {want_seq.total} tokens packed "
      f"({padded_tokens} if padded: {100 * (1 - want_seq.total / padded_tokens):.0f}% saved)")
print("example 0 modalities:", "".join("TI"[k] for k in want_kind[0].tolist()))

# A direct check of the interleaving on NumPy: example i = text_a[i] ++ image[i] ++ text_b[i].
for i in range(len(lengths)):
    np.testing.assert_array_equal(want_seq[i], np.concatenate([text_a[i], image[i], text_b[i]]))
    np.testing.assert_array_equal(want_pos[want_seq.host_offsets[i]:want_seq.host_offsets[i + 1]],
                                  np.arange(lengths[i]))


def to_numpy(x):
    """Any backend's array as NumPy, for the comparison."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


print(f"{'backend':8s} {'ms (1st call)':>13s}  max |pooled - numpy|")
for backend, module in (("numpy", "numpy"), ("torch", "torch"), ("jax", "jax"), ("mlx", "mlx.core")):
    try:
        lib = importlib.import_module(module)
    except ImportError as e:
        print(f"{backend:8s} skipped ({e})")
        continue
    pieces = [a.to(backend) for a in (text_a, image, text_b)]
    kinds = [a.to(backend) for a in kind]
    weights = [scree.from_lengths(w, [D]).to(backend).values for w in (wq, wk, wv)]  # dense, same route
    # With JAX the whole step compiles once under jax.jit (Arrays are pytrees; it would compile
    # once per (total, n) shape, whatever the lengths); eagerly it would compile op by op.
    step = lib.jit(forward) if backend == "jax" else forward
    start = time.perf_counter()
    seq, modality, positions, pooled = step(*pieces, kinds, *weights)
    got = to_numpy(pooled)
    ms = 1000 * (time.perf_counter() - start)
    assert seq.backend == backend and seq.lengths.tolist() == lengths
    np.testing.assert_array_equal(to_numpy(modality.values), want_kind.values)
    np.testing.assert_array_equal(to_numpy(positions), want_pos)
    np.testing.assert_allclose(got, want_pooled, rtol=1e-4, atol=1e-5)
    print(f"{backend:8s} {ms:13.1f}  {np.max(np.abs(got - want_pooled)):.1e}")

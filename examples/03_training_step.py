"""Training through scree: a small causal language model (scree.nn.CausalLM: embedding, two pre-norm
blocks with GQA varlen attention, SwiGLU) learns a synthetic task on packed batches of
variable-length sequences, with autograd through scree.varlen_attention's compiled kernel.

The task: each sequence opens with a class token (one of 8, drawn from its own part of the
vocabulary) followed by ordinary tokens; at every position, predict the class of the token's
*own* sequence. It needs attention (the answer sits at the sequence start) and it needs the
sequence boundaries to hold: in a packed batch, a token that could see the neighbouring
sequences would also see their class tokens. The loss must drop at least 80x over 30 steps. Runs on the CPU, and on a GPU when
one is present."""

from __future__ import annotations

import time

import numpy as np
import torch

import scree
from scree.nn import CausalLM

VOCAB, CLASSES, STEPS = 24, 8, 30  # ids 0..7 are class tokens, 8..23 ordinary tokens
device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cpu":
    torch.set_num_threads(1)  # ops this small run fastest on one thread (scree's kernels keep their own)
torch.manual_seed(0)
rng = np.random.default_rng(0)


def batch(n: int = 24) -> tuple[scree.Array, torch.Tensor]:
    """Packed token ids of n sequences (lengths 2..40, skewed) and the per-token targets."""
    lengths = np.clip(rng.lognormal(np.log(10), 0.7, n).astype(np.int64), 2, 40)
    seqs = [torch.from_numpy(np.concatenate([rng.integers(0, CLASSES, 1), rng.integers(CLASSES, VOCAB, int(L) - 1)]))
            for L in lengths]
    tokens = scree.pack(seqs).to(device=device)
    targets = torch.cat([s[:1].expand(len(s)) for s in seqs]).to(device)
    return tokens, targets


model = CausalLM(VOCAB, num_layers=2, dim=64, num_heads=4, num_kv_heads=2, mlp_hidden=128).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
losses = []
t0 = time.perf_counter()
for step in range(STEPS):
    tokens, targets = batch()
    logits = model(tokens)                      # an Array: (total, VOCAB) with the tokens' offsets
    loss = torch.nn.functional.cross_entropy(logits.values, targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
    if step % 5 == 0 or step == STEPS - 1:
        print(f"step {step:2d}  tokens {tokens.total:4d}  loss {loss.item():.4f}")
elapsed = time.perf_counter() - t0

drop = losses[0] / losses[-1]
print(f"{device}: loss {losses[0]:.3f} -> {losses[-1]:.4f} ({drop:.0f}x lower) in {STEPS} steps, {elapsed:.1f} s")
assert drop >= 80, f"loss dropped only {drop:.1f}x"

# The trained model answers each sequence alone as it does inside a packed batch.
tokens, targets = batch(6)
with torch.no_grad():
    packed = model(tokens)
    for i in range(len(tokens)):
        alone = model(scree.pack([tokens[i]])).values
        torch.testing.assert_close(packed[i], alone, rtol=1e-4, atol=1e-4)
    accuracy = (packed.values.argmax(-1) == targets).float().mean().item()
print(f"held-out accuracy {accuracy:.1%}; packed logits equal per-sequence logits")
assert accuracy > 0.95

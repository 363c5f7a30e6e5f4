"""64-bit sizes on the GPU: scree.varlen_attention (forward and backward through torch autograd, both
backward modes) on torch CUDA tensors of more than 2^31 elements, whose byte offsets pass 2^32, so
any 32-bit element or byte index in the kernels, their TMA tensor maps or the dQ accumulator
wraps and lands on the wrong tokens. 33,000 sequences of 64 tokens (8 heads of 128, bf16,
causal) with a few odd lengths at the very end; the first sequence and those past 2^31 elements
are checked against the fp64 reference with FlashAttention's rule (attention_checks.py), the
outputs and gradients read back per sequence. Needs ~50 GB of free GPU memory (skipped below
that); a few seconds on an H200."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import scree  # noqa: E402

from attention_checks import check_against_references, fresh_seed, generator, random_values, reference_pair  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]

HEADS, D, L = 8, 128, 64
# Odd lengths at offsets past 2^31 elements: longer than a tile (the dq accumulator), or all within
# one 128-key tile (on sm_90 the kernel then writes dq itself and the workspace has no accumulator).
TAILS = {"long": [1, 17, 130, 300, 63], "short": [1, 17, 128, 100, 63]}


def _free_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


@pytest.mark.skipif(_free_bytes() < 60 * 2 ** 30, reason="needs ~50 GB of free GPU memory")
@pytest.mark.parametrize("tail", list(TAILS), ids=list(TAILS))
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_forward_backward_past_2_31_elements(deterministic, tail, monkeypatch):
    monkeypatch.setenv("SCREE_DETERMINISTIC", "1" if deterministic else "0")
    n = 2 ** 31 // (HEADS * D * L) + 64  # enough 64-token sequences to pass 2^31 elements
    lengths = [L] * n + TAILS[tail]
    total = sum(lengths)
    assert total * HEADS * D > 2 ** 31 + len(TAILS[tail]) * HEADS * D
    seed = fresh_seed()
    gen = generator(seed, "cuda")
    q, k, v, dout = (random_values((total, HEADS, D), torch.bfloat16, "cuda", gen) for _ in range(4))
    leaves = [x.requires_grad_(True) for x in (q, k, v)]
    arrays = [scree.from_lengths(x, lengths) for x in leaves]
    out, lse = scree.varlen_attention(*arrays, causal=True, return_lse=True)
    grads = torch.autograd.grad(out.values, leaves, dout)
    torch.cuda.synchronize()

    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    checked = [0] + list(range(n, len(lengths)))
    assert offsets[n] * HEADS * D > 2 ** 31  # every tail sequence starts past 2^31 elements
    for i in checked:
        lo, hi = offsets[i], offsets[i + 1]
        one = [scree.from_lengths(x.detach()[lo:hi], [hi - lo]) for x in (q, k, v)]
        ref64, low = reference_pair(*one, dout[lo:hi], {"causal": True})
        got = (out.values.detach()[lo:hi], lse[:, lo:hi], tuple(g[lo:hi] for g in grads))
        check_against_references(f"sequence {i} (tokens {lo}..{hi}, deterministic={deterministic})", got, ref64,
                                 low, seed)

"""bf16 CPU attention forward where a row's maximum keeps rising across key blocks, against the fp64
reference by FlashAttention's rule. The AMX forward (src/cpu/attention/fwd_amx.cpp) takes one pass
over a block with the row's earlier maximum and redoes a row whose scores rose more than 8 (log2
units) above it, so the cases make later keys' scores rise by a chosen amount (keys whose norms grow
along the sequence): none, a little, past the redo threshold, far past it, falling, under causal
masks and a softcap. Runs on whatever CPU build this machine picks (scree._C.cpu_isa())."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import scree  # noqa: E402

from attention_checks import assert_fa_close, assert_lse_close, reference_pair  # noqa: E402

CASES = [  # (length, rise of the scores from the first key to the last (natural-log units), D, causal, softcap)
    (512, 0.0, 128, False, 0.0),
    (1024, 3.0, 128, False, 0.0),
    (1024, 8.0, 64, False, 0.0),
    (777, 40.0, 64, False, 0.0),
    (1024, 20.0, 128, True, 0.0),
    (600, 20.0, 128, False, 30.0),
    (600, -20.0, 128, True, 0.0),
]


@pytest.mark.parametrize("L,rise,D,causal,cap", CASES)
def test_bf16_forward_with_rising_row_maxima(L, rise, D, causal, cap):
    g = torch.Generator().manual_seed(int(L + 10 * rise))
    H = 2
    q, k, v = (torch.randn(2 * L, H, D, generator=g) for _ in range(3))
    j = torch.arange(L, dtype=torch.float32).repeat(2)
    k = k * (1 + max(rise, -0.9 * D ** 0.5) / D ** 0.5 * j / L)[:, None, None]
    Q, K, V = (scree.from_lengths(x.to(torch.bfloat16), [L, L]) for x in (q, k, v))
    opts = dict(causal=causal, softcap=cap)
    out, lse = scree.varlen_attention(Q, K, V, return_lse=True, **opts)
    ref64, low = reference_pair(Q, K, V, None, opts)
    assert_fa_close(f"out ({scree._C.cpu_isa()})", out.values, ref64[0], low[0])
    assert_lse_close(f"lse ({scree._C.cpu_isa()})", lse, ref64[1], low[1])

"""Worker of tests/python/test_cpu_isa.py, run in a fresh process with SCREE_CPU_ISA set (the CPU
attention picks its build once a process): prints the build in use, then checks forward and
backward of scree.varlen_attention on the CPU against the fp64 reference, float32 by
FlashAttention's rule and float64 to 1e-9: lengths 0, 1, odd, longer than a 96-row block, q and k
lengths that differ, GQA, causal, a window, a softcap, head dims 32, 64, 128 and an odd 40."""

from __future__ import annotations

import torch

import scree
from scree import _C
from attention_checks import check_against_references, fwd_grads, random_qkv, reference_pair

CASES = [  # (q lengths, k lengths, heads q, heads k, d, options)
    ([0, 1, 7, 130, 33], [0, 1, 9, 130, 200], 4, 2, 64, {"causal": True}),
    ([97, 5, 250], [97, 300, 250], 2, 2, 128, {}),
    ([64, 1, 191], [64, 40, 191], 4, 1, 32, {"causal": True, "window": (20, 0), "softcap": 4.0}),
    ([17, 100], [17, 150], 3, 3, 40, {"window": (30, 5)}),
]

if __name__ == "__main__":
    print(_C.cpu_isa(), flush=True)
    for i, (lq, lk, hq, hk, d, opts) in enumerate(CASES):
        for dtype in (torch.float32, torch.float64):
            q, k, v = random_qkv(lq, lk, hq, hk, d, d, dtype, "cpu", seed=100 + i)
            dout = torch.randn(q.values.shape, dtype=dtype, generator=torch.Generator().manual_seed(i))
            got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
            if dtype == torch.float64:
                ref = fwd_grads(scree.kernels.reference.varlen_attention, q, k, v, dout, opts)
                for g, r in zip((got[0], got[1], *got[2]), (ref[0], ref[1], *ref[2])):
                    fin = torch.isfinite(r)
                    assert torch.equal(fin, torch.isfinite(g))
                    torch.testing.assert_close(g[fin], r[fin], rtol=1e-9, atol=1e-9)
            else:
                ref64, low = reference_pair(q, k, v, dout, opts)
                check_against_references(f"case {i} float32", got, ref64, low, seed=100 + i,
                                         softcap="softcap" in opts)
    print("ok", flush=True)

"""Worker of tests/python/test_cpu_isa.py, run in a fresh process with SCREE_CPU_ISA set (the CPU
attention picks its build once a process): prints the build in use, then checks forward and
backward of scree.varlen_attention on the CPU against the fp64 reference, float32, bfloat16 and
float16 by FlashAttention's rule and float64 to 1e-9: lengths 0, 1, odd, longer than a 96-row block,
q and k lengths that differ, GQA, causal, a window, a softcap, head dims 32, 64, 128 and an odd 40.
bfloat16 takes the AMX forward in the amx build (P rounded to bf16 between the tile products),
the fp32 kernel elsewhere; paged keys (scree.paged_attention, pages of 16 and 5 rows) are checked
in bfloat16 the same way."""

from __future__ import annotations

import numpy as np
import torch

import scree
from scree import _C
from scree.kernels import reference as R
from attention_checks import assert_fa_close, check_against_references, fwd_grads, random_qkv, reference_pair

CASES = [  # (q lengths, k lengths, heads q, heads k, d, options)
    ([0, 1, 7, 130, 33], [0, 1, 9, 130, 200], 4, 2, 64, {"causal": True}),
    ([97, 5, 250], [97, 300, 250], 2, 2, 128, {}),
    ([64, 1, 191], [64, 40, 191], 4, 1, 32, {"causal": True, "window": (20, 0), "softcap": 4.0}),
    ([17, 100], [17, 150], 3, 3, 40, {"window": (30, 5)}),
]

PAGED = [  # (kv lengths, q lengths, page size, heads q, heads k, d, options)
    ([37, 64, 1, 130, 16], [1, 1, 1, 1, 1], 16, 4, 2, 64, {}),
    ([37, 64, 130, 0, 70], [37, 20, 7, 0, 3], 5, 4, 1, 40, {"causal": True, "softcap": 5.0}),
    ([200, 33], [150, 33], 16, 2, 2, 128, {"causal": True, "window": (40, None)}),
]


def check_paged(i: int, kv_lens, q_lens, page_size: int, hq: int, hk: int, d: int, opts: dict) -> None:
    """bf16 paged forward against the fp64 reference on the same (bf16-rounded) values, FA rule."""
    rng = np.random.default_rng(200 + i)
    need = [(n + page_size - 1) // page_size for n in kv_lens]
    width, num_pages = max(max(need), 1), sum(need) + 3
    order = rng.permutation(num_pages)
    table = np.zeros((len(kv_lens), width), np.int32)
    at = 0
    for b, n in enumerate(need):
        table[b, :n] = order[at:at + n]
        at += n
    lens = np.asarray(kv_lens, np.int32)
    kp, vp = (torch.randn(num_pages, page_size, hk, d, generator=torch.Generator().manual_seed(300 + i + j)).add(0.1)
              .bfloat16() for j in range(2))
    q = torch.randn(sum(q_lens), hq, d, generator=torch.Generator().manual_seed(400 + i)).add(0.1).bfloat16()
    kv = scree.PagedKV(kp, vp, torch.from_numpy(table), torch.from_numpy(lens))
    got, lse = scree.paged_attention(scree.from_lengths(q, q_lens), kv, **opts, return_lse=True)
    kv64 = scree.PagedKV(kp.double().numpy(), vp.double().numpy(), table, lens)
    ref64, lse64 = R.paged_attention(scree.from_lengths(q.double().numpy(), q_lens), kv64, **opts, return_lse=True)
    low, _ = R.paged_attention(scree.from_lengths(q, q_lens), kv, **opts, upcast=False, return_lse=True)
    assert got.values.dtype == torch.bfloat16
    assert_fa_close(f"paged case {i} bfloat16 out", got.values, torch.from_numpy(ref64.values), low.values)
    finite = np.isfinite(np.asarray(lse64))
    assert np.array_equal(finite, torch.isfinite(lse).numpy()), f"paged case {i}: -inf lse rows differ"
    err = np.abs(lse.double().numpy()[finite] - np.asarray(lse64)[finite]).max(initial=0.0)
    assert err <= 1e-4, f"paged case {i} lse error {err:.3g}"


if __name__ == "__main__":
    print(_C.cpu_isa(), flush=True)
    for i, (lq, lk, hq, hk, d, opts) in enumerate(CASES):
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            q, k, v = random_qkv(lq, lk, hq, hk, d, d, dtype, "cpu", seed=100 + i)
            dout = torch.randn(q.values.shape, generator=torch.Generator().manual_seed(i)).to(dtype)
            got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
            if dtype == torch.float64:
                ref = fwd_grads(scree.kernels.reference.varlen_attention, q, k, v, dout, opts)
                for g, r in zip((got[0], got[1], *got[2]), (ref[0], ref[1], *ref[2])):
                    fin = torch.isfinite(r)
                    assert torch.equal(fin, torch.isfinite(g))
                    torch.testing.assert_close(g[fin], r[fin], rtol=1e-9, atol=1e-9)
            else:
                assert got[0].dtype == dtype
                ref64, low = reference_pair(q, k, v, dout, opts)
                check_against_references(f"case {i} {dtype}", got, ref64, low, seed=100 + i,
                                         softcap="softcap" in opts)
    for i, case in enumerate(PAGED):
        check_paged(i, *case)
    print("ok", flush=True)

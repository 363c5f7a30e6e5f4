"""Worker of tests/python/test_cpu_isa.py, run in a fresh process with SCREE_CPU_ISA set (the CPU
attention picks its build once a process): prints the build in use, then checks forward and
backward of scree.varlen_attention on the CPU against the fp64 reference, float32, bfloat16 and
float16 by FlashAttention's rule and float64 to 1e-9: lengths 0, 1, odd, longer than a 96-row block,
q and k lengths that differ, GQA, causal, a window, a softcap, head dims 32, 64, 128 and an odd 40.
bfloat16 takes the AMX forward in the amx build (P rounded to bf16 between the tile products;
calls of sequences of <= 16 tokens run the avx512 kernels there, attention_cpu.cpp's on_tiles),
the VDPBF16PS products in the avx512bf16 build (P rounded alike), the fp32 kernel elsewhere; paged keys (scree.paged_attention, pages of 16 and 5 rows) are checked
in bfloat16 the same way. bfloat16 backward extras (the AMX backward in the amx build, bwd_amx.cpp:
128-key blocks, 64-row query tiles, 32-row alignment): Dv != D, GQA 4:1 at D 128 with one long
sequence that the schedule cuts into chunks, rows with |lse| >= 32 (the statistics recomputed
from S), and exact scores of ~2^19 where the float32 lse's rounding (up to 2^-5) would move P by
3%, ten times the check's tolerance, so only recomputed statistics pass. Inference calls (no grad,
no lse: the few-rows forward, fwd_few_rows.h, whose vector width is the build's) on decode steps,
short tails, head dims with a partial vector, GQA and MHA, on 4 threads so long items are split
over their keys and combined."""

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
    ([0, 1, 7, 16], [3, 1, 16, 16], 4, 2, 64, {"causal": True}),  # <= 16 tokens: the amx build's bf16 on avx512
]

PAGED = [  # (kv lengths, q lengths, page size, heads q, heads k, d, options)
    ([37, 64, 1, 130, 16], [1, 1, 1, 1, 1], 16, 4, 2, 64, {}),
    ([37, 64, 130, 0, 70], [37, 20, 7, 0, 3], 5, 4, 1, 40, {"causal": True, "softcap": 5.0}),
    ([200, 33], [150, 33], 16, 2, 2, 128, {"causal": True, "window": (40, None)}),
]

DECODE = [  # (q lengths, k lengths, heads q, heads k, d, options): inference calls, the few-rows forward
    ([1, 1, 4, 2, 1], [5003, 0, 2301, 1500, 97], 8, 2, 64, {"causal": True}),
    ([1, 3, 1], [900, 1200, 40], 6, 6, 40, {"softcap": 3.0}),
    ([2, 1], [800, 1000], 4, 1, 128, {"causal": True, "window": (500, None)}),
]


def check_decode(i: int, lq, lk, hq: int, hk: int, d: int, opts: dict) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            q, k, v = random_qkv(lq, lk, hq, hk, d, d, dtype, "cpu", seed=700 + i)
            with torch.no_grad():
                got = scree.varlen_attention(q, k, v, **opts).values
            ref64, low = reference_pair(q, k, v, None, opts)
            assert_fa_close(f"decode case {i} {dtype} out", got, ref64[0], low[0], seed=700 + i)
    finally:
        torch.set_num_threads(before)


BF16_BWD = [  # (q lengths, k lengths, heads q, heads k, d, dv, factor on q, options)
    ([33, 0, 160], [70, 5, 129], 2, 1, 64, 32, 1.0, {"causal": True}),
    ([1, 700, 3], [1, 650, 3], 8, 2, 128, 128, 1.0, {"causal": True, "window": (200, 30)}),
    ([100, 7, 257], [100, 12, 300], 2, 2, 40, 96, 1.0, {"softcap": 3.0}),
    ([90, 1, 200], [90, 64, 260], 4, 2, 64, 64, 8.0, {}),  # lse ~ 40-80 on most rows, below 32 on some
    ([65, 2], [130, 40], 2, 1, 128, 128, 8.0, {"causal": True, "softcap": 30.0}),
]


def check_bf16_backward(i: int, lq, lk, hq: int, hk: int, d: int, dv: int, factor: float, opts: dict) -> None:
    q, k, v = random_qkv(lq, lk, hq, hk, d, dv, torch.bfloat16, "cpu", seed=500 + i)
    q = q.with_values((q.values.float() * factor).bfloat16())
    dout = torch.randn(q.values.shape[:2] + (dv,), generator=torch.Generator().manual_seed(600 + i)).bfloat16()
    got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
    ref64, low = reference_pair(q, k, v, dout, opts)
    check_against_references(f"bf16 backward case {i}", got, ref64, low, seed=500 + i, softcap="softcap" in opts)


def check_bf16_exact_large_scores(seed: int, opts: dict) -> None:
    """q = (1, a), k = (2^21, b), a, b in {+-1/2, +-1}, D 16 (scale 1/4): scores 2^19 + (a . b) / 4,
    exact in bf16 inputs and in the products' fp32 accumulation (multiples of 1/16, fp32's spacing
    there), so the kernel and the fp64 reference see the same scores. lse ~ 2^19 is rounded to
    float32 by up to 2^-5: P = exp(s - lse) would be off by up to 3% per row. dv and dk within 1%
    (relative to their largest entry); dq past component 0 too (component 0, 2^21 / 4 times a sum
    of dS that cancels to ~0, is left to rounding as in test_attention_bwd.cpp)."""
    rng = np.random.default_rng(seed)
    lq, lk, hq, hk, D = [40, 1, 130], [40, 3, 150], 4, 2, 16

    def dyadic(n, h):
        return rng.choice([-1.0, -0.5, 0.5, 1.0], size=(n, h, D))
    qv, kv, vv, dov = dyadic(sum(lq), hq), dyadic(sum(lk), hk), dyadic(sum(lk), hk), dyadic(sum(lq), hq)
    qv[..., 0], kv[..., 0] = 1.0, 2.0 ** 21
    q, k = scree.from_lengths(torch.from_numpy(qv).bfloat16(), lq), scree.from_lengths(torch.from_numpy(kv).bfloat16(), lk)
    v, dout = k.with_values(torch.from_numpy(vv).bfloat16()), torch.from_numpy(dov).bfloat16()
    got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
    ref64, _ = reference_pair(q, k, v, dout, opts)
    assert float(ref64[1][torch.isfinite(ref64[1])].abs().min()) > 2.0 ** 18, "not the large-lse regime"
    for name, g, r in zip(("dq", "dk", "dv"), got[2], ref64[2]):
        g, r = g.double(), r.double()
        if name == "dq":
            assert torch.isfinite(g[..., 0]).all(), f"exact large scores {opts}: dq component 0 not finite"
            g, r = g[..., 1:], r[..., 1:]
        err = float((g - r).abs().max()) / float(r.abs().max())
        assert err <= 1e-2, f"exact large scores {opts}: {name} relative error {err:.3g} (seed {seed})"


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
    for i, case in enumerate(DECODE):
        check_decode(i, *case)
    for i, case in enumerate(BF16_BWD):
        check_bf16_backward(i, *case)
    for j, opts in enumerate(({}, {"causal": True}, {"window": (9, 2)})):
        check_bf16_exact_large_scores(900 + j, opts)
    print("ok", flush=True)

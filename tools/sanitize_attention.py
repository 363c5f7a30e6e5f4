#!/usr/bin/env python3
"""A few small varlen attention forward + backward cases through scree._C directly on torch CUDA
tensors, meant to run under compute-sanitizer (tools/gpu_check.sh runs it with --tool memcheck and
--tool racecheck, PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation and an
out-of-bounds access cannot land silently in a neighbour).

Cases: bf16 and fp16, head dims 64 and 128 (those this build compiled), lengths 0, 1 and odd, q
longer and shorter than k, causal and not, a window, GQA 2 and MQA; the forward through both kernels
(SCREE_CUDA_PATH=sm80, and the default: Hopper's on sm_90 where compiled), each followed by that
path's backward in default and deterministic mode. Outputs (out, lse, dq, dk, dv) and the backward workspace are poisoned (NaN /
0xFF) before each call; every element must be written, and the results must pass FlashAttention's
tolerance rule against the fp64 reference (the reference in the input dtype as the baseline). The
references run on the CPU, so the only GPU kernels are scree's and torch's fills and copies. First,
the device check of offsets (scree._C.offsets_summary_cuda) against NumPy.

    python tools/sanitize_attention.py            # exit 0: all cases passed; 1: a mismatch; 2: no GPU
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
import scree  # noqa: E402
from scree.kernels.reference import varlen_attention as reference  # noqa: E402

from attention_checks import (  # noqa: E402
    assert_fa_close, assert_lse_close, c_varlen_bwd, c_varlen_fwd, cpu64, cuda_head_dims, cuda_path, fwd_grads, poisoned,
    random_qkv, random_values, generator,
)

DEVICE = "cuda"
CASES = [  # (name, q lengths, k lengths, heads q, heads k, options)
    ("edge causal gqa2", [0, 1, 3, 17, 0, 5], [0, 1, 5, 17, 4, 0], 4, 2, {"causal": True}),
    ("odd full mqa", [77, 1, 9], [64, 130, 9], 4, 1, {}),
    ("window q>k", [131, 2], [40, 2], 2, 2, {"window": (16, 3), "softcap": 5.0}),
    # several key tiles and query blocks per sequence (the Hopper backward walks both)
    ("long causal gqa2", [300, 140], [300, 200], 4, 2, {"causal": True}),
    # causal over more than 8 key tiles: the Hopper backward ranks the sequences longest first
    ("long causal ranked", [1200, 1, 0, 1030], [1200, 1, 5, 1100], 2, 1, {"causal": True}),
    # sequences <= 64 in packed tiles: ends off the 8-row grid, keys of an empty query sequence
    ("short packed gqa2", [63, 2, 64, 1, 7, 57, 9, 0, 55, 33], [60, 5, 64, 0, 9, 50, 3, 40, 64, 33], 4, 2,
     {"causal": True}),
]


def on_device(a: scree.Array) -> scree.Array:
    return a.to(device=DEVICE)


def run_case(name: str, lq, lk, hq: int, hk: int, d: int, dtype: torch.dtype, opts: dict, seed: int) -> None:
    # inputs drawn on the CPU (fewer instrumented kernels), then copied to the GPU
    qc, kc, vc = random_qkv(lq, lk, hq, hk, d, d, dtype, "cpu", seed)
    doutc = random_values((qc.total, hq, d), dtype, "cpu", generator(seed + 1, "cpu"))
    q, k, v = (on_device(a) for a in (qc, kc, vc))
    dout = doutc.to(DEVICE)

    ref64 = fwd_grads(reference, *(cpu64(a) for a in (qc, kc, vc)), doutc.to(torch.float64), opts)
    low = fwd_grads(lambda *a, **kw: reference(*a, upcast=False, **kw), qc, kc, vc, doutc, opts)

    for path in ("sm80", "sm90"):  # both paths (Hopper's where compiled); the forward's output feeds the backward
        out = poisoned((q.total, hq, d), dtype, DEVICE)
        lse = poisoned((hq, q.total), torch.float32, DEVICE)
        with cuda_path(path):
            c_varlen_fwd(q, k, v, out, lse, opts)
        for what, x in (("out", out), ("lse", lse)):
            assert not torch.isnan(x).any(), f"[{path}] {what}: {int(torch.isnan(x).sum())} elements not written"
        assert_fa_close(f"[{path}] out", out, ref64[0], low[0], seed=seed)
        assert_lse_close(f"[{path}] lse", lse, ref64[1], low[1], seed=seed)

        for det in (False, True):
            grads = [poisoned(a.values.shape, dtype, DEVICE) for a in (q, k, v)]
            with cuda_path(path):
                c_varlen_bwd(dout, q, k, v, out, lse, *grads, opts, deterministic=det)
            for what, g, r, lo in zip(("dq", "dk", "dv"), grads, ref64[2], low[2]):
                label = f"[{path}] {what} (deterministic={det})"
                assert not torch.isnan(g).any(), f"{label}: {int(torch.isnan(g).sum())} not written"
                assert_fa_close(label, g, r, lo, rtol=3.0, extra_atol=1e-5 + (3e-4 if opts.get("softcap") else 0.0),
                                seed=seed)


def check_offsets_summary() -> None:
    """The device check of offsets (one scree kernel writing into mapped pinned memory) against
    NumPy, int32 and int64, one offset, a block's worth and more, a negative step."""
    rng = np.random.default_rng(7)
    for count in (1, 2, 7, 257, 5000):
        host = np.concatenate([[3], 3 + np.cumsum(rng.integers(-2, 50, count - 1))]).astype(np.int64)
        steps = np.diff(host)
        want = [host[0], host[-1], steps.min() if count > 1 else 0, steps.max() if count > 1 else 0]
        for dt in (torch.int32, torch.int64):
            off = torch.from_numpy(host).to(dt).to(DEVICE)
            got = scree._C.offsets_summary_cuda(torch.utils.dlpack.to_dlpack(off), 0).value().tolist()
            assert got == [int(x) for x in want], f"offsets summary, count {count}, {dt}: {got} != {want}"


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitize_attention.py needs a CUDA GPU", file=sys.stderr)
        return 2
    dims = cuda_head_dims()
    if not dims:
        print("scree._C lists no CUDA head dims (cuda_head_dims missing or empty): no CUDA attention to check",
              file=sys.stderr)
        return 1
    failures = 0
    t0 = time.perf_counter()
    try:
        check_offsets_summary()
        print("ok   offsets summary", flush=True)
    except Exception as e:  # noqa: BLE001
        failures += 1
        print(f"FAIL offsets summary: {type(e).__name__}: {str(e)[:400]}", flush=True)
    seed = 1234
    for dtype in (torch.bfloat16, torch.float16):
        for d in (x for x in (64, 128) if x in dims):
            for name, lq, lk, hq, hk, opts in CASES:
                seed += 7
                label = f"{name:<18} {str(dtype).removeprefix('torch.'):<8} d{d:<3}"
                try:
                    run_case(name, lq, lk, hq, hk, d, dtype, opts, seed)
                    print(f"ok   {label}", flush=True)
                except Exception as e:  # noqa: BLE001 - report every case, then fail at the end
                    failures += 1
                    print(f"FAIL {label}: {type(e).__name__}: {str(e)[:400]}", flush=True)
                    if not isinstance(e, AssertionError):
                        traceback.print_exc()
    torch.cuda.synchronize()
    print(f"{'all cases passed' if not failures else f'{failures} case(s) FAILED'} "
          f"({time.perf_counter() - t0:.1f} s, head dims {dims})", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

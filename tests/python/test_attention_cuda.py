"""scree.varlen_attention on torch CUDA tensors (and JAX GPU arrays) against the fp64 reference, with
FlashAttention's tolerance rule (helpers in attention_checks.py): the kernel's max error vs fp64
must be <= 2x (outputs) / 3x (gradients) the error of the same computation done by the reference in
the input dtype, plus an atol at the dtype's rounding of the result.

Every test is marked `cuda` and skipped without a visible GPU. Covered: bf16 and fp16; head dims 64
and 128; lengths 0, 1, odd, longer than a tile (130, 300, 1000); q and k lengths differing both ways
within one batch; causal (bottom-right) and not; GQA 1, 2, 8 and MQA; sliding windows (left only,
both sides, causal + left); softcap; custom scale; lse; zero sequences; 500 sequences; the forward
through both CUDA kernels (SCREE_CUDA_PATH=sm90: Hopper's on sm_90 where compiled; =sm80); direct
scree._C calls into NaN-poisoned outputs (every element written, rows with no visible key 0 with
lse -inf, keys nobody sees get zero gradients); row maxima that keep moving (lazy rescaling); backward in default and deterministic
(SCREE_DETERMINISTIC=1, read at call time: two runs bit-identical) mode; FA-2 (aten varlen op) on
the same inputs where it supports the case; torch.compile(fullgraph=True) forward and backward;
no device synchronisation for Arrays with host bookkeeping; bad input (typed errors, documented
fallbacks); JAX on the GPU (jit forward, jax.grad). Inputs are fresh random normals every run;
failure messages carry the seed. Whole file: well under 2 minutes on an H100."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

# JAX (if a test below uses it on the GPU) must not preallocate 75% of the card that torch shares.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import scree  # noqa: E402
from scree.kernels.reference import varlen_attention as reference  # noqa: E402

from attention_checks import (  # noqa: E402
    assert_fa_close, assert_lse_close, c_args, c_varlen_fwd, check_against_references, check_backward_direct, cpu64,
    cuda_head_dims, cuda_path, deterministic, fresh_seed, fwd_grads, generator, has_kernel, kernel_offsets, max_abs_diff,
    poisoned, random_qkv, random_values, reference_pair, stream_of,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]

DEV = "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
HEAD_DIMS = [64, 128]

LENGTHS = {  # (q lengths, k lengths) per sequence
    "edge": ([0, 1, 3, 0, 17, 1, 2], [0, 1, 3, 5, 17, 0, 9]),       # empty q, empty k, both, 1, odd
    "odd": ([17, 77, 33], [17, 77, 33]),
    "long": ([130, 1000, 1, 300], [130, 1000, 1, 300]),              # longer than a tile
    "q_longer": ([77, 130, 5], [17, 64, 1]),                         # Lq > Lk: causal hides top rows
    "k_longer": ([9, 40, 130], [300, 77, 257]),                      # Lq < Lk
    "mixed": ([200, 3, 129, 0], [70, 150, 129, 31]),                 # both directions in one batch
}
OPTIONS = {
    "plain": {},
    "causal": {"causal": True},
    "window_left": {"window": (32, None)},
    "window_both": {"window": (17, 9)},
    "causal_left": {"causal": True, "window": (48, None)},
    "softcap": {"softcap": 4.0},
    "scale": {"scale": 0.37},
}
BWD_LENGTHS = ["edge", "long", "q_longer", "k_longer"]
BWD_OPTIONS = {
    "plain": {},
    "causal": {"causal": True},
    "window_both": {"window": (17, 9)},
    "causal_left": {"causal": True, "window": (48, None)},
    "softcap_scale": {"softcap": 4.0, "scale": 0.3},
}
GQA = {"gqa1": (4, 4), "gqa2": (4, 2), "gqa8": (16, 2), "mqa": (6, 1)}


# ---- helpers ---------------------------------------------------------------------------------
def expect_kernel(q, k, v) -> None:
    """Where this build lists compiled CUDA head dims, half-precision inputs of such a head dim must
    take the kernel, not the reference fallback (otherwise these tests would check the reference
    against itself)."""
    dims = cuda_head_dims()
    if (dims is None or q.values.dtype not in (torch.float16, torch.bfloat16) or q.values.shape[-1] not in dims
            or v.values.shape[-1] != q.values.shape[-1]):
        return
    assert has_kernel(q, k, v), (
        f"{q.values.dtype} head dim {q.values.shape[-1]} is in scree._C.cuda_head_dims() = {dims} but "
        f"scree._connect.torch.serves is False: the CUDA kernel is not dispatched")


def run_case(lq, lk, hq, hk, d, dtype, opts, backward: bool, what: str, paths=("default",)) -> None:
    """One fresh random case: kernel (through scree.varlen_attention and torch autograd) vs fp64
    reference, FA rule on out, lse and (backward) dq, dk, dv; once per forward kernel path
    ("sm90": the Hopper kernel on sm_90 where compiled; "sm80": SCREE_CUDA_PATH=sm80)."""
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, hq, hk, d, d, dtype, DEV, seed)
    expect_kernel(q, k, v)
    dout = random_values((q.total, hq, d), dtype, DEV, generator(seed + 1, DEV)) if backward else None
    ref64, low = reference_pair(q, k, v, dout, opts)
    for path in paths:
        with cuda_path(path):
            got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
        assert got[0].dtype == dtype and got[0].device == q.values.device and got[1].device == q.values.device
        check_against_references(f"{what} [{path} forward]", got, ref64, low, seed, softcap=bool(opts.get("softcap")))


@contextlib.contextmanager
def no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- the kernel is wired ---------------------------------------------------------------------
def test_cuda_kernel_is_dispatched():
    dims = cuda_head_dims()
    assert dims, "scree._C.cuda_head_dims() is missing or empty: this build has no CUDA attention"
    assert {64, 128} <= set(dims), f"compiled head dims {dims} lack 64 or 128 (SCREE_HEADDIMS)"
    for dt in DTYPES.values():
        for d in dims:
            assert has_kernel(*random_qkv([3], [3], 2, 1, d, d, dt, DEV, 0)), (dt, d)
    assert not has_kernel(*random_qkv([3], [3], 2, 1, 64, 64, torch.float32, DEV, 0)), "float32 has no CUDA kernel"
    assert not has_kernel(*random_qkv([3], [3], 2, 1, 64, 32, torch.bfloat16, DEV, 0)), "D != Dv has no CUDA kernel"
    if 96 not in dims:
        assert not has_kernel(*random_qkv([3], [3], 2, 1, 96, 96, torch.bfloat16, DEV, 0))


# ---- forward matrix --------------------------------------------------------------------------
@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("lengths", list(LENGTHS.values()), ids=list(LENGTHS))
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_forward_matrix(dtype, d, lengths, opts):
    run_case(*lengths, 4, 2, d, dtype, opts, backward=False, what=f"fwd {dtype} d{d} {opts}",
             paths=("sm90", "sm80"))


# ---- backward matrix (default mode: dq may be accumulated with atomics) ------------------------
@pytest.mark.parametrize("opts", list(BWD_OPTIONS.values()), ids=list(BWD_OPTIONS))
@pytest.mark.parametrize("lengths", BWD_LENGTHS)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_backward_matrix(dtype, d, lengths, opts):
    with deterministic(False):
        run_case(*LENGTHS[lengths], 4, 2, d, dtype, opts, backward=True, what=f"bwd {dtype} d{d} {lengths} {opts}")


# ---- the backward over long keys: sequences ranked longest first, or in input order --------------
LONG_KEYS = {  # more than 8 key tiles of 128 (ranked), and over 24 (3,072 keys: 80-query steps at d128)
    "ranked": ([1500, 0, 1, 3100, 300, 1025, 64, 2049], [1500, 7, 1, 3100, 300, 1025, 64, 2049]),
    "k_longer": ([1100, 5, 640, 2], [1300, 3200, 1200, 9]),
    "equal": ([1100, 1100, 1100, 1030], [1100, 1100, 1100, 1030]),  # key blocks alike: not ranked
}


@pytest.mark.parametrize("order", ["ranked", "input", "walk_up"])
@pytest.mark.parametrize("opts", [{"causal": True}, {"causal": True, "window": (300, None)}, {}],
                         ids=["causal", "causal_left", "full"])
@pytest.mark.parametrize("lengths", list(LONG_KEYS), ids=list(LONG_KEYS))
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_backward_over_long_keys(dtype, d, lengths, opts, order, monkeypatch):
    """The Hopper backward ranks causal batches over more than 8 key tiles longest first where their
    key blocks vary (the default: sequence_rank.cuh, TileOrder::at_ranked_keys; equal lengths and
    unmasked calls keep the input order, as SCREE_SM90_BWD_ORDER=input forces), and its causal key
    tiles, where they run fastest (ranked), walk their query blocks from the last down
    (launch_bwd_sm90.cuh's bwd_walks_down; SCREE_SM90_BWD_WALK=up keeps the ascending walk): causal,
    causal with a window and unmasked, against the fp64 reference, with empty and one-token
    sequences, q/k lengths that differ, GQA, and a sequence long enough for 80-query steps."""
    if order == "input":
        monkeypatch.setenv("SCREE_SM90_BWD_ORDER", "input")
    if order == "walk_up":
        monkeypatch.setenv("SCREE_SM90_BWD_WALK", "up")
    with deterministic(False):
        run_case(*LONG_KEYS[lengths], 4, 2, d, dtype, opts, backward=True,
                 what=f"bwd {order} {dtype} d{d} {lengths} {opts}")


# ---- GQA / MQA, forward and backward ----------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("heads", list(GQA.values()), ids=list(GQA))
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_gqa_forward_backward(dtype, d, heads, causal):
    lq, lk = [64, 1, 0, 131, 9], [64, 5, 3, 131, 200]
    run_case(lq, lk, *heads, d, dtype, {"causal": causal}, backward=True, what=f"gqa {heads} {dtype} d{d}",
             paths=("sm90", "sm80"))


# ---- running max that keeps moving (the kernels' lazy rescaling) --------------------------------
@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"softcap": 30.0}], ids=["plain", "causal", "softcap"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_drifting_row_maxima(dtype, d, opts):
    """Keys whose scores grow along the sequence (gently, then in jumps), so a row's running max moves
    by less than the kernels' rescaling threshold (2^8) on some key blocks and by more on others; and
    a sequence where the largest scores come first (the max never moves after block 0)."""
    seed = fresh_seed()
    lq, lk = [700, 300, 33], [1000, 300, 500]
    q, k, v = random_qkv(lq, lk, 4, 2, d, d, dtype, DEV, seed)
    expect_kernel(q, k, v)
    pos = torch.cat([torch.arange(n, device=DEV, dtype=torch.float32) for n in lk])
    seq = torch.repeat_interleave(torch.arange(len(lk), device=DEV), torch.tensor(lk, device=DEV))
    gain = torch.where(seq == 0, 1 + pos / 150 + 3 * (pos >= 640), torch.where(seq == 1, 1 + pos / 100, 4 - pos / 200))
    k = k.with_values((k.values.float() * gain[:, None, None]).to(dtype))
    v = k.with_values(v.values)
    dout = random_values((q.total, 4, d), dtype, DEV, generator(seed + 1, DEV))
    ref64, low = reference_pair(q, k, v, dout, opts)
    for path in ("sm90", "sm80"):
        with cuda_path(path):
            got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
        check_against_references(f"drifting maxima [{path} forward]", got, ref64, low, seed,
                                 softcap=bool(opts.get("softcap")))


# ---- batches: many sequences, zero sequences, all empty ----------------------------------------
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_many_sequences(dtype):
    rng = np.random.default_rng(fresh_seed())
    lq = rng.integers(0, 48, size=500).tolist()
    lk = (np.asarray(lq) + rng.integers(-3, 20, size=500)).clip(0).tolist()
    run_case(lq, lk, 4, 1, 128, dtype, {"causal": True}, backward=True, what=f"500 sequences {dtype}")


@pytest.mark.parametrize("lengths", [([], []), ([0, 0, 0], [0, 0, 0]), ([0, 0], [5, 3]), ([4, 2], [0, 0])],
                         ids=["no_sequences", "all_empty", "empty_q", "empty_k"])
def test_degenerate_batches(lengths):
    lq, lk = lengths
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 4, 2, 64, 64, torch.bfloat16, DEV, seed)
    leaves = [a.values.detach().clone().requires_grad_(True) for a in (q, k, v)]
    out, lse = scree.varlen_attention(*(a.with_values(x) for a, x in zip((q, k, v), leaves)), causal=True,
                                      return_lse=True)
    assert out.values.shape == (sum(lq), 4, 64) and lse.shape == (4, sum(lq)) and lse.dtype == torch.float32
    assert torch.equal(out.values, torch.zeros_like(out.values))            # no key anywhere: 0 ...
    assert bool(torch.isneginf(lse).all())                                   # ... and lse = -inf
    if sum(lq) + sum(lk) == 0:
        return
    grads = torch.autograd.grad(out.values, leaves, torch.randn_like(out.values), allow_unused=True)
    for g, x in zip(grads, leaves):  # nothing attends: every gradient is exactly zero
        assert g is None or torch.equal(g, torch.zeros_like(x))


def test_lse_and_output_layout():
    seed = fresh_seed()
    q, k, v = random_qkv([5, 0, 130], [9, 4, 130], 8, 2, 128, 128, torch.bfloat16, DEV, seed)
    out, lse = scree.varlen_attention(q, k, v, causal=True, return_lse=True)
    assert out.offsets is q.offsets and out.values.shape == (135, 8, 128) and out.values.is_contiguous()
    assert lse.shape == (8, 135) and lse.dtype == torch.float32 and lse.device == q.values.device
    plain = scree.varlen_attention(q, k, v, causal=True)
    assert torch.equal(plain.values, out.values)  # return_lse does not change the output


def test_forward_tile_counter_is_shared_safely_by_threads_and_streams():
    """The Hopper forward's workspace (its tile counter) is kept per (device, stream, thread) and left
    zero by each call: two threads launching on one stream, and streams running side by side, must
    each get every tile (a counter shared across them would start a kernel past tiles it never ran)."""
    import threading

    seed = fresh_seed()
    lengths = [700, 3, 1000, 64, 129, 0, 513] * 3
    q, k, v = random_qkv(lengths, lengths, 8, 2, 128, 128, torch.bfloat16, DEV, seed)
    want = scree.varlen_attention(q, k, v, causal=True).values.clone()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()
    outs, errors = [], []

    def work(stream):
        try:
            with torch.cuda.stream(stream):
                for _ in range(30):
                    outs.append(scree.varlen_attention(q, k, v, causal=True).values)
        except Exception as e:  # surfaced below, with the seed
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in (s1, s1, s2, s2, torch.cuda.current_stream())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    assert not errors, f"seed {seed}: {errors[0]!r}"
    assert len(outs) == 150
    bad = sum(not torch.equal(o, want) for o in outs)
    assert bad == 0, f"seed {seed}: {bad} of 150 concurrent forwards differ from the single call"


def test_forward_leaves_its_tile_counter_zero():
    """The forward puts its tile counter (the workspace's first 16 bytes) back to zero, so a caller
    that zeroed its workspace once passes workspace_zeroed=True and no memset runs before each
    kernel (scree's torch glue does): calls of both tile orders and many grid sizes in a row over
    one workspace each equal a call over a fresh 0xFF-filled one, and leave the counter zero."""
    from scree import _C

    seed = fresh_seed()
    cases = [([700, 3, 1000, 64, 129, 0, 513], {}), ([1, 5, 64, 33, 2] * 40, {}), ([3, 1, 2], {"causal": True}),
             ([4096], {"causal": True}), ([17, 0, 77] * 3, {"window": (5, 3)}), ([200, 1], {})]
    arrays = [(random_qkv(lens, lens, 8, 2, 128, 128, torch.bfloat16, DEV, seed + i), opts)
              for i, (lens, opts) in enumerate(cases)]
    ws = torch.zeros((max(_C.cuda_fwd_workspace_bytes(q.values.shape[0], q.num_sequences)
                          for (q, _, _), _ in arrays),), dtype=torch.uint8, device=DEV)
    for _ in range(2):
        for (q, k, v), opts in arrays:
            shape = (q.values.shape[0], 8, 128)
            got, want = (torch.full(shape, float("nan"), dtype=torch.bfloat16, device=DEV) for _ in range(2))
            _C.varlen_fwd(q.values, k.values, v.values, kernel_offsets(q), kernel_offsets(k), got, None,
                          c_args(q, k, v, opts), ws, stream=stream_of(q.values), workspace_zeroed=True)
            torch.cuda.synchronize()
            assert not ws[:16].any(), f"seed {seed}: the counter was left at {ws[:16].tolist()}"
            c_varlen_fwd(q, k, v, want, None, opts)
            assert torch.equal(got, want), f"seed {seed}: {q.lengths.tolist()} {opts}"


# ---- direct scree._C calls into poisoned outputs ----------------------------------------------
POISON_CASES = {  # lengths and options that leave query rows without any visible key
    "empty_k_and_window": (([3, 0, 40, 7], [0, 5, 40, 7]), {"window": (2, 1)}),
    "causal_q_longer": (([50, 1, 17], [20, 0, 17]), {"causal": True}),
    "causal_left_long": (([300, 64, 5], [250, 129, 0]), {"causal": True, "window": (70, None), "softcap": 5.0}),
}


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_direct_call_output_rows_not_16_byte_aligned(d):
    """The forward's epilogue stores 16-byte chunks only where every output row is 16-byte aligned;
    an out whose rows are 4-byte aligned only (here each head's row padded by two elements) takes
    the 4-byte stores: same values as into a contiguous out, and the padding left untouched."""
    seed = fresh_seed()
    lengths = [1, 33, 0, 130, 64, 7, 200]
    q, k, v = random_qkv(lengths, lengths, 4, 2, d, d, torch.bfloat16, DEV, seed)
    for path in ("sm80", "sm90"):
        with cuda_path(path):
            want = poisoned((q.total, 4, d), torch.bfloat16, DEV)
            c_varlen_fwd(q, k, v, want, None, {"causal": True})
            padded = poisoned((q.total, 4, d + 2), torch.bfloat16, DEV)
            c_varlen_fwd(q, k, v, padded[..., :d], None, {"causal": True})
        assert torch.equal(padded[..., :d], want), f"[{path}] seed {seed}: strided out differs from the contiguous one"
        assert bool(torch.isnan(padded[..., d:]).all()), f"[{path}] the padding columns were written"


@pytest.mark.parametrize("case", list(POISON_CASES.values()), ids=list(POISON_CASES))
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_direct_call_writes_every_output(dtype, d, case):
    (lq, lk), opts = case
    seed = fresh_seed()
    hq, hk = 4, 2
    q, k, v = random_qkv(lq, lk, hq, hk, d, d, dtype, DEV, seed)
    dout = random_values((q.total, hq, d), dtype, DEV, generator(seed + 1, DEV))
    ref64, low = reference_pair(q, k, v, dout, opts)
    empty_rows = torch.isneginf(ref64[1]).T.to(DEV)  # (Tq, Hq): rows that see no key
    assert bool(empty_rows.any()), "case meant to contain rows with no visible key"
    for path in ("sm80", "sm90"):  # the Hopper path's out and lse feed the backward below
        out = poisoned((q.total, hq, d), dtype, DEV)
        lse = poisoned((hq, q.total), torch.float32, DEV)
        with cuda_path(path):
            c_varlen_fwd(q, k, v, out, lse, opts)
        for name, x in (("out", out), ("lse", lse)):
            assert not torch.isnan(x).any(), f"[{path}] {name} has {int(torch.isnan(x).sum())} unwritten (NaN) elements"
        assert torch.equal(out[empty_rows], torch.zeros_like(out[empty_rows])), \
            f"[{path}] rows with no visible key must be 0"
        assert bool(torch.isneginf(lse.T[empty_rows]).all()), f"[{path}] rows with no visible key must have lse = -inf"
        assert_fa_close(f"[{path}] direct out", out, ref64[0], low[0], seed=seed)
        assert_lse_close(f"[{path}] direct lse", lse, ref64[1], low[1], seed=seed)

    check_backward_direct("direct", dout, q, k, v, out, lse, opts, ref64, low, seed)


# ---- deterministic backward -------------------------------------------------------------------
@contextlib.contextmanager
def torch_deterministic():
    """torch.use_deterministic_algorithms(True) while inside (scree's backward honours it too)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("switch", ["SCREE_DETERMINISTIC", "torch"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_deterministic_backward_is_bit_identical_and_correct(dtype, d, switch):
    lq, lk = [1000, 1, 0, 333], [1000, 64, 7, 517]  # long sequences: many key tiles feed each dq tile
    opts = {"causal": True}
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 16, 2, d, d, dtype, DEV, seed)
    expect_kernel(q, k, v)
    dout = random_values((q.total, 16, d), dtype, DEV, generator(seed + 1, DEV))
    with deterministic(False):  # a default-mode call first: the switch must be read at call time
        default = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
    with (deterministic(True) if switch == "SCREE_DETERMINISTIC" else torch_deterministic()):
        first = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
        second = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for name, a, b in zip(("dq", "dk", "dv"), first[2], second[2]):
        assert torch.equal(a, b), f"deterministic {name} differs between two runs: max diff {max_abs_diff(a, b):.3g}"
    ref64, low = reference_pair(q, k, v, dout, opts)
    check_against_references(f"deterministic {dtype} d{d}", first, ref64, low, seed)
    check_against_references(f"default {dtype} d{d}", default, ref64, low, seed)


# ---- FA-2 (torch's aten varlen flash attention) on the same inputs -----------------------------
def _fa2(q, k, v, opts, dout):
    """FA-2 through torch.ops.aten._flash_attention_forward/backward; pytest.skip where unsupported."""
    fwd = getattr(torch.ops.aten, "_flash_attention_forward", None)
    bwd = getattr(torch.ops.aten, "_flash_attention_backward", None)
    if fwd is None or bwd is None:
        pytest.skip("this torch has no aten._flash_attention_forward/backward")
    if opts.get("softcap"):
        pytest.skip("FA-2 in torch has no softcap")
    scale = opts.get("scale", 1.0 / q.values.shape[-1] ** 0.5)
    kw = {"scale": scale}
    if opts.get("window") is not None:
        left, right = opts["window"]
        kw.update(window_size_left=-1 if left is None else left, window_size_right=-1 if right is None else right)
    cu_q, cu_k = q.cu_seqlens(), k.cu_seqlens()
    args = (cu_q, cu_k, q.max_length, k.max_length, 0.0, bool(opts.get("causal")))
    try:
        out, lse, rng, unused, _ = fwd(q.values, k.values, v.values, *args, False, **kw)
        grads = bwd(dout, q.values, k.values, v.values, out, lse, *args, rng, unused, **kw)
        torch.cuda.synchronize()
    except (RuntimeError, TypeError, NotImplementedError) as e:
        pytest.skip(f"FA-2 does not run this case here: {str(e).splitlines()[0][:200]}")
    return out, lse, grads


@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"window": (32, 8)}, {"causal": True, "scale": 0.2}],
                         ids=["plain", "causal", "window", "causal_scale"])
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_matches_flash_attention_2(dtype, d, opts):
    """scree's error vs fp64 must be within 2x (out) / 3x (grads) of FA-2's own error on the same
    inputs, plus the rounding atol: a flash kernel in the same dtype is the fairest yardstick."""
    lq, lk = [130, 1, 77, 300, 5], [130, 9, 40, 300, 64]
    seed = fresh_seed()
    q, k, v = random_qkv(lq, lk, 8, 2, d, d, dtype, DEV, seed)
    dout = random_values((q.total, 8, d), dtype, DEV, generator(seed + 1, DEV))
    fa_out, fa_lse, fa_grads = _fa2(q, k, v, opts, dout)
    got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
    ref64 = fwd_grads(reference, *(cpu64(a) for a in (q, k, v)), dout.to("cpu", torch.float64), opts)
    assert_fa_close("out vs FA-2", got[0], ref64[0], fa_out, seed=seed)
    if tuple(fa_lse.shape) == tuple(got[1].shape):  # FA-2 varlen lse is (H, Tq) in recent versions
        assert_lse_close("lse vs FA-2", got[1], ref64[1], fa_lse.float(), seed=seed)
    for name, g, r, f in zip(("dq", "dk", "dv"), got[2], ref64[2], fa_grads):
        assert_fa_close(f"{name} vs FA-2", g, r, f, rtol=3.0, seed=seed)


# ---- torch.compile --------------------------------------------------------------------------
def test_torch_compile_fullgraph_forward_and_backward():
    seed = fresh_seed()
    q, k, v = random_qkv([5, 0, 130, 17], [5, 3, 130, 40], 4, 2, 64, 64, torch.bfloat16, DEV, seed)
    expect_kernel(q, k, v)

    def loss(qv, kv, vv):
        out = scree.varlen_attention(q.with_values(qv), k.with_values(kv), v.with_values(vv), causal=True)
        return (out.values.float() ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True)
    with deterministic(True):
        leaves = [a.values.detach().clone().requires_grad_(True) for a in (q, k, v)]
        eager = [a.values.detach().clone().requires_grad_(True) for a in (q, k, v)]
        got, want = compiled(*leaves), loss(*eager)
        got.backward()
        want.backward()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    for a, b in zip(leaves, eager):
        assert a.grad is not None and not torch.isnan(a.grad).any()
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-2, atol=2e-2)


# ---- no device synchronisation ----------------------------------------------------------------
@pytest.mark.parametrize("build", ["from_lengths", "from_cu_seqlens"])
def test_no_device_sync(build):
    """A call whose Arrays carry their host bookkeeping must not synchronise the device, forward or
    backward (FlashAttention #1164): from_lengths keeps host offsets and max_length;
    from_cu_seqlens(validate=False, max_seqlen=...) keeps max_length over device offsets only."""
    seed = fresh_seed()
    lq, lk = [33, 0, 130], [40, 2, 130]
    q, k, v = random_qkv(lq, lk, 4, 2, 128, 128, torch.bfloat16, DEV, seed)
    if build == "from_cu_seqlens":
        cu_q, cu_k = q.cu_seqlens(), k.cu_seqlens()
        q = scree.from_cu_seqlens(q.values, cu_q, max_seqlen=max(lq), validate=False)
        k = scree.from_cu_seqlens(k.values, cu_k, max_seqlen=max(lk), validate=False)
        v = k.with_values(v.values)
    leaves = [a.values.detach().clone().requires_grad_(True) for a in (q, k, v)]
    dout = torch.randn(q.values.shape, device=DEV, dtype=torch.bfloat16)

    def arrays():  # fresh Array objects each time: nothing cached on them by an earlier call
        return [a.with_values(x) for a, x in zip((q, k, v), leaves)]

    warm = scree.varlen_attention(*arrays(), causal=True)  # first-call set-up (module loading) stays outside
    torch.autograd.grad(warm.values, leaves, dout)
    torch.cuda.synchronize()
    fresh = arrays()
    with no_sync():
        out = scree.varlen_attention(*fresh, causal=True)
        grads = torch.autograd.grad(out.values, leaves, dout)
    torch.cuda.synchronize()
    assert all(g.shape == x.shape and not torch.isnan(g).any() for g, x in zip(grads, leaves))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("path", ["sm90", "sm80"])
def test_forward_before_the_device_check_lands(path, causal):
    """Arrays over device offsets with no max_length: until the device check lands the plan's
    max_seqlen is the token count, and the forward reads the exact maximum from the check's device
    copy (the Hopper kernel cuts its tile order to it). Held back behind a busy GPU so the check
    cannot have landed; the result must match the reference either way."""
    from scree.kernels import attention as K
    seed = fresh_seed()
    lens = [130, 1, 0, 700, 65, 3]
    q0, k0, v0 = random_qkv(lens, lens, 4, 2, 128, 128, torch.bfloat16, DEV, seed)
    ref64, low = reference_pair(q0, k0, v0, None, {"causal": causal})
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU work ahead of the check
    cu = q0.cu_seqlens().to(torch.int64)
    q, k, v = (scree.from_offsets(a.values, cu) for a in (q0, k0, v0))
    plan = K.plan(q)
    assert plan.max_seqlen == q.values.shape[0] and plan.summary is not None, plan
    with cuda_path(path):
        got = fwd_grads(scree.varlen_attention, q, k, v, None, {"causal": causal})
    check_against_references(f"device max [{path}] causal={causal}", got, ref64, low, seed)
    torch.cuda.synchronize()
    assert plan.summary.tolist()[3] == max(lens)
    scree._layout.poll()
    assert K.plan(q).max_seqlen == max(lens)  # landed: the plan is remade with the exact max


# ---- bad input ------------------------------------------------------------------------------
def test_float32_and_uncompiled_head_dims_fall_back_to_the_reference():
    """Inputs the CUDA kernels do not serve (float32; a head dim not compiled; D != Dv) run the
    reference on the device: correct, on the GPU, differentiable."""
    dims = cuda_head_dims() or []
    cases = [(torch.float32, 64, 64), (torch.bfloat16, 64, 32)]
    if 96 not in dims:
        cases.append((torch.float16, 96, 96))
    for dtype, d, dv in cases:
        seed = fresh_seed()
        q, k, v = random_qkv([7, 0, 20], [9, 3, 20], 4, 2, d, dv, dtype, DEV, seed)
        assert not has_kernel(q, k, v), f"{dtype} d{d} dv{dv} has no CUDA kernel: must run the reference"
        dout = random_values((q.total, 4, dv), dtype, DEV, generator(seed + 1, DEV))
        got = fwd_grads(scree.varlen_attention, q, k, v, dout, {"causal": True})
        assert got[0].device.type == "cuda" and got[0].dtype == dtype
        ref64, low = reference_pair(q, k, v, dout, {"causal": True})
        check_against_references(f"fallback {dtype} d{d} dv{dv}", got, ref64, low, seed)


def test_bad_inputs_raise_typed_errors_on_cuda():
    seed = fresh_seed()
    q, k, v = random_qkv([3, 4], [3, 4], 4, 2, 64, 64, torch.bfloat16, DEV, seed)
    # Arrays: offsets on another device than the values
    with pytest.raises(scree.BackendError):
        scree.Array(q.values, torch.tensor([0, 3, 7]))
    with pytest.raises(scree.BackendError):
        scree.from_lengths(q.values, torch.tensor([3, 4]))
    # q on the GPU, k on the CPU
    with pytest.raises(scree.BackendError):
        scree.varlen_attention(q, k.to(device="cpu"), v.to(device="cpu"))
    # heads not a multiple
    k3 = scree.from_lengths(torch.randn(7, 3, 64, device=DEV, dtype=torch.bfloat16), [3, 4])
    with pytest.raises(scree.ShapeError, match="multiple"):
        scree.varlen_attention(q, k3, k3)
    # k and v heads differ
    v1 = k.with_values(torch.randn(7, 1, 64, device=DEV, dtype=torch.bfloat16))
    with pytest.raises(scree.ShapeError):
        scree.varlen_attention(q, k, v1)
    # q and k head dims differ
    kd = scree.from_lengths(torch.randn(7, 2, 128, device=DEV, dtype=torch.bfloat16), [3, 4])
    with pytest.raises(scree.ShapeError, match="head dims"):
        scree.varlen_attention(q, kd, kd)
    # mixed dtypes
    with pytest.raises(scree.DTypeError):
        scree.varlen_attention(q, k.with_values(k.values.half()), v)
    # sequence counts differ
    q1 = scree.from_lengths(q.values, [7])
    with pytest.raises(scree.ShapeError, match="same number of sequences"):
        scree.varlen_attention(q1, k, v)


def test_compiled_boundary_rejects_what_the_kernels_cannot_serve():
    """scree._C called directly on CUDA tensors: typed errors, never a crash or a silent wrong result."""
    dims = cuda_head_dims()
    if not dims:
        pytest.skip("scree._C has no CUDA attention in this build")
    from scree import _C
    seed = fresh_seed()
    q, k, v = random_qkv([3, 4], [3, 4], 4, 2, 64, 64, torch.bfloat16, DEV, seed)
    args = c_args(q, k, v, {})
    cu_q, cu_k = kernel_offsets(q), kernel_offsets(k)
    out, lse = torch.empty((7, 4, 64), dtype=torch.bfloat16, device=DEV), torch.empty((4, 7), device=DEV)
    stream = stream_of(q.values)

    def fwd(qv, kv, vv, o=out, cq=cu_q, ck=cu_k):
        _C.varlen_fwd(qv, kv, vv, cq, ck, o, lse, args, stream=stream)

    fwd(q.values, k.values, v.values)  # the valid call works
    with pytest.raises((scree.DTypeError, scree.UnsupportedError)):          # float32 on CUDA
        fwd(q.values.float(), k.values.float(), v.values.float(), o=out.float())
    with pytest.raises((scree.ArgumentError, scree.BackendError), match="device"):  # offsets on the host
        fwd(q.values, k.values, v.values, cq=torch.from_numpy(q.host_offsets), ck=torch.from_numpy(k.host_offsets))
    with pytest.raises((scree.ArgumentError, scree.BackendError), match="device"):  # k, v on the host
        fwd(q.values, k.values.cpu(), v.values.cpu())
    with pytest.raises((scree.ArgumentError, scree.BackendError), match="device"):  # output on the host
        fwd(q.values, k.values, v.values, o=out.cpu())
    if 96 not in dims:                                                         # head dim without a kernel
        q96, k96, v96 = random_qkv([3, 4], [3, 4], 4, 2, 96, 96, torch.bfloat16, DEV, seed)
        with pytest.raises(scree.UnsupportedError):
            _C.varlen_fwd(q96.values, k96.values, v96.values, cu_q, cu_k, torch.empty_like(q96.values), lse, args,
                          stream=stream)
    with pytest.raises(scree.ScreeError):                                     # D != Dv
        fwd(q.values, k.values, v.values[..., :32].contiguous(), o=out[..., :32].contiguous())
    # backward: a workspace smaller than varlen_bwd_workspace_bytes is refused
    nbytes = _C.varlen_bwd_workspace_bytes(q.values, k.values, v.values, cu_q, cu_k, args)
    if nbytes:
        grads = [torch.empty_like(a.values) for a in (q, k, v)]
        small = torch.empty(nbytes // 2, dtype=torch.uint8, device=DEV)
        with pytest.raises(scree.ArgumentError, match="workspace"):
            _C.varlen_bwd(torch.randn_like(out), q.values, k.values, v.values, out, lse, cu_q, cu_k, *grads, args,
                          workspace=small, stream=stream)
    torch.cuda.synchronize()  # nothing above left the device in an error state


# ---- JAX on the GPU ---------------------------------------------------------------------------
def _jax_gpu():
    jax = pytest.importorskip("jax", reason="jax is not installed")
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if not gpus:
        pytest.skip("JAX sees no GPU")
    return jax, gpus[0]


# keys past one 128-key tile (the dq accumulator) and within one (on sm_90 the kernel writes dq
# itself and the workspace JAX sizes has no accumulator)
@pytest.mark.parametrize("lengths", [([17, 0, 130, 1], [40, 3, 130, 9]), ([17, 0, 100, 1], [40, 3, 100, 9])],
                         ids=["k130", "k100"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_jax_gpu_jit_forward_and_grad(dtype, lengths):
    jax, gpu = _jax_gpu()
    jnp = jax.numpy
    seed = fresh_seed()
    lq, lk = lengths
    # the same random values as torch tensors (for the fp64 reference) and as JAX GPU arrays
    tq, tk, tv = random_qkv(lq, lk, 4, 2, 64, 64, getattr(torch, dtype), DEV, seed)
    tdout = random_values((tq.total, 4, 64), getattr(torch, dtype), DEV, generator(seed + 1, DEV))

    def to_jax(x):
        return jax.device_put(jnp.asarray(x.detach().float().cpu().numpy(), dtype=dtype), gpu)

    qa, ka = (scree.from_lengths(to_jax(a.values), l) for a, l in ((tq, lq), (tk, lk)))
    va = ka.with_values(to_jax(tv.values))
    dout = to_jax(tdout)
    opts = {"causal": True}

    @jax.jit
    def fwd(q, k, v):
        return scree.varlen_attention(q, k, v, **opts).values

    def loss(qv, kv, vv, fn):
        out = fn(qa.with_values(qv), ka.with_values(kv), va.with_values(vv), **opts).values
        return jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32))

    out = fwd(qa, ka, va)
    grads = jax.jit(jax.grad(lambda a, b, c: loss(a, b, c, scree.varlen_attention), argnums=(0, 1, 2)))(
        qa.values, ka.values, va.values)
    low_out = reference(qa, ka, va, upcast=False, **opts).values
    low_grads = jax.grad(lambda a, b, c: loss(a, b, c, lambda *x, **kw: reference(*x, upcast=False, **kw)),
                         argnums=(0, 1, 2))(qa.values, ka.values, va.values)
    assert list(out.devices())[0].platform == "gpu"

    def t(x):  # JAX array -> torch CPU float64
        return torch.from_numpy(np.asarray(x).astype(np.float64))

    ref64 = fwd_grads(reference, *(cpu64(a) for a in (tq, tk, tv)), tdout.to("cpu", torch.float64), opts)
    torch_dtype = getattr(torch, dtype)
    assert_fa_close("jax out", t(out).to(torch_dtype), ref64[0], t(low_out), seed=seed)
    for name, g, r, lo in zip(("dq", "dk", "dv"), grads, ref64[2], low_grads):
        assert_fa_close(f"jax {name}", t(g).to(torch_dtype), r, t(lo), rtol=3.0, seed=seed)

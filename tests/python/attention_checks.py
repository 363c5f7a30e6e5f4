"""Shared helpers for checking varlen attention kernels against the fp64 reference, used by the GPU
tests (test_attention_cuda.py) and by tools/sanitize_attention.py (run under compute-sanitizer).
Plain module: no pytest, no fixtures; torch only (any device).

* random_qkv / random_like: fresh random normal inputs (never zeros) as scree.Arrays on a device,
  built with from_lengths so the host offsets and max lengths are known (no device sync later).
* cpu64: the same Array as CPU float64 (the exact inputs, widened) for the fp64 reference.
* assert_fa_close: FlashAttention's tolerance rule. With ref64 the fp64 reference and low the same
  computation by the reference in the input dtype (upcast=False),
      max|got - ref64| <= rtol * max|low - ref64| + atol,
  rtol 2 for outputs (FA's forward rule) and 3 for gradients (FA's backward tests use 2-3), atol
  = one rounding error of the dtype at the reference's largest magnitude (computed as in FA3's
  tests, max |(r + 0.3) - 0.3 - r| in the dtype; FA3 allows twice that) plus a small extra.
  NaN and inf never pass.
* assert_lse_close: lse (Hq, Tq) float32: -inf exactly where the fp64 reference has -inf (rows that
  see no key), the FA rule on the finite entries.
* fwd_grads: (out, lse, (dq, dk, dv)) of any varlen attention function through torch autograd.
* c_varlen_fwd / c_varlen_bwd: scree._C.varlen_fwd / varlen_bwd called directly with preallocated
  (caller-poisoned) outputs and workspace, the way scree.kernels.attention calls them.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

import scree
from scree import _C
from scree.kernels.attention import kernel_args, plan
from scree.kernels.attention_spec import attention_spec
from scree.kernels.reference import varlen_attention as reference

HALF_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- inputs ----------------------------------------------------------------------------------
def fresh_seed() -> int:
    """A new random seed per check (fresh inputs every run); printed in failure messages."""
    return int(np.random.SeedSequence().entropy % (2 ** 62))


def random_values(shape: Sequence[int], dtype: torch.dtype, device: Any, gen: torch.Generator) -> torch.Tensor:
    """Standard normal values, drawn in float32 on `device` and rounded to `dtype`."""
    return torch.randn(tuple(shape), generator=gen, device=device, dtype=torch.float32).to(dtype)


def generator(seed: int, device: Any) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def random_qkv(lq: Sequence[int], lk: Sequence[int], hq: int, hk: int, d: int, dv: int, dtype: torch.dtype,
               device: Any, seed: int) -> tuple[scree.Array, scree.Array, scree.Array]:
    """q (sum lq, hq, d), k (sum lk, hk, d), v (sum lk, hk, dv) Arrays of fresh normal values; v
    shares k's offsets object (as users build it: k.with_values)."""
    gen = generator(seed, device)
    q = scree.from_lengths(random_values((sum(lq), hq, d), dtype, device, gen), list(lq))
    k = scree.from_lengths(random_values((sum(lk), hk, d), dtype, device, gen), list(lk))
    v = k.with_values(random_values((sum(lk), hk, dv), dtype, device, gen))
    return q, k, v


def cpu64(a: scree.Array) -> scree.Array:
    """The same Array on the CPU in float64 (detached): the fp64 reference's inputs."""
    values = a.values.detach().to(device="cpu", dtype=torch.float64)
    return scree.from_offsets(values, torch.from_numpy(a.host_offsets.copy()))


# ---- comparisons -----------------------------------------------------------------------------
def _host64(x: Any) -> torch.Tensor:
    return x.detach().to(device="cpu", dtype=torch.float64)


def max_abs_diff(a: Any, b: Any) -> float:
    a, b = _host64(a), _host64(b)
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max())


def rounding_atol(ref64: Any, dtype: torch.dtype) -> float:
    """One rounding error of `dtype` at the reference's magnitude, max |(r + 0.3) - 0.3 - r| with r
    the reference rounded to dtype, all in dtype (FA3's tests allow twice this)."""
    r = _host64(ref64).to(dtype)
    if r.numel() == 0:
        return 0.0
    return float((r + 0.3 - 0.3 - r).abs().max().to(torch.float64))


def fa_bound(got: Any, ref64: Any, low: Any, rtol: float = 2.0, extra_atol: float = 1e-5,
             base_ref: Any = None) -> tuple[float, float, float]:
    """FlashAttention's rule's terms: (max|got - ref64| (inf where got holds NaN or inf),
    max|low - base_ref| (base_ref: ref64 unless given: where the kernel is judged against an fp64
    result other than the exact one, as tools/fuzz_attention_kernels.py judges it against
    FlashAttention's algorithm in fp64, the exact one the reference in dtype is measured from),
    atol); the rule holds when err <= rtol * base + atol."""
    g = _host64(got)
    err = max_abs_diff(g, ref64) if torch.isfinite(g).all() else float("inf")
    base = max_abs_diff(low, ref64 if base_ref is None else base_ref)
    atol = rounding_atol(ref64, got.dtype if got.dtype in (torch.bfloat16, torch.float16) else torch.float32)
    return err, base, atol + extra_atol


def assert_fa_close(what: str, got: Any, ref64: Any, low: Any, rtol: float = 2.0, extra_atol: float = 1e-5,
                    seed: int | None = None, base_ref: Any = None) -> tuple[float, float]:
    """FlashAttention's rule (module docstring; base_ref as fa_bound takes it). Returns (kernel
    error, reference-in-dtype error)."""
    g = _host64(got)
    assert tuple(g.shape) == tuple(ref64.shape), f"{what}: shape {tuple(g.shape)} vs {tuple(ref64.shape)}"
    assert not torch.isnan(g).any(), f"{what}: NaN in the kernel's result (seed {seed})"
    assert torch.isfinite(g).all(), f"{what}: inf in the kernel's result (seed {seed})"
    err, base, atol = fa_bound(got, ref64, low, rtol, extra_atol, base_ref)
    assert err <= rtol * base + atol, (
        f"{what}: kernel error vs fp64 {err:.3g} > {rtol} x reference-in-dtype error {base:.3g} + atol {atol:.2g}"
        f" (seed {seed})")
    return err, base


def assert_lse_close(what: str, got: Any, ref64: Any, low: Any, atol: float = 1e-3, seed: int | None = None) -> None:
    """lse: -inf exactly where the fp64 reference has it, no NaN, the FA rule on finite entries."""
    g, r, lo = _host64(got), _host64(ref64), _host64(low)
    assert g.shape == r.shape, f"{what}: lse shape {tuple(g.shape)} vs {tuple(r.shape)}"
    assert got.dtype == torch.float32, f"{what}: lse dtype {got.dtype}, expected float32"
    assert not torch.isnan(g).any(), f"{what}: NaN in lse (seed {seed})"
    neg = torch.isneginf(r)
    assert torch.equal(torch.isneginf(g), neg), (
        f"{what}: lse is -inf at {int(torch.isneginf(g).sum())} entries, the reference at {int(neg.sum())} "
        f"(rows with no visible key) (seed {seed})")
    assert not torch.isposinf(g).any(), f"{what}: +inf in lse (seed {seed})"
    fin = ~neg
    err = float((g[fin] - r[fin]).abs().max()) if fin.any() else 0.0
    base = float((lo[fin] - r[fin]).abs().max()) if fin.any() else 0.0
    assert err <= 2 * base + atol, f"{what}: lse error {err:.3g} > 2 x {base:.3g} + {atol:g} (seed {seed})"


# ---- running a varlen attention function with autograd ---------------------------------------
def fwd_grads(fn: Callable, q: scree.Array, k: scree.Array, v: scree.Array, dout: torch.Tensor | None,
              opts: dict) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    """(out values, lse, (dq, dk, dv) or None) of fn(q, k, v, return_lse=True, **opts) through
    torch autograd, with leaves cloned from the Arrays' values (dout in the output's layout)."""
    if dout is None:
        with torch.no_grad():
            out, lse = fn(q, k, v, return_lse=True, **opts)
        return out.values, lse, None
    leaves = [a.values.detach().clone().requires_grad_(True) for a in (q, k, v)]
    out, lse = fn(*(a.with_values(x) for a, x in zip((q, k, v), leaves)), return_lse=True, **opts)
    grads = torch.autograd.grad(out.values, leaves, dout.to(out.values.dtype), allow_unused=True)
    grads = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))
    return out.values.detach(), lse.detach(), grads


def reference_pair(q: scree.Array, k: scree.Array, v: scree.Array, dout: torch.Tensor | None, opts: dict):
    """The two references of the FA rule: fp64 on CPU copies, and the same math in the input dtype on
    the inputs' device (reference with upcast=False). Each is (out, lse, grads or None)."""
    ref64 = fwd_grads(reference, *(cpu64(a) for a in (q, k, v)),
                      None if dout is None else dout.detach().to("cpu", torch.float64), opts)
    low = fwd_grads(lambda *a, **kw: reference(*a, upcast=False, **kw), q, k, v, dout, opts)
    return ref64, low


def check_against_references(what: str, got: tuple, ref64: tuple, low: tuple, seed: int | None,
                             softcap: bool = False) -> None:
    """Output (rtol 2), lse and, when present, gradients (rtol 3; FA3's extra 3e-4 atol with softcap)."""
    assert_fa_close(f"{what} out", got[0], ref64[0], low[0], seed=seed)
    assert_lse_close(f"{what} lse", got[1], ref64[1], low[1], seed=seed)
    if got[2] is not None:
        for name, g, r, lo in zip(("dq", "dk", "dv"), got[2], ref64[2], low[2]):
            assert_fa_close(f"{what} {name}", g, r, lo, rtol=3.0, extra_atol=1e-5 + (3e-4 if softcap else 0.0),
                            seed=seed)


def assert_compiled_matches_eager(loss: Callable, arrays: Sequence[scree.Array], backend: str = "aot_eager") -> None:
    """loss(*values) under torch.compile(fullgraph=True) equals the eager call, value and gradients
    with respect to each Array's values (fresh leaves cloned from them for each run)."""
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    leaves = [a.values.detach().clone().requires_grad_(True) for a in arrays]
    eager = [a.values.detach().clone().requires_grad_(True) for a in arrays]
    got, want = compiled(*leaves), loss(*eager)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    for a, b in zip(leaves, eager):
        torch.testing.assert_close(a.grad, b.grad)


# ---- direct calls of the compiled op with preallocated outputs ---------------------------------
def kernel_offsets(a: scree.Array) -> Any:
    """Offsets as scree._C reads them for a's device: int32 cu_seqlens on the GPU (the same device
    as the values; scree.varlen_attention itself passes the Array's own offsets, int64 from
    from_lengths, so the direct calls exercise the int32 path), host int64 for the CPU kernels."""
    return a.cu_seqlens() if a.values.device.type != "cpu" else torch.from_numpy(a.host_offsets)


def stream_of(x: torch.Tensor) -> int:
    """torch's current stream of x's device as scree._C takes it (0 on the CPU)."""
    return torch.cuda.current_stream(x.device).cuda_stream if x.device.type == "cuda" else 0


def c_args(q: scree.Array, k: scree.Array, v: scree.Array, opts: dict, deterministic: bool = False) -> Any:
    """The scalars as scree.varlen_attention passes them: a scree._C.AttentionArgs."""
    spec = attention_spec(q, k, v, **opts)
    return kernel_args(spec, plan(q).max_seqlen, plan(k).max_seqlen, deterministic)


def c_varlen_fwd(q: scree.Array, k: scree.Array, v: scree.Array, out: torch.Tensor, lse: torch.Tensor | None,
                 opts: dict) -> None:
    """scree._C.varlen_fwd into the given out (Tq, Hq, Dv) / lse (Hq, Tq) on torch's current stream,
    on CUDA with a workspace filled with 0xFF (the forward must zero its tile counter itself);
    synchronises the device after the call."""
    ws = None
    if out.device.type == "cuda":
        ws = torch.full((_C.cuda_fwd_workspace_bytes(q.values.shape[0], q.num_sequences),), 0xFF, dtype=torch.uint8,
                        device=out.device)
    _C.varlen_fwd(q.values, k.values, v.values, kernel_offsets(q), kernel_offsets(k), out, lse, c_args(q, k, v, opts),
                  ws, stream=stream_of(q.values))
    if out.device.type == "cuda":
        torch.cuda.synchronize()


def c_varlen_bwd(dout: torch.Tensor, q: scree.Array, k: scree.Array, v: scree.Array, out: torch.Tensor,
                 lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, opts: dict,
                 deterministic: bool = False) -> int:
    """scree._C.varlen_bwd into the given dq, dk, dv, with a workspace of
    varlen_bwd_workspace_bytes bytes filled with 0xFF (NaN as float32): the kernels must initialise
    whatever they accumulate into. Synchronises the device; returns the workspace size."""
    args = c_args(q, k, v, opts, deterministic)
    cu_q, cu_k = kernel_offsets(q), kernel_offsets(k)
    nbytes = int(_C.varlen_bwd_workspace_bytes(q.values, k.values, v.values, cu_q, cu_k, args))
    workspace = torch.full((nbytes,), 255, dtype=torch.uint8, device=q.values.device) if nbytes else None
    _C.varlen_bwd(dout, q.values, k.values, v.values, out, lse, cu_q, cu_k, dq, dk, dv, args,
                  workspace=workspace, stream=stream_of(q.values))
    if dq.device.type == "cuda":
        torch.cuda.synchronize()
    return nbytes


def has_kernel(q: scree.Array, k: scree.Array, v: scree.Array) -> bool:
    """Whether scree.varlen_attention dispatches these Arrays to a compiled kernel (not the reference)."""
    from scree import _backends, _connect
    return bool(_connect.glue(_backends.of(q.values)).serves(q.values, v.values))


def check_backward_direct(what: str, dout: torch.Tensor, q: scree.Array, k: scree.Array, v: scree.Array,
                          out: torch.Tensor, lse: torch.Tensor, opts: dict, ref64: tuple, low: tuple, seed: int) -> None:
    """scree._C.varlen_bwd into NaN-poisoned dq, dk, dv, by default and twice deterministic: every
    element written, FlashAttention's rule against the references (rtol 3; FA3's extra 3e-4 atol
    with softcap), zero gradients for keys no query sees, the same bits from both deterministic runs."""
    kq = np.repeat(np.diff(q.host_offsets) == 0, np.diff(k.host_offsets))  # keys no query can see
    idx = torch.from_numpy(np.flatnonzero(kq)).to(q.values.device)
    results = {}
    for det in (False, True, True):
        dq, dk, dv = (poisoned(a.values.shape, a.values.dtype, a.values.device) for a in (q, k, v))
        c_varlen_bwd(dout, q, k, v, out, lse, dq, dk, dv, opts, deterministic=det)
        for name, g, r, lo in zip(("dq", "dk", "dv"), (dq, dk, dv), ref64[2], low[2]):
            unwritten = int(torch.isnan(g).sum())
            assert unwritten == 0, f"{what} {name} (deterministic={det}): {unwritten} unwritten"
            assert_fa_close(f"{what} {name} deterministic={det}", g, r, lo, rtol=3.0,
                            extra_atol=1e-5 + (3e-4 if opts.get("softcap") else 0), seed=seed)
        assert torch.equal(dk[idx], torch.zeros_like(dk[idx])) and torch.equal(dv[idx], torch.zeros_like(dv[idx]))
        if det and det in results:
            same = all(torch.equal(a, b) for a, b in zip(results[det], (dq, dk, dv)))
            assert same, f"{what}: deterministic runs differ"
        results[det] = (dq, dk, dv)


# The option sets the Hopper tile-order tests (packed, grouped) run every length mix under.
TILE_OPTIONS = {
    "plain": {},
    "causal": {"causal": True},
    "window_both": {"window": (7, 3)},
    "causal_left": {"causal": True, "window": (12, None)},
    "softcap": {"softcap": 4.0, "scale": 0.3},
}


def check_direct_forward(what: str, q: scree.Array, k: scree.Array, v: scree.Array, opts: dict, seed: int) -> None:
    """scree._C.varlen_fwd into NaN-poisoned out and lse (on the current kernel switches): every row
    written, rows that see no key 0 / -inf, out and lse within FlashAttention's rule."""
    ref64, low = reference_pair(q, k, v, None, opts)
    empty_rows = torch.isneginf(ref64[1]).T.to(q.values.device)
    hq, dv = q.values.shape[1], v.values.shape[2]
    out = poisoned((q.total, hq, dv), q.values.dtype, q.values.device)
    lse = poisoned((hq, q.total), torch.float32, q.values.device)
    c_varlen_fwd(q, k, v, out, lse, opts)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), f"{what}: a row was never written"
    assert torch.equal(out[empty_rows], torch.zeros_like(out[empty_rows]))
    assert bool(torch.isneginf(lse.T[empty_rows]).all())
    assert_fa_close(f"{what} direct out", out, ref64[0], low[0], seed=seed)
    assert_lse_close(f"{what} direct lse", lse, ref64[1], low[1], seed=seed)


def check_fwd_bwd(what: str, lq: Sequence[int], lk: Sequence[int], hq: int, hk: int, opts: dict,
                  d: int = 128) -> None:
    """Forward and backward through scree.varlen_attention (on the current kernel switches) at
    head dim d, bf16, fresh random inputs and dout, against the references."""
    seed = fresh_seed()
    device = "cuda"
    q, k, v = random_qkv(lq, lk, hq, hk, d, d, torch.bfloat16, device, seed)
    dout = random_values((q.total, hq, d), torch.bfloat16, device, generator(seed + 1, device))
    ref64, low = reference_pair(q, k, v, dout, opts)
    got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
    check_against_references(what, got, ref64, low, seed)


def poisoned(shape: Sequence[int], dtype: torch.dtype, device: Any) -> torch.Tensor:
    """An output buffer filled with NaN: any element the kernel does not write stays NaN."""
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)


def hopper_kernels() -> bool:
    """An sm_90 device and this build's Hopper kernels (head dims 64 and 128): where the packed,
    grouped and per-sequence tile orders of the Hopper forward run (call only with a CUDA device)."""
    return (torch.cuda.get_device_capability()[0] == 9 and hasattr(_C, "cuda_head_dims")
            and {64, 128} <= set(_C.cuda_head_dims()))


def cuda_head_dims() -> list[int] | None:
    """Head dims the CUDA kernels were compiled for, or None where this build has no such list
    (no CUDA, or the CUDA attention not wired yet)."""
    fn = getattr(_C, "cuda_head_dims", None)
    return None if fn is None else [int(d) for d in fn()]


class deterministic:
    """Context manager: SCREE_DETERMINISTIC=1 (or =0) while inside, restored after. scree reads it
    at every backward call (scree.kernels.attention.resolve_deterministic)."""

    def __init__(self, on: bool = True):
        self.value = "1" if on else "0"

    def __enter__(self):
        self.old = os.environ.get("SCREE_DETERMINISTIC")
        os.environ["SCREE_DETERMINISTIC"] = self.value
        return self

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("SCREE_DETERMINISTIC", None)
        else:
            os.environ["SCREE_DETERMINISTIC"] = self.old
        return False


class cuda_path:
    """Context manager choosing the CUDA forward kernel: "sm80" sets SCREE_CUDA_PATH=sm80 (the portable
    mma.sync kernel, also on Hopper), "sm90" sets SCREE_CUDA_PATH=sm90 (the Hopper kernel wherever it
    is compiled and the card is sm_90, else the portable one), "default" unsets it (the Hopper kernel
    at head dim 128 on sm_90). scree reads it at every call (src/cuda/attention/api.cu)."""

    def __init__(self, path: str):
        assert path in ("default", "sm80", "sm90"), path
        self.path = path

    def __enter__(self):
        self.old = os.environ.get("SCREE_CUDA_PATH")
        if self.path == "default":
            os.environ.pop("SCREE_CUDA_PATH", None)
        else:
            os.environ["SCREE_CUDA_PATH"] = self.path
        return self

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("SCREE_CUDA_PATH", None)
        else:
            os.environ["SCREE_CUDA_PATH"] = self.old
        return False

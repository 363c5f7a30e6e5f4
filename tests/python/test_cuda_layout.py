"""Layout operations on torch CUDA tensors (marked `cuda`; skipped without a GPU). With no CUDA
layout kernel yet they run the reference with torch ops on the device; results must equal the
C++ CPU kernels exactly, and the hot paths must not synchronise the device (checked with
torch.cuda.set_sync_debug_mode("error"), which raises on any synchronising call).

The device check of offsets (scree._C.offsets_summary_cuda, one kernel writing four numbers into
pinned host memory behind an event) must equal NumPy on fresh random offsets, refuse bad arguments
with typed errors, and make Arrays over bad cu_seqlens raise RaggedError at the next poll."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import scree  # noqa: E402
from scree import _backends  # noqa: E402
from scree._backends.protocol import Readback  # noqa: E402
from scree._layout import poll  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]

LENGTHS = [[5, 0, 1, 17, 3], [0], [1], [300, 2, 0, 129]]


@contextlib.contextmanager
def no_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def pair(lengths, feat=(4,), dtype=torch.float32):
    """The same random Array on the CPU and on the GPU."""
    total = int(sum(lengths))
    values = torch.rand(total, *feat, dtype=torch.float64).add_(0.25).to(dtype)
    cpu = scree.from_lengths(values, lengths)
    return cpu, cpu.to(device="cuda")


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_layout_ops_match_cpu(lengths, dtype):
    cpu, gpu = pair(lengths, dtype=dtype)
    assert gpu.device.startswith("cuda") and gpu.offsets.device.type == "cuda"
    for side in ("right", "left"):
        pc, mc = cpu.to_padded(pad_value=-2, padding_side=side)
        with no_sync():
            pg, mg = gpu.to_padded(pad_value=-2, padding_side=side)
        assert torch.equal(pg.cpu(), pc) and torch.equal(mg.cpu(), mc)
        back = scree.from_padded(pg, mask=mg)
        assert torch.equal(back.values.cpu(), cpu.values)
        back = scree.from_padded(pg, lengths=cpu.lengths.cuda(), padding_side=side)
        assert torch.equal(back.values.cpu(), cpu.values)
    with no_sync():
        pos, seg, cu = gpu.positions(), gpu.segment_ids("int32"), gpu.cu_seqlens()
    assert torch.equal(pos.cpu(), cpu.positions())
    assert torch.equal(seg.cpu(), cpu.segment_ids("int32"))
    assert torch.equal(cu.cpu(), cpu.cu_seqlens())
    for op in ("sum", "max"):
        torch.testing.assert_close(getattr(gpu, op)().cpu(), getattr(cpu, op)(), equal_nan=True,
                                   rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-2)
    idx = list(range(len(lengths)))[::-1]
    assert torch.equal(gpu[idx].values.cpu(), cpu[idx].values)
    assert torch.equal(gpu[1:].values.cpu(), cpu[1:].values)


def test_pack_and_cu_seqlens_zero_copy_without_sync():
    seqs = [torch.rand(n, 8, device="cuda") + 0.5 for n in (3, 0, 9)]
    arr = scree.pack(seqs)
    assert arr.values.device.type == "cuda"
    assert torch.equal(arr.values, torch.cat(seqs))
    cu = torch.tensor([0, 3, 3, 12], dtype=torch.int32, device="cuda")
    with no_sync():
        a = scree.from_cu_seqlens(arr.values, cu, max_seqlen=9, validate=False)
        assert a.offsets is cu and a.values.data_ptr() == arr.values.data_ptr()
        assert a.max_length == 9 and len(a) == 3
        padded, mask = a.to_padded()
    assert padded.shape == (3, 9, 8) and int(mask.sum()) == 12


def test_autograd_through_padding_on_gpu():
    cpu, gpu = pair([4, 0, 7], feat=(3,))
    values = gpu.values.clone().requires_grad_(True)
    padded, mask = gpu.with_values(values).to_padded()
    (padded * 2).sum().backward()
    assert torch.equal(values.grad, torch.full_like(values, 2.0))


def test_build_reports_cuda():
    assert scree._C.cuda_compiled(), "the GPU check builds with SCREE_CUDA=ON"
    assert scree._C.cuda_device_count() == torch.cuda.device_count()


# ---- the device check of offsets: one scree kernel (scree._C.offsets_summary_cuda) --------------
needs_summary_kernel = pytest.mark.skipif(not hasattr(scree._C, "offsets_summary_cuda"),
                                          reason="this build of scree has no CUDA kernels")


def _fresh_rng() -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # fresh inputs every run


def _want(host: np.ndarray) -> list[int]:
    steps = np.diff(host.astype(np.int64))
    lo, hi = (int(steps.min()), int(steps.max())) if steps.size else (0, 0)
    return [int(host[0]), int(host[-1]), lo, hi]


def _random_offsets(rng: np.random.Generator, count: int, kind: str, dtype) -> np.ndarray:
    steps = rng.integers(0, 5000, size=count - 1)
    if kind == "decreasing" and count > 1:
        steps[rng.integers(0, count - 1)] = -int(rng.integers(1, 1000))  # a negative smallest step
    first = int(rng.integers(1, 10_000)) if kind == "nonzero first" else 0
    return (first + np.concatenate([[0], np.cumsum(steps)])).astype(dtype)


def _start(t: "torch.Tensor"):
    return scree._C.offsets_summary_cuda(torch.utils.dlpack.to_dlpack(t), _backends.get("torch").stream(t))


@needs_summary_kernel
@pytest.mark.parametrize("kind", ["increasing", "decreasing", "nonzero first"])
@pytest.mark.parametrize("count", [1, 2, 3, 33, 255, 256, 257, 513, 4097, 100_003])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_offsets_summary_cuda_matches_numpy(dtype, count, kind):
    host = _random_offsets(_fresh_rng(), count, kind, dtype)
    off = torch.from_numpy(host).to("cuda")
    with no_sync():
        s = _start(off)
        assert isinstance(s.ready(), bool)  # polls, never waits
    got = s.value()
    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.shape == (4,)
    assert got.tolist() == _want(host)
    assert s.ready() and s.value().tolist() == got.tolist()  # settled; a fresh array each time
    assert isinstance(s, Readback)


@needs_summary_kernel
def test_offsets_summary_cuda_waits_only_in_value_and_recycles_dropped_checks():
    """Checks behind a long kernel are not ready; value() waits; checks dropped before their kernel
    ran keep their host slots out of circulation until it has (no wrong numbers, no crash)."""
    rng = _fresh_rng()
    hosts = [_random_offsets(rng, int(rng.integers(1, 3000)), "decreasing", np.int32) for _ in range(8)]
    offs = [torch.from_numpy(h).to("cuda") for h in hosts]
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time ahead of the checks on the same stream
    dropped = [_start(offs[i % len(offs)]) for i in range(600)]  # more than one slab of slots
    waiting = _start(offs[0])
    assert not waiting.ready()
    del dropped  # kernels still queued: their slots must not be handed out yet
    kept = [(i, _start(offs[i % len(offs)])) for i in range(700)]
    assert waiting.value().tolist() == _want(hosts[0])
    for i, s in kept:
        assert s.value().tolist() == _want(hosts[i % len(hosts)])
    torch.cuda.synchronize()
    again = [(i, _start(offs[i % len(offs)])) for i in range(700)]  # reuses the swept slots
    for i, s in again:
        assert s.value().tolist() == _want(hosts[i % len(hosts)])


@needs_summary_kernel
def test_offsets_summary_cuda_on_a_side_stream_and_another_device():
    host = _random_offsets(_fresh_rng(), 1001, "decreasing", np.int64)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        off = torch.from_numpy(host).pin_memory().to("cuda", non_blocking=True)  # ordered on `side`
        assert _start(off).value().tolist() == _want(host)
    if torch.cuda.device_count() > 1:
        torch.cuda.set_device(0)
        off1 = torch.from_numpy(host).to("cuda:1")
        assert _start(off1).value().tolist() == _want(host)
        assert torch.cuda.current_device() == 0  # the launch's device guard restored it


@needs_summary_kernel
@pytest.mark.parametrize("bad, error", [
    (lambda: torch.zeros(2, 3, dtype=torch.int32, device="cuda"), scree.ShapeError),
    (lambda: torch.zeros(5, dtype=torch.float32, device="cuda"), scree.DTypeError),
    (lambda: torch.zeros(5, dtype=torch.int16, device="cuda"), scree.DTypeError),
    (lambda: torch.arange(10, dtype=torch.int64, device="cuda")[::2], scree.ArgumentError),
    (lambda: torch.arange(5, dtype=torch.int64), scree.UnsupportedError),
    (lambda: torch.zeros(0, dtype=torch.int64, device="cuda"), scree.RaggedError),
], ids=["2-D", "float", "int16", "non-contiguous", "cpu", "empty"])
def test_offsets_summary_cuda_bad_arguments(bad, error):
    with pytest.raises(error, match="offsets"):
        _start(bad())


@needs_summary_kernel
def test_torch_backend_checks_cuda_offsets_with_the_kernel():
    ns = _backends.get("torch")
    cu = torch.tensor([0, 3, 3, 10], dtype=torch.int32, device="cuda")
    rb = ns.offsets_summary(cu)
    assert isinstance(rb, scree._C.OffsetsSummary) and isinstance(rb, Readback)
    assert rb.value().tolist() == [0, 10, 0, 7]
    # the device copy the forward reads its exact max_length from (kernels.attention.plan)
    assert rb.device_copy.device == cu.device and rb.device_copy.dtype == torch.int64
    assert rb.device_copy.tolist() == [0, 10, 0, 7]
    strided = torch.tensor([0, 9, 3, 9, 3, 9, 10, 9], dtype=torch.int64, device="cuda")[::2]  # 0, 3, 3, 10
    assert ns.offsets_summary(strided).value().tolist() == [0, 10, 0, 7]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("offsets, match", [([1, 2, 9], "offsets\\[0\\] must be 0"),
                                            ([0, 5, 3, 9], "non-decreasing"),
                                            ([0, 2, 8], "must equal values.shape\\[0\\] = 9")],
                         ids=["first", "decreasing", "last"])
def test_bad_cuda_cu_seqlens_raise_at_the_next_poll(offsets, match, dtype):
    poll()
    values = torch.rand(9, 4, device="cuda")
    bad = torch.tensor(offsets, dtype=dtype, device="cuda")  # before no_sync: a host-to-device copy
    with no_sync():
        arr = scree.Array(values, bad)  # no error yet: nothing was read
    torch.cuda.synchronize()  # the check has certainly run now
    with pytest.raises(scree.RaggedError, match=match):
        poll()
    assert arr._layout.check is None


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_good_cuda_cu_seqlens_give_the_exact_max_length_without_sync(dtype):
    poll()
    lengths = [int(x) for x in _fresh_rng().integers(0, 300, size=37)]
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)])).to(dtype).to("cuda")
    values = torch.rand(sum(lengths), 4, device="cuda")
    with no_sync():
        arr = scree.from_cu_seqlens(values, cu)
        assert arr._layout.host is None
    torch.cuda.synchronize()
    poll()
    assert arr._layout.check is None and arr._layout.max_length == max(lengths) and arr._layout.host is None

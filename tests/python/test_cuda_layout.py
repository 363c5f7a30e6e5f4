"""Layout operations on torch CUDA tensors (marked `cuda`; skipped without a GPU). With no CUDA
layout kernel yet they run the reference with torch ops on the device; results must equal the
C++ CPU kernels exactly, and the hot paths must not synchronise the device (checked with
torch.cuda.set_sync_debug_mode("error"), which raises on any synchronising call)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import scree  # noqa: E402

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

"""scree's CPU kernels on torch's OpenMP workers (scree/_connect/torch_openmp.py): shared as soon as
scree meets torch, the same bits as on scree's own pool (attention forward and backward, a layout
kernel), under torch.set_num_threads(1) too, and SCREE_SHARE_OPENMP=0 keeps scree's pool."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import scree  # noqa: E402
from scree import _C  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="torch built without OpenMP")


def _arrays(seed: int):
    g = torch.Generator().manual_seed(seed)
    lens = [1, 37, 300, 129, 0, 512, 64]
    off = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int64)
    q, k, v = (torch.randn(int(off[-1]), 4, 64, generator=g, requires_grad=True) for _ in range(3))
    return off, q, k, v


def _run(seed: int):
    """Forward, backward and a padding round trip, large enough that every kernel uses threads."""
    off, q, k, v = _arrays(seed)
    out = scree.varlen_attention(*(scree.Array(x, off) for x in (q, k, v)), causal=True).values
    out.backward(torch.ones_like(out))
    big = scree.Array(torch.randn(int(off[-1]) * 64, 64, generator=torch.Generator().manual_seed(seed)), off * 64)
    padded, _ = big.to_padded()
    return [out.detach(), q.grad, k.grad, v.grad, padded, big.softmax().values]


def test_torch_runtime_is_shared():
    scree.Array(torch.zeros(2, 1), torch.tensor([0, 2]))  # scree meets torch
    lib = _C.shared_openmp_runtime()
    assert re.match(r"lib(gomp|iomp5|omp)\b", os.path.basename(lib)), lib


def test_same_bits_on_either_pool():
    from scree._connect import torch_openmp

    scree.Array(torch.zeros(2, 1), torch.tensor([0, 2]))
    assert _C.shared_openmp_runtime()
    shared = _run(0)
    _C.stop_sharing_openmp_runtime()
    try:
        assert _C.shared_openmp_runtime() == ""
        own = _run(0)
    finally:
        torch_openmp.share()
    assert _C.shared_openmp_runtime()
    for a, b in zip(shared, own):
        assert torch.equal(a, b)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _run(0)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, own):
        assert torch.equal(a, b)


def test_more_parts_than_the_team_all_run(monkeypatch):
    """Part i of a job runs on the team's thread i % team: with more parts than threads (13 or 7
    parts on torch's team, or on a team of one) every part still runs, to the same bits."""
    scree.Array(torch.zeros(2, 1), torch.tensor([0, 2]))
    assert _C.shared_openmp_runtime()
    ref = _run(1)
    threads = torch.get_num_threads()
    try:
        for parts, team in ((13, threads), (7, 1)):
            monkeypatch.setenv("SCREE_NUM_THREADS", str(parts))
            torch.set_num_threads(team)
            for a, b in zip(_run(1), ref):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_not_loaded_or_not_openmp_is_refused():
    assert not _C.share_openmp_runtime("libscree-no-such-runtime.so.1")
    assert not _C.share_openmp_runtime(_C.__file__)  # loaded, but no OpenMP entry points


def test_opt_out_keeps_screes_pool():
    code = ("import torch, scree; from scree import _C; "
            "scree.Array(torch.zeros(2, 1), torch.tensor([0, 2])); print(repr(_C.shared_openmp_runtime()))")
    env = dict(os.environ, SCREE_SHARE_OPENMP="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "''"

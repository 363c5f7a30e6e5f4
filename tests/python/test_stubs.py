"""The committed type stubs of scree._C (python/scree/_C.pyi) must match what nanobind's stubgen
writes for the built module, so editors and type checkers see the real signatures. The committed
stubs are those of a CUDA build; a CPU-only build lacks the names in CUDA_ONLY (and the numpy import
only they use), which are left out of the comparison there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from scree import _C

ROOT = Path(__file__).resolve().parents[2]
CUDA_ONLY = ("OffsetsSummary", "offsets_summary_cuda", "paged_decode_plan", "paged_decode", "paged_fwd_cuda")


def without_cuda_only(text: str) -> str:
    """text minus the top-level class/def blocks of CUDA_ONLY and, then unused, `import numpy`."""
    blocks = re.split(r"(?m)^(?=(?:class|def) )", text)
    kept = [b for b in blocks if not re.match(r"(?:class|def) (%s)\b" % "|".join(CUDA_ONLY), b)]
    out = "".join(kept)
    if not re.search(r"\[numpy\.", out):  # a use such as NDArray[numpy.int64]
        out = out.replace("import numpy\n", "", 1)
    return out


def test_stub_matches_module(tmp_path: Path):
    pytest.importorskip("nanobind.stubgen", reason="nanobind (a build dependency) is not installed")
    out = tmp_path / "_C.pyi"
    subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "scree._C", "-o", str(out)], check=True)
    committed = (ROOT / "python" / "scree" / "_C.pyi").read_text()
    if not _C.cuda_compiled():
        committed = without_cuda_only(committed)
    assert out.read_text() == committed, (
        "python/scree/_C.pyi is stale: run `python -m nanobind.stubgen -m scree._C -o python/scree/_C.pyi` "
        "in a CUDA build")

"""The committed type stubs of scree._C (python/scree/_C.pyi) must match what nanobind's stubgen
writes for the built module, so editors and type checkers see the real signatures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_stub_matches_module(tmp_path: Path):
    pytest.importorskip("nanobind.stubgen", reason="nanobind (a build dependency) is not installed")
    out = tmp_path / "_C.pyi"
    subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "-m", "scree._C", "-o", str(out)], check=True)
    committed = (ROOT / "python" / "scree" / "_C.pyi").read_text()
    assert out.read_text() == committed, (
        "python/scree/_C.pyi is stale: run `python -m nanobind.stubgen -m scree._C -o python/scree/_C.pyi`")

"""The benchmark scripts keep working: each runs in --quick mode into a temporary folder and writes
its JSON with a correctness check that passed. Timings are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch", reason="the benchmarks compare against torch")


@pytest.mark.parametrize("script,result", [("bench_layout.py", "layout_cpu_quick.json"),
                                           ("bench_attention_cpu.py", "attention_cpu.json")])
def test_benchmark_quick_run(tmp_path: Path, script: str, result: str):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--no-plot",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = list(tmp_path.glob("*.json"))
    assert written, f"{script} wrote no JSON into {tmp_path}: {proc.stdout[-2000:]}"
    data = json.loads(written[0].read_text())
    rows = data.get("rows") or data.get("workloads")
    assert data["machine"]["git_commit"] is not None and rows, "results must name the machine and hold results"

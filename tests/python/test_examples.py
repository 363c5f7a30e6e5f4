"""Runs every example (and the demo) as a user would, in a fresh interpreter: each must exit 0.
The examples carry their own asserts, so a wrong result fails here too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py"))
# Small arguments for the demo keep the suite fast; every other example runs as written.
ARGS = {"demo.py": ["--sequences", "12", "--median", "32", "--max-len", "200"]}


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"01_quickstart.py", "02_nopad_transformer.py", "03_training_step.py", "04_hf_compat.py",
            "05_multimodal.py", "06_ragged_ops.py", "07_paged_serving.py", "demo.py"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(path), *ARGS.get(path.name, [])], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{path.name} printed nothing"

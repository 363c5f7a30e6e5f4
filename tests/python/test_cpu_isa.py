"""Every build of the CPU attention kernels this machine can run (SCREE_CPU_ISA forces each: the
portable one, AVX2, AVX-512, AVX512-BF16 (the bfloat16 forward's products on VDPBF16PS), AMX
(bfloat16 forward and backward on the tiles)), each in its own
process (the choice is made once a process), against the fp64 reference (cpu_isa_worker.py). A
build the CPU lacks is skipped, naming the one the choice gives instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512", "avx512bf16", "amx"])
def test_cpu_build_matches_the_reference(isa):
    env = {**os.environ, "SCREE_CPU_ISA": isa}
    # Which build the capped choice gives, asked first: a CPU without this one would run the build
    # below it through the whole worker again (~14 s of a 2-core CI machine a build).
    chosen = subprocess.run([sys.executable, "-c", "from scree import _C; print(_C.cpu_isa())"],
                            capture_output=True, text=True, timeout=120, cwd=HERE, env=env)
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    if chosen.stdout.strip() != isa:
        pytest.skip(f"this CPU has no {isa} (SCREE_CPU_ISA={isa} gives the {chosen.stdout.strip()} build)")
    proc = subprocess.run([sys.executable, str(HERE / "cpu_isa_worker.py")], capture_output=True, text=True,
                          timeout=600, cwd=HERE, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split()[0] == isa, proc.stdout[-3000:]
    assert proc.stdout.split()[-1] == "ok"

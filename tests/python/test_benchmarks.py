"""The benchmark scripts keep working: each runs in --quick mode into a temporary folder and writes
its JSON with a correctness check that passed. Timings are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_module import benchmark_module

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("torch", reason="the benchmarks compare against torch")


@pytest.mark.parametrize("script,result", [("bench_layout.py", "layout_cpu_quick.json"),
                                           ("bench_attention_cpu.py", "attention_cpu.json"),
                                           ("bench_ragged_ops.py", "ragged_ops_cpu_quick.json"),
                                           ("bench_batching.py", "batching_quick.json")])
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
    if script == "bench_attention_cpu.py":  # the per-call overhead against SDPA (issue 13)
        for mode in ("fwd", "fwdbwd"):
            host = data["call_overhead"]["modes"][mode]["host_us"]
            assert host["scree"] > 0 and host["sdpa"] > 0


def test_cpu_benchmark_targets_are_issue_20s():
    """bench_attention_cpu.py scores issue 20's targets as the issue states them: >= 1.0x the best
    alternative in every mode, >= 1.5x on mixed lengths, the fp32 forward >= 70% of the fp32 peak
    (the in-group one where the row has it), the bf16 forward >= 50% only where AMX runs it; issue
    4's (closed) targets are listed apart."""
    b = benchmark_module("bench_attention_cpu")

    def row(name, kind, dtype, fwd, fwdbwd=None):
        modes = {"fwd": fwd} | ({"fwdbwd": fwdbwd} if fwdbwd else {})
        return dict(name=name, kind=kind, dtype=dtype, long=False, modes=modes)

    rows = [row("mix d64", "mix", "float32", dict(x_best=1.6, pct_peak=90.0, pct_peak_in_group=69.0),
                dict(x_best=1.4)),
            row("short d64 bf16", "short", "bfloat16", dict(x_best=0.9, pct_peak=40.0))]

    def scored(isa):
        return {(t["issue"], t["target"], t["workload"], t["mode"]): t["met"] for t in b.evaluate_targets(rows, isa)}

    amx = scored("amx")
    i20 = {k[1:]: v for k, v in amx.items() if k[0] == 20}
    assert i20 == {(">= 1.0x best alternative", "mix d64", "fwd"): True,
                   (">= 1.0x best alternative", "mix d64", "fwdbwd"): True,
                   (">= 1.5x best alternative, mixed lengths", "mix d64", "fwd"): True,
                   (">= 1.5x best alternative, mixed lengths", "mix d64", "fwdbwd"): False,
                   (">= 70% of fp32 matmul peak, forward", "mix d64", "fwd"): False,  # the in-group 69%
                   (">= 1.0x best alternative", "short d64 bf16", "fwd"): False,
                   (">= 50% of bf16 matmul peak, AMX forward", "short d64 bf16", "fwd"): False}
    assert not any(k[1].startswith(">= 50% of bf16") for k in scored("avx512"))  # no AMX: no bf16 peak target
    assert amx[(4, ">= 4x padded SDPA, mixed lengths, forward", "mix d64", "fwd")] is False  # no ratio recorded


def _gpu_bench():
    """benchmarks/bench_attention_gpu.py as a module (it imports torch and triton only inside main)."""
    return benchmark_module("bench_attention_gpu")


def test_gpu_benchmark_workloads_and_flops():
    """The GPU benchmark's CPU-side helpers: TARGETS.md's workloads (32k tokens, heads = 2048 / D) and
    the 4 x 16-token batch of issue 13, lengths in range and summing to the token count, useful FLOPs
    as DESIGN.md counts them."""
    import numpy as np
    b = _gpu_bench()
    names = {w[0] for w in b.WORKLOADS}
    assert names == {"batch4x16 d128", "eq2048 d128", "eq8192 d128 causal", "mix d128", "mix d128 causal",
                     "short d128", "short d128 causal", "mix d64", "short d64", "tiny d128", "tiny d128 causal"}
    assert b.RANGES["short"] == (16, 512) and b.RANGES["tiny"] == (1, 64)  # 32k tokens of lengths 16-512 / 1-64
    assert b.heads_for(128) == 16 and b.heads_for(64) == 32
    rng = np.random.default_rng(0)
    for name, kind, _, _ in b.WORKLOADS:
        tokens = b.WORKLOAD_TOKENS.get(name, b.TOKENS)
        lens = b.make_lengths(kind, tokens, rng)
        assert sum(lens) == tokens and min(lens) >= 1
        if kind.startswith("eq"):
            assert set(lens) == {int(kind[2:])}
        else:
            lo, hi = b.RANGES[kind]
            assert all(lo <= n <= hi for n in lens[:-1]) and lens[-1] <= hi
    assert b.make_lengths("eq512", 1200, rng) == [512, 512, 176]
    assert b.make_lengths("eq16", b.WORKLOAD_TOKENS["batch4x16 d128"], rng) == [16] * 4
    # 4 * Lq * Lk * D * H per sequence, half when causal; backward 2.5x, forward+backward 3.5x
    assert b.flops_fwd([2, 3], [2, 3], 2, 4, False) == 4 * (4 + 9) * 4 * 2
    assert b.flops_fwd([2, 3], [5, 1], 2, 4, True) == 4 * (10 + 3) * 4 * 2 / 2
    assert b.flops([2, 3], 2, 4, False, "bwd") == 2.5 * b.flops([2, 3], 2, 4, False, "fwd")
    assert b.flops([2, 3], 2, 4, True, "fwdbwd") == 3.5 * b.flops([2, 3], 2, 4, True, "fwd")


def test_gpu_benchmark_dry_run_on_cpu(tmp_path: Path):
    """--device cpu runs the GPU benchmark's plumbing on the CPU (scree and padded SDPA; FA-2 and
    FA-4 fail there and must be recorded, not fatal) and writes its JSON, with the call timings
    (isolated and in a stream) beside the kernel timings."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_attention_gpu.py"), "--device", "cpu",
                           "--quick", "--tokens", "128", "--flex", "none", "--no-plot", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "attention_gpu.json").read_text())
    assert data["machine"]["git_commit"] is not None and len(data["workloads"]) == 3
    assert data["workloads"][0]["tokens"] == 64 and data["workloads"][0]["num_sequences"] == 4
    for row in data["workloads"]:
        for mode in ("fwd", "bwd", "fwdbwd"):
            methods = row["modes"][mode]["methods"]
            assert methods["scree"]["median_ms"] > 0 and "error" in methods["fa2"] and "error" in methods["fa4"]
            for m in ("scree", "cudnn"):
                assert ("isolated" in methods[m]) == (mode != "bwd")
                if mode != "bwd":
                    assert methods[m]["isolated"]["median_ms"] > 0 and methods[m]["stream"]["host_us"] > 0
        assert row["modes"]["fwd"]["check"]["cudnn"]["ok"], row["modes"]["fwd"]["check"]


def test_short_target_bound_reads_a_committed_run():
    """benchmarks/diag/short_target_bound.py (NOTES.md, issue 18) regenerates a committed GPU run's
    lengths from its seed (it exits if their FLOPs differ from the recorded ones) and counts scree's
    forward blocks: a sequence of > 128 its square of tiles, runs of short ones one packed tile each."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "diag"))
    try:
        import short_target_bound as stb
    finally:
        sys.path.remove(str(ROOT / "benchmarks" / "diag"))
    assert stb.scree_blocks([300]) == 9 and stb.scree_blocks([64, 64, 1]) == 2
    assert stb.scree_blocks([100, 200, 100]) == 1 + 4 + 1
    assert stb.scree_blocks([1] * 129) == 2  # the greedy restarts every 128 sequences
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "diag" / "short_target_bound.py"),
                           str(ROOT / "benchmarks" / "results" / "attention_gpu_s20.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "short d128 fwdbwd" in proc.stdout and "tiny d128 fwd " in proc.stdout

"""tools/ab_summary.py reads gpu_ab.sh's ab.txt (time_kernels lines under "== NAME round R" headers)
into per-variant medians and ratios to the base variant."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import ab_summary  # noqa: E402


def _line(name: str, fwd: float, bwd: float, det: float) -> str:
    # time_kernels' format (benchmarks/cuda/time_kernels.cu)
    return (f"{name:<20} seqs    4  fwd[sm90] {fwd:7.3f} ms  694.4 TFLOP/s (memset   1.600) | fwd[sm80]  281.2 | "
            f"bwd[sm90] {bwd:7.3f} ms  497.1 | bwd[sm80]  139.0 | bwd det[sm90] {det:6.1f}")


AB = "\n".join([
    "NVIDIA H100 80GB HBM3, 132 SMs",
    "== new round 1: . -DX=1",
    _line("eq8192 d128 causal", 1.6, 5.0, 300.0),
    _line("a workload name of more than twenty", 0.5, 2.0, 100.0),
    "== base round 1: . ",
    _line("eq8192 d128 causal", 1.5, 6.0, 310.0),
    _line("a workload name of more than twenty", 0.5, 2.2, 100.0),
    "== new round 2: . -DX=1",
    _line("eq8192 d128 causal", 1.6, 5.2, 302.0),
    "eq8192 d128 causal   FAILED: out of memory",
    "== base round 2: . ",
    _line("eq8192 d128 causal", 1.5, 6.4, 312.0),
    "== gtest new",
    "[  PASSED  ] 2 tests.",
])


def test_parse_groups_rounds_by_variant_and_workload():
    variants, runs = ab_summary.parse(AB)
    assert variants == ["new", "base"]
    assert runs[("new", "eq8192 d128 causal")]["bwd"] == [5.0, 5.2]
    assert runs[("base", "eq8192 d128 causal")]["fwd"] == [1.5, 1.5]
    assert runs[("new", "a workload name of more than twenty")]["det"] == [100.0]


def test_summary_ratios_are_base_over_variant():
    rows = [line.split() for line in ab_summary.summary(AB).splitlines()[2:]]
    new = next(r for r in rows if r[:4] == ["eq8192", "d128", "causal", "new"])
    # bwd medians: new 5.1, base 6.2 -> x 1.216; fwd 1.6 vs 1.5 -> x 0.9375
    assert new[4:] == ["2", "1.600", "0.938", "5.100", "1.216", "301.0"]
    base = next(r for r in rows if r[:4] == ["eq8192", "d128", "causal", "base"])
    assert base[4:] == ["2", "1.500", "1.000", "6.200", "1.000", "311.0"]


def test_summary_without_timings_says_so():
    assert ab_summary.summary("== base round 1\nbuild failed") == "no time_kernels lines found"

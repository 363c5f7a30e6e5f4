#!/usr/bin/env python3
"""Medians of a kernel A/B: reads the ab.txt that tools/gpu_ab.sh writes (sections "== NAME round R:
flags" followed by time_kernels lines) and prints, per workload, each variant's median forward and
backward ms and deterministic-backward TFLOP/s over its rounds, with the ratio of the base variant's
median time to the variant's (> 1: the variant is faster). The base is the variant named "base", else
the last one named on gpu_ab.sh's command line.

    python3 tools/ab_summary.py OUTDIR/ab.txt
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

_SECTION = re.compile(r"^== (\S+)")
# A time_kernels line: the name (padded to 20 characters, may hold spaces), then the timings.
_LINE = re.compile(r"^(?P<name>.+?)\s+seqs\s+\d+\s+fwd\[\w+\]\s+(?P<fwd>[\d.]+) ms.*?\| bwd\[\w+\]\s+(?P<bwd>[\d.]+) ms"
                   r".*?bwd det\[\w+\]\s+(?P<det>[\d.]+)")


def parse(text: str) -> tuple[list[str], dict[tuple[str, str], dict[str, list[float]]]]:
    """(variants in order of first appearance, {(variant, workload): {"fwd": [...], "bwd": [...], "det": [...]}})."""
    variants: list[str] = []
    runs: dict[tuple[str, str], dict[str, list[float]]] = {}
    current = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            current = m.group(1).rstrip(":")
            if current not in variants and not current.startswith("gtest"):
                variants.append(current)
            continue
        m = _LINE.match(line)
        if m and current is not None:
            cell = runs.setdefault((current, m.group("name").strip()), {"fwd": [], "bwd": [], "det": []})
            for key in cell:
                cell[key].append(float(m.group(key)))
    return variants, runs


def summary(text: str) -> str:
    variants, runs = parse(text)
    if not runs:
        return "no time_kernels lines found"
    base = "base" if "base" in variants else variants[-1]
    workloads = list(dict.fromkeys(w for _, w in runs))
    out = [f"medians over rounds; x = {base}'s median / the variant's (> 1: faster than {base})",
           f"{'workload':<22}{'variant':<12}{'n':>3}{'fwd ms':>10}{'x':>7}{'bwd ms':>10}{'x':>7}{'det TF/s':>10}"]
    for w in workloads:
        ref = runs.get((base, w))
        for v in variants:
            cell = runs.get((v, w))
            if cell is None:
                continue
            fwd, bwd, det = (statistics.median(cell[k]) for k in ("fwd", "bwd", "det"))
            xf = statistics.median(ref["fwd"]) / fwd if ref else float("nan")
            xb = statistics.median(ref["bwd"]) / bwd if ref else float("nan")
            out.append(f"{w:<22}{v:<12}{len(cell['bwd']):>3}{fwd:>10.3f}{xf:>7.3f}{bwd:>10.3f}{xb:>7.3f}{det:>10.1f}")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(summary(Path(sys.argv[1]).read_text()))


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmark scripts: thread-count overrides for scree's kernels, the machine
description every results JSON starts with, and the two timings of a call as a user sees it
(isolated_call, call_stream), which every attention benchmark reports beside its kernel time."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
NCORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn run with SCREE_NUM_THREADS=n (the kernels read it on every call)."""
    def call():
        old = os.environ.get("SCREE_NUM_THREADS")
        os.environ["SCREE_NUM_THREADS"] = str(n)
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["SCREE_NUM_THREADS"]
            else:
                os.environ["SCREE_NUM_THREADS"] = old
    return call


def sh(*cmd: str) -> str:
    """A command's stdout in the benchmarks folder, or "" when it cannot run."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - a missing tool only empties that field
        return ""


def cpu_model_and_flags() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def machine_info(**extra: Any) -> dict:
    """Date, host, CPU, versions, git commit and load at the start of a run, plus `extra`."""
    model, flags = cpu_model_and_flags()
    try:
        import torch
        torch_version, torch_threads = torch.__version__, torch.get_num_threads()
    except ImportError:
        torch_version = torch_threads = None
    info = dict(
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host=platform.node(), platform=platform.platform(), cpu=model, cores_usable=NCORES,
        cpu_count=os.cpu_count(), avx2="avx2" in flags, fma="fma" in flags,
        python=platform.python_version(), numpy=np.__version__, torch=torch_version, torch_threads=torch_threads,
        git_commit=os.environ.get("SCREE_GIT_COMMIT") or sh("git", "rev-parse", "HEAD"),  # env: copied trees
        git_dirty=bool(sh("git", "status", "--porcelain", "--", "src", "include", "python")),
        SCREE_NUM_THREADS=os.environ.get("SCREE_NUM_THREADS"), loadavg_start=os.getloadavg(),
    )
    info.update(extra)
    return info


def isolated_call(fn: Callable[[], Any], sync: Callable[[], None], reps: int,
                  prepare: Callable[[], Any] | None = None) -> dict:
    """One call as a user sees it: the device idle before it (synchronised), synchronised after it,
    caches not flushed. Wall time per call, median over `reps` calls; `prepare()` (untimed) runs
    before each, e.g. to give the call fresh inputs."""
    fn()
    sync()
    ms = []
    for _ in range(reps):
        if prepare is not None:
            prepare()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    return dict(median_ms=statistics.median(ms), min_ms=min(ms), reps=reps, samples_ms=ms)


def call_stream(fn: Callable[[], Any], sync: Callable[[], None], calls: int, repeats: int = 3) -> dict:
    """Back-to-back calls, synchronised only at the end of each run of `calls`: host_us is the
    median time one call takes to return (what the CPU spends per call; on a GPU the device runs
    behind), wall_us the run's wall time per call with its final synchronisation (what a stream of
    calls costs when the device keeps up, or the device time when it does not). Median over
    `repeats` runs for wall_us, over all calls for host_us."""
    fn()
    sync()
    host, wall = [], []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            host.append(time.perf_counter() - t0)
        sync()
        wall.append((time.perf_counter() - start) / calls)
    return dict(host_us=statistics.median(host) * 1e6, wall_us=statistics.median(wall) * 1e6, calls=calls,
                repeats=repeats)


def cuda_event_ms(fn: Callable[[], Any], reps: int = 30) -> float:
    """Median milliseconds of a call between CUDA events on the current stream, the GPU idle before
    each (no flush); the host time of the call counts where the GPU waits for it."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def write_results(out: Path, stem: str, payload: dict, plot: Callable[[Any], Any] | None = None) -> None:
    """payload as out/stem.json and, with `plot` (given matplotlib.pyplot, it returns a figure),
    that figure as out/stem.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    if plot is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig = plot(plt)
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=110)
    print(f"# wrote {out / (stem + '.json')}")

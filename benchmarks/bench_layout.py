#!/usr/bin/env python3
"""Layout-op throughput on the CPU: scree pack / to_padded / from_padded (lengths, mask) / unpad
against memcpy bandwidth measured in the same process and against what users write instead.

    python benchmarks/bench_layout.py            # full run: 3.5-4.5 min on the shared 2-core VM
                                                 # at load 3-6 (~175 s of CPU time), less when idle
    python benchmarks/bench_layout.py --quick    # smoke run: ~6 s of measurement (+ imports),
                                                 # writes layout_cpu_quick.{json,png} instead

How bytes are counted (R = bytes per token row = prod(feature) * itemsize, T = tokens,
n = sequences, L = padded length = longest sequence). Only the bytes an op must touch:
    pack                  read T*R + write T*R
    to_padded             read T*R + write n*L*R (data and pad fill: the output must exist)
                          + write n*L (bool mask)
    from_padded(lengths)  read T*R (useful rows of padded) + write T*R
    from_padded(mask)     read n*L (mask) + read T*R + write T*R
GB/s = bytes / median seconds (1 GB = 1e9 B).

The memcpy reference moves the same number of bytes: np.copyto(dst, src) of a contiguous
buffer of bytes/2 bytes (so read + write == the op's bytes), timed in the same rounds as the op.
    memcpy 1T        one thread (numpy's copy loop).
    memcpy NT        the buffer cut into N equal pieces copied by N Python threads (numpy
                     releases the GIL), N = the cores this process may use.
    memcpy 1T 256MiB (reused regime) added when bytes/2 < 256 MiB: glibc's memcpy only streams (non-temporal
                     stores, no read-for-ownership of the destination) for single copies above
                     x86_non_temporal_threshold (192 MiB on the reference VM), so a smaller
                     np.copyto would understate the machine's memcpy bandwidth.
Two regimes, both compared like for like:
    fresh   the output is allocated inside the timed call, as every user-facing API does
            (scree.pack, arr.to_padded, scree.from_padded; np.concatenate, torch.cat,
            pad_sequence, padded[mask]); the memcpy reference also allocates its destination
            inside the timed call: `np.empty` + copyto (NumPy's allocator asks for transparent
            huge pages), and for torch rows also `torch.empty` + copyto ("torch-alloc", 4 KiB
            pages) so the allocator's share is visible. First-touch page faults are paid here.
    reused  the output exists and has been written before (pages faulted in): the compiled
            kernels scree._C.pack (torch: pack_addresses, as scree.pack) / pad / unpad / mask_offsets+unpad_mask into a preallocated
            output, against memcpy into a reused buffer and the baselines' out= forms.
"% memcpy" is op GB/s over the best memcpy reference of the same regime (NumPy allocator for
fresh; the torch-alloc reference is shown, not used). "x base" is the user baseline's time over
scree's (> 1: scree is faster); for torch the baseline runs with torch's default intra-op threads
and with 1 thread ("baseline 1T") and the faster counts: on an oversubscribed machine torch's
OpenMP threads can lose a lot, and the comparison should not profit from that.
"scree 1T" (reused regime): the same kernel with SCREE_NUM_THREADS=1.

Sizes (full run): numpy rows move >= 512 MiB per op, torch rows >= 256 MiB (torch's 4 KiB-page
outputs fault in at ~1 GB/s on the reference VM, which bounds the run time); --quick uses
~4-24 MiB per op, i.e. at most the L3 size: a smoke test, not a bandwidth measurement.

Protocol: one warm-up call of every scree/baseline callable (the memcpy references are warmed
once per process), then `rounds` rounds; in each round every callable of a
group runs once, in an order rotated per round, so a noisy neighbour slows scree and its
references alike; medians over rounds. Outputs are dropped outside the timed region, so
freeing (munmap) is not timed. gc is off while timing. SCREE_NUM_THREADS=1 rows ("scree 1T")
are measured in the same rounds by setting the variable around the call (read per call).

Writes benchmarks/results/layout_cpu.json and layout_cpu.png (or --out DIR).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

import scree
from scree import _C

try:
    import torch
    from torch.nn.utils.rnn import pad_sequence
except ImportError:  # the numpy rows still run
    torch = None

from _common import HERE, NCORES, sh, with_threads  # noqa: E402 - benchmarks/ is on sys.path
from _common import machine_info as _machine_info  # noqa: E402
_POOL = ThreadPoolExecutor(max(NCORES, 1))
BIG = 256 << 20  # one np.copyto this large streams (non-temporal stores) under glibc's defaults


# --------------------------------------------------------------------------------------------
# timing
def run_group(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
              no_warmup: tuple[str, ...] = ()) -> dict[str, list[float]]:
    """Interleaved timing: every callable once per round, rotated order; returns seconds per call.
    Callables named in `no_warmup` (the memcpy references, warmed once per process) skip warm-up."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    gc.disable()  # (a full gc.collect costs ~0.1-0.4 s with torch loaded: done once per dataset)
    try:
        for _ in range(warmup):
            for k in names:
                if k not in no_warmup:
                    out = fns[k]()
                    del out
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                t0 = time.perf_counter()
                out = fns[k]()
                t1 = time.perf_counter()
                del out
                times[k].append(t1 - t0)
    finally:
        gc.enable()
    return times


# --------------------------------------------------------------------------------------------
# memcpy references
class Memcpy:
    """Contiguous source/destination of the largest size needed, both faulted in once."""

    def __init__(self, max_bytes: int, big: bool = True):
        max_bytes = max(max_bytes, BIG) if big else max_bytes
        self.src = np.empty(max_bytes, dtype=np.uint8)
        self.src[:] = 1
        self.dst = np.empty(max_bytes, dtype=np.uint8)
        self.dst[:] = 0

    @staticmethod
    def _split_copy(dst: np.ndarray, src: np.ndarray) -> None:
        k = NCORES
        step = -(-len(src) // k)
        step = -(-step // 4096) * 4096
        list(_POOL.map(lambda i: np.copyto(dst[i:i + step], src[i:i + step]), range(0, len(src), step)))

    def reused(self, nbytes: int) -> dict[str, Callable[[], Any]]:
        s, d = self.src[:nbytes], self.dst[:nbytes]
        out = {"memcpy 1T": lambda: np.copyto(d, s)}
        if NCORES > 1:
            out[f"memcpy {NCORES}T"] = lambda: self._split_copy(d, s)
        return out

    def fresh(self, nbytes: int, torch_alloc: bool) -> dict[str, Callable[[], Any]]:
        s = self.src[:nbytes]

        def one():
            d = np.empty(nbytes, dtype=np.uint8)
            np.copyto(d, s)
            return d

        def many():
            d = np.empty(nbytes, dtype=np.uint8)
            self._split_copy(d, s)
            return d

        out = {"memcpy 1T": one}
        if NCORES > 1:
            out[f"memcpy {NCORES}T"] = many
        if torch_alloc and torch is not None:
            def talloc():
                d = torch.empty(nbytes, dtype=torch.uint8)
                np.copyto(d.numpy(), s)
                return d
            out["memcpy 1T torch-alloc"] = talloc
        return out


# --------------------------------------------------------------------------------------------
# workloads
def make_lengths(kind: str, tokens: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":      # skewed: uniform in [1, 4096]
        lens = rng.integers(1, 4097, size=max(1, tokens // 2048))
    elif kind == "lognormal":  # skewed, heavy tail: median 256, sigma 0.8, clipped to [1, 2048]
        lens = np.clip(np.rint(rng.lognormal(np.log(256), 0.8, size=max(1, tokens // 350))), 1, 2048)
    elif kind == "short":      # many short sequences: uniform in [1, 64]
        lens = rng.integers(1, 65, size=max(1, tokens // 32))
    else:
        raise ValueError(kind)
    return lens.astype(np.int64)


WORKLOADS_FULL = [
    # name, lengths kind, target tokens, feature, [(backend, dtype)]
    # numpy rows move >= 512 MiB per op; torch rows >= 256 MiB (torch's 4 KiB-page outputs fault
    # at ~1 GB/s on the reference VM, which is what bounds the run time).
    ("uniform[1,4096]", "uniform", 1 << 20, 64, [("numpy", "float32")]),
    ("uniform[1,4096]", "uniform", 1 << 19, 64, [("torch", "float32")]),
    ("uniform[1,4096]", "uniform", 1 << 19, 128, [("torch", "bfloat16")]),
    ("lognormal(256,.8)", "lognormal", 1 << 19, 64, [("numpy", "float32")]),
    ("short[1,64]", "short", 1 << 19, 64, [("numpy", "float32"), ("torch", "float32")]),
]
WORKLOADS_QUICK = [
    ("uniform[1,4096]", "uniform", 1 << 15, 64, [("numpy", "float32"), ("torch", "bfloat16")]),
    ("short[1,64]", "short", 1 << 13, 64, [("numpy", "float32"), ("torch", "float32")]),
]


class Data:
    """One workload on one backend: the same tokens as a list, packed, padded (+ mask)."""

    def __init__(self, lens: np.ndarray, feature: int, backend: str, dtype: str, rng: np.random.Generator):
        self.lens, self.backend, self.dtype = lens, backend, dtype
        self.n, self.T, self.L = len(lens), int(lens.sum()), int(lens.max())
        base = rng.standard_normal((self.T, feature), dtype=np.float32)
        self.off = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(lens, out=self.off[1:])
        if backend == "numpy":
            values = base
            self.lens_native = lens
        else:
            values = torch.from_numpy(base).to(getattr(torch, dtype))
            self.lens_native = torch.from_numpy(lens)
        del base
        self.values = values
        self.R = feature * (4 if dtype == "float32" else 2)
        # separately allocated sequences (what pack's users hold); cloned so they are not views
        o = self.off
        if backend == "numpy":
            self.seqs = [values[o[i]:o[i + 1]].copy() for i in range(self.n)]
        else:
            self.seqs = [values[o[i]:o[i + 1]].clone() for i in range(self.n)]
        self.arr = scree.from_offsets(values, self.off if backend == "numpy" else torch.from_numpy(self.off))
        self.padded, self.mask = self.arr.to_padded()
        self.lens_list = lens.tolist()

    # useful bytes per op (see module docstring)
    def bytes(self, op: str) -> int:
        tr = self.T * self.R
        if op == "pack" or op == "from_padded(lengths)":
            return 2 * tr
        if op == "to_padded":
            return tr + self.n * self.L * self.R + self.n * self.L
        if op == "from_padded(mask)":
            return 2 * tr + self.n * self.L
        raise ValueError(op)


# --------------------------------------------------------------------------------------------
# the callables of each group
def fresh_groups(d: Data) -> dict[str, tuple[Callable, Callable, str]]:
    """op -> (scree call, baseline call, baseline name); every call allocates its output."""
    npb = d.backend == "numpy"
    seqs, arr, padded, mask, lens = d.seqs, d.arr, d.padded, d.mask, d.lens_native
    L = d.L
    if npb:
        ar = np.arange(L)

        def pad_base():
            out = np.zeros((d.n, L, *d.values.shape[1:]), dtype=d.values.dtype)
            v, o = d.values, d.off
            for i, ln in enumerate(d.lens_list):
                out[i, :ln] = v[o[i]:o[i] + ln]
            return out, ar[None, :] < lens[:, None]

        return {
            "pack": (lambda: scree.pack(seqs), lambda: np.concatenate(seqs), "np.concatenate"),
            "to_padded": (lambda: arr.to_padded(), pad_base, "np.zeros + row loop"),
            "from_padded(lengths)": (lambda: scree.from_padded(padded, lengths=lens),
                                     lambda: padded[ar[None, :] < lens[:, None]], "padded[arange<len]"),
            "from_padded(mask)": (lambda: scree.from_padded(padded, mask=mask), lambda: padded[mask],
                                  "padded[mask]"),
        }
    ar = torch.arange(L)

    def pad_base():
        return (pad_sequence(list(torch.split(d.values, d.lens_list)), batch_first=True),
                ar[None, :] < lens[:, None])

    return {
        "pack": (lambda: scree.pack(seqs), lambda: torch.cat(seqs), "torch.cat"),
        "to_padded": (lambda: arr.to_padded(), pad_base, "pad_sequence"),
        "from_padded(lengths)": (lambda: scree.from_padded(padded, lengths=lens),
                                 lambda: padded[ar[None, :] < lens[:, None]], "padded[arange<len]"),
        "from_padded(mask)": (lambda: scree.from_padded(padded, mask=mask), lambda: padded[mask], "padded[mask]"),
    }


def reused_groups(d: Data) -> dict[str, tuple[Callable, Callable, str]]:
    """op -> (scree kernel call, baseline call, baseline name), all into preallocated outputs."""
    npb = d.backend == "numpy"
    v, off, seqs, padded, mask = d.values, d.off, d.seqs, d.padded, d.mask
    if npb:
        out = np.empty_like(v)
        pout = np.empty_like(padded)
        mout = np.empty_like(mask)
        padv = np.zeros(1, dtype=v.dtype)
        flat_mask = mask.reshape(-1)
        p2 = padded.reshape(d.n * d.L, *v.shape[1:])
        concat = lambda: np.concatenate(seqs, out=out)
        select = lambda: np.compress(flat_mask, p2, axis=0, out=out)
        sel_name = "np.compress(out=)"

        def pad_base():
            pout[...] = 0
            for i, ln in enumerate(d.lens_list):
                pout[i, :ln] = v[off[i]:off[i] + ln]
            mout[...] = np.arange(d.L)[None, :] < d.lens[:, None]
    else:
        out = torch.empty_like(v)
        pout = torch.empty_like(padded)
        mout = torch.empty_like(mask)
        padv = torch.zeros(1, dtype=v.dtype)
        idx = torch.nonzero(mask.reshape(-1)).reshape(-1)
        p2 = padded.reshape(d.n * d.L, *v.shape[1:])
        concat = lambda: torch.cat(seqs, out=out)
        select = lambda: torch.index_select(p2, 0, idx, out=out)
        sel_name = "index_select(out=), idx precomputed"
        ar = torch.arange(d.L)
        lt = d.lens_native

        def pad_base():
            pout.zero_()
            for i, ln in enumerate(d.lens_list):
                pout[i, :ln] = v[off[i]:off[i] + ln]
            torch.lt(ar[None, :], lt[:, None], out=mout)

    for a in (out, pout, mout):  # fault the outputs in
        a[...] = 0
    host = np.empty(d.n + 1, dtype=np.int64)

    def unpad_mask():
        _C.mask_offsets(mask, host)
        _C.unpad_mask(padded, mask, host, out)

    def pack():  # as scree.pack hands them over: NumPy arrays as arrays, torch tensors by address
        if npb:
            _C.pack(seqs, off, out)
        else:
            _C.pack_addresses(np.fromiter((s.data_ptr() for s in seqs), np.int64, len(seqs)), off, out)

    return {
        "pack": (pack, concat, "concatenate(out=)" if npb else "torch.cat(out=)"),
        "to_padded": (lambda: _C.pad(v, off, pout, mout, padv, False), pad_base, "zero + row loop"),
        "from_padded(lengths)": (lambda: _C.unpad(padded, off, out, False), select, sel_name),
        "from_padded(mask)": (unpad_mask, select, sel_name),
    }


# --------------------------------------------------------------------------------------------
def _torch_1t(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call():
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)
    return call


def measure(d: Data, mc: Memcpy, rounds: int, label: str, with_1t: bool, big_ref: bool = True) -> list[dict]:
    rows = []
    for regime, groups in (("fresh", fresh_groups(d)), ("reused", reused_groups(d))):
        for op, (scree_fn, base_fn, base_name) in groups.items():
            nbytes = d.bytes(op)
            half = nbytes // 2
            fresh = regime == "fresh"
            # the torch-alloc reference (slow: 4 KiB faults) only once per dataset, next to pack
            refs = (mc.fresh(half, torch_alloc=d.backend == "torch" and op == "pack") if fresh
                    else mc.reused(half))
            ref_bytes = {k: 2 * half for k in refs}
            if big_ref and half < BIG and not fresh:
                # the machine's streaming copy, in case glibc does not stream at this size (fresh
                # outputs are bound by first-touch faults instead, so not needed there)
                refs["memcpy 1T 256MiB"] = mc.reused(BIG)["memcpy 1T"]
                ref_bytes["memcpy 1T 256MiB"] = 2 * BIG
            fns = dict(refs)
            fns["scree"] = scree_fn
            if with_1t and NCORES > 1 and not fresh:
                fns["scree 1T"] = with_threads(1, scree_fn)
            fns["baseline"] = base_fn
            if d.backend == "torch" and torch.get_num_threads() > 1:
                fns["baseline 1T"] = _torch_1t(base_fn)
            t = run_group(fns, rounds, no_warmup=tuple(refs))
            med = {k: statistics.median(v) for k, v in t.items()}
            gbs = {k: ref_bytes.get(k, nbytes) / s / 1e9 for k, s in med.items()}
            best_mc = max(g for k, g in gbs.items() if k.startswith("memcpy") and "torch" not in k)
            best_base = min(v for k, v in med.items() if k.startswith("baseline"))
            row = dict(workload=label, backend=d.backend, dtype=d.dtype, op=op, regime=regime,
                       bytes=nbytes, n=d.n, tokens=d.T, max_len=d.L, row_bytes=d.R,
                       baseline=base_name, seconds=med, gbps=gbs, samples=t,
                       memcpy_best_gbps=best_mc,
                       pct_memcpy=100 * gbs["scree"] / best_mc,
                       baseline_pct_memcpy=100 * (nbytes / best_base / 1e9) / best_mc,
                       speedup_vs_baseline=best_base / med["scree"])
            if "scree 1T" in gbs:
                row["pct_memcpy_1t"] = 100 * gbs["scree 1T"] / best_mc
            rows.append(row)
            print_row(row)
    return rows


HEADER = (f"{'workload':<17} {'backend':<14} {'op':<21} {'regime':<6} {'MiB':>6} {'scree':>6} "
          f"{'1T':>6} {'memcpy':>6} {'%mcpy':>6} {'base':>6} {'x base':>6}  baseline / memcpy refs (GB/s)")


def print_row(r: dict) -> None:
    g = r["gbps"]
    refs = " ".join(f"{k.replace('memcpy ', '')}={v:.1f}" for k, v in g.items() if k.startswith("memcpy"))
    one = f"{g['scree 1T']:6.2f}" if "scree 1T" in g else f"{'-':>6}"
    base = max(v for k, v in g.items() if k.startswith("baseline"))
    b1 = f" (1T {g['baseline 1T']:.2f})" if "baseline 1T" in g else ""
    print(f"{r['workload']:<17} {r['backend'] + ' ' + r['dtype']:<14} {r['op']:<21} {r['regime']:<6} "
          f"{r['bytes'] / 2**20:6.0f} {g['scree']:6.2f} {one} {r['memcpy_best_gbps']:6.2f} "
          f"{r['pct_memcpy']:5.0f}% {base:6.2f} {r['speedup_vs_baseline']:6.2f}  "
          f"{r['baseline']}{b1} | {refs}", flush=True)


def machine_info() -> dict:
    """The shared machine description plus what decides memcpy speed here: memory size,
    transparent huge pages and glibc's copy thresholds."""
    try:
        mem = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1]) * 1024
    except Exception:  # noqa: BLE001
        mem = None
    try:
        thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
    except OSError:
        thp = None
    glibc = {}
    for ld in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"):
        if os.path.exists(ld):
            for line in sh(ld, "--list-diagnostics").splitlines():
                for key in ("non_temporal_threshold", "rep_movsb_threshold", "rep_movsb_stop_threshold",
                            "shared_cache_size"):
                    if line.startswith(f"x86.cpu_features.{key}="):
                        glibc[key] = int(line.split("=", 1)[1], 16)
            break
    return _machine_info(glibc_memcpy=glibc, mem_bytes=mem, transparent_hugepage=thp,
                         scree=getattr(scree, "__version__", None))

def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(max(10, 0.55 * len(rows) / 2 + 3), 9), sharey=True)
    for ax, regime in zip(axes, ("fresh", "reused")):
        sel = [r for r in rows if r["regime"] == regime]
        x = np.arange(len(sel))
        ax.bar(x - 0.2, [r["pct_memcpy"] for r in sel], 0.4, label="scree")
        ax.bar(x + 0.2, [r["baseline_pct_memcpy"] for r in sel], 0.4, label="user baseline")
        ax.axhline(70, color="k", ls="--", lw=1, label="target 70%")
        ax.axhline(100, color="grey", ls=":", lw=1)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['op']}\n{r['workload']}\n{r['backend']} {r['dtype']}" for r in sel],
                           rotation=90, fontsize=7)
        ax.set_ylabel("% of memcpy bandwidth")
        ax.set_title(f"{regime} output ({'allocated in the call' if regime == 'fresh' else 'reused buffer'}): "
                     f"% of the best np.copyto reference (1T/{NCORES}T same bytes"
                     f"{'' if regime == 'fresh' else ', 1T 256 MiB streaming'}), baseline = faster variant")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (< 20 s)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per group (default 5, quick 3)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for layout_cpu.json/.png")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--no-1t", action="store_true", help="skip the SCREE_NUM_THREADS=1 rows")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    rounds = args.rounds or (3 if args.quick else 5)
    workloads = WORKLOADS_QUICK if args.quick else WORKLOADS_FULL
    rng = np.random.default_rng(0)
    info = machine_info()
    print(f"# {info['cpu']} | {NCORES} cores usable | numpy {info['numpy']} torch {info['torch']} | "
          f"commit {info['git_commit'][:10]}{' (dirty)' if info['git_dirty'] else ''} | load {info['loadavg_start']}")
    print("# GB/s of useful bytes (see header of this script); %mcpy = scree / best memcpy of the same regime; "
          "x base = baseline time / scree time")
    print(HEADER)

    datasets = []
    for name, kind, tokens, feat, combos in workloads:
        lens = make_lengths(kind, tokens, rng)
        for backend, dtype in combos:
            if backend == "torch" and torch is None:
                continue
            datasets.append((name, lens, feat, backend, dtype))
    # largest memcpy needed: half the biggest op's bytes
    max_half = 0
    for name, lens, feat, backend, dtype in datasets:
        R = feat * (4 if dtype == "float32" else 2)
        n, T, L = len(lens), int(lens.sum()), int(lens.max())
        max_half = max(max_half, (T * R + n * L * R + n * L) // 2 + 1, T * R + n * L // 2 + 1)
    mc = Memcpy(max_half, big=not args.quick)
    for f in list(mc.reused(1 << 20).values()) + list(mc.fresh(1 << 20, torch is not None).values()):
        f()  # warm the references once (thread pool, code paths)

    rows = []
    for name, lens, feat, backend, dtype in datasets:
        gc.collect()
        d = Data(lens, feat, backend, dtype, rng)
        rows += measure(d, mc, rounds, name, with_1t=not args.no_1t, big_ref=not args.quick)
        del d

    info["loadavg_end"] = os.getloadavg()
    info["rounds"] = rounds
    info["quick"] = args.quick
    info["wall_seconds"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "layout_cpu_quick" if args.quick else "layout_cpu"
    (args.out / f"{stem}.json").write_text(json.dumps(dict(machine=info, rows=rows), indent=1))
    if not args.no_plot:
        try:
            plot(rows, args.out / f"{stem}.png")
        except ImportError:
            print("# matplotlib missing: no plot", file=sys.stderr)
    big = [r for r in rows if r["bytes"] >= 256 << 20]
    below = [r for r in big if r["pct_memcpy"] < 70]
    print(f"# {len(below)} of {len(big)} large (>= 256 MiB) rows below 70% of memcpy; "
          f"wall {info['wall_seconds']:.0f} s; load {info['loadavg_start']} -> {info['loadavg_end']}")
    print(f"# wrote {args.out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

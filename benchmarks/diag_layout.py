#!/usr/bin/env python3
"""Experiments behind benchmarks/NOTES.md (hypotheses H1-H5 about the layout ops' bandwidth).

    python benchmarks/diag_layout.py [h1 h2 h2b h3 h4 ...]

Every experiment times its variants in interleaved rounds (bench_layout.run_group) and prints
GB/s of useful bytes (same counting as bench_layout.py). Prototype kernels for the proposed C++
changes are in benchmarks/diag/proto.c, compiled here with the system C compiler; scree itself is
not modified. Writes benchmarks/results/diag_layout.json.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_layout import NCORES, make_lengths, run_group  # noqa: E402

import scree  # noqa: E402
from scree import _C  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

RESULTS: dict[str, dict] = {}
ROUNDS = int(os.environ.get("DIAG_ROUNDS", "5"))


def report(name: str, fns: dict, nbytes: dict | int, rounds: int = ROUNDS, faults: bool = False) -> dict:
    extra = {}
    if faults:  # minor faults per call, measured separately (one call each)
        for k, f in fns.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            out = f()
            del out
            extra[k] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    load0 = os.getloadavg()[0]
    t = run_group(fns, rounds)
    res = {"_meta": dict(loadavg_1min_before=load0, loadavg_1min_after=os.getloadavg()[0], rounds=rounds,
                         date=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         glibc_tunables=os.environ.get("GLIBC_TUNABLES"),
                         thp_mem_alloc_enable=os.environ.get("THP_MEM_ALLOC_ENABLE"))}
    print(f"-- {name}  (load {load0:.1f})")
    for k, v in t.items():
        b = nbytes[k] if isinstance(nbytes, dict) else nbytes
        med = statistics.median(v)
        res[k] = dict(seconds=med, gbps=b / med / 1e9, bytes=b, faults=extra.get(k))
        fl = f"  faults/call={extra[k]}" if k in extra else ""
        print(f"   {k:<44} {b / med / 1e9:7.2f} GB/s  {med * 1e3:8.1f} ms{fl}")
    RESULTS[name] = res
    return res


def proto() -> ctypes.CDLL:
    so = Path(tempfile.gettempdir()) / "scree_bench_proto.so"
    src = HERE / "diag" / "proto.c"
    if not so.exists() or so.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O3", "-mavx2", "-fopenmp", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    lib = ctypes.CDLL(str(so))
    P, I = ctypes.c_void_p, ctypes.c_int64
    lib.pack.argtypes = [P, P, I, I, P, ctypes.c_int, ctypes.c_int]
    lib.unpad.argtypes = [P, P, I, I, I, P, ctypes.c_int, ctypes.c_int]
    lib.pad.argtypes = [P, P, I, I, I, P, P, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.advise_huge.argtypes = [P, I]
    lib.advise_huge_numpy_style.argtypes = [P, I]
    return lib


def ptr(a) -> int:
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data_ptr()


def uniform_data(tokens=1 << 20, feature=64, seed=0):
    rng = np.random.default_rng(seed)
    lens = make_lengths("uniform", tokens, rng)
    off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    v = rng.standard_normal((int(off[-1]), feature), dtype=np.float32)
    return lens, off, v


# ---------------------------------------------------------------------------------------------
def h1():
    """torch fresh outputs: 4 KiB faults; with madvise(MADV_HUGEPAGE) / THP_MEM_ALLOC_ENABLE / numpy alloc."""
    lib = proto()
    lens, off, v = uniform_data()
    seqs = [v[off[i]:off[i + 1]].copy() for i in range(len(lens))]
    tseqs = [torch.from_numpy(s) for s in seqs]
    B = 2 * v.nbytes

    def torch_empty():
        out = torch.empty(v.shape, dtype=torch.float32)
        _C.pack(tseqs, off, out)
        return out

    def torch_empty_madvise():
        out = torch.empty(v.shape, dtype=torch.float32)
        lib.advise_huge(out.data_ptr(), v.nbytes)
        _C.pack(tseqs, off, out)
        return out

    def torch_empty_madvise_np():
        out = torch.empty(v.shape, dtype=torch.float32)
        lib.advise_huge_numpy_style(out.data_ptr(), v.nbytes)
        _C.pack(tseqs, off, out)
        return out

    def numpy_alloc_from_numpy():
        out = torch.from_numpy(np.empty(v.shape, dtype=np.float32))
        _C.pack(tseqs, off, out)
        return out

    report("H1 pack torch f32 fresh output, by allocator", {
        "scree.pack(torch) as is": lambda: scree.pack(tseqs),
        "_C.pack into torch.empty": torch_empty,
        "_C.pack into torch.empty + madvise 2MiB-aligned interior": torch_empty_madvise,
        "_C.pack into torch.empty + madvise numpy-style": torch_empty_madvise_np,
        "_C.pack into torch.from_numpy(np.empty)": numpy_alloc_from_numpy,
        "scree.pack(numpy)": lambda: scree.pack(seqs),
    }, B, faults=True)
    # torch's own switch, needs a fresh process (read by c10's allocator)
    code = ("import sys; sys.path.insert(0, %r); import diag_layout as d; d.h1_env()" % str(HERE))
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def h1_env():
    lens, off, v = uniform_data()
    seqs = [v[off[i]:off[i + 1]].copy() for i in range(len(lens))]
    tseqs = [torch.from_numpy(s) for s in seqs]
    report("H1 (THP_MEM_ALLOC_ENABLE=1) scree.pack torch f32 fresh", {
        "scree.pack(numpy) (reference, same process)": lambda: scree.pack(seqs),
        "scree.pack(torch) THP_MEM_ALLOC_ENABLE=1": lambda: scree.pack(tseqs),
        "torch.cat THP_MEM_ALLOC_ENABLE=1": lambda: torch.cat(tseqs),
    }, 2 * v.nbytes, faults=True)
    save()


# ---------------------------------------------------------------------------------------------
def h2():
    """Reused output: one streaming memcpy vs per-sequence copies; prototype with NT stores."""
    lib = proto()
    lens, off, v = uniform_data()
    seqs = [v[off[i]:off[i + 1]].copy() for i in range(len(lens))]
    ptrs = (ctypes.c_void_p * len(seqs))(*[s.ctypes.data for s in seqs])
    out = np.empty_like(v)
    out[...] = 0
    B = 2 * v.nbytes
    flat_src, flat_dst = v.reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8)

    def chunked(step):
        def f():
            for i in range(0, len(flat_src), step):
                np.copyto(flat_dst[i:i + step], flat_src[i:i + step])
        return f

    padded, mask = scree.from_offsets(v, off).to_padded()
    L = padded.shape[1]
    R = v.shape[1] * 4
    fns = {
        "np.copyto one shot (streams: >= 192 MiB)": lambda: np.copyto(out, v),
        "np.copyto in 16 MiB chunks": chunked(16 << 20),
        "np.copyto in 1 MiB chunks": chunked(1 << 20),
        "np.copyto in 256 KiB chunks": chunked(256 << 10),
        "scree _C.pack (as is, 2T)": lambda: _C.pack(seqs, off, out),
        "proto pack memcpy 1T": lambda: lib.pack(ptrs, ptr(off), len(seqs), R, ptr(out), 1, 0),
        "proto pack NT stores 1T": lambda: lib.pack(ptrs, ptr(off), len(seqs), R, ptr(out), 1, 1),
        f"proto pack NT stores {NCORES}T": lambda: lib.pack(ptrs, ptr(off), len(seqs), R, ptr(out), NCORES, 1),
        "scree _C.unpad (as is, 2T)": lambda: _C.unpad(padded, off, out, False),
        "proto unpad NT stores 1T": lambda: lib.unpad(ptr(padded), ptr(off), len(seqs), L, R, ptr(out), 1, 1),
    }
    report("H2 reused output, uniform[1,4096] f32 F=64 (256 MiB values)", fns, B)
    # correctness of the prototype
    lib.pack(ptrs, ptr(off), len(seqs), R, ptr(out), NCORES, 1)
    assert np.array_equal(out, v)
    out[...] = 0
    lib.unpad(ptr(padded), ptr(off), len(seqs), L, R, ptr(out), 1, 1)
    assert np.array_equal(out, v)


def h2s():
    """H2 on many short sequences (<= 16 KiB per copy): streaming stores still pay off?"""
    lib = proto()
    rng = np.random.default_rng(3)
    lens = make_lengths("short", 1 << 20, rng)
    off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    v = rng.standard_normal((int(off[-1]), 64), dtype=np.float32)
    seqs = [v[off[i]:off[i + 1]].copy() for i in range(len(lens))]
    ptrs = (ctypes.c_void_p * len(seqs))(*[s.ctypes.data for s in seqs])
    out = np.empty_like(v)
    out[...] = 0
    padded, mask = scree.from_offsets(v, off).to_padded()
    L, R, n = padded.shape[1], 256, len(seqs)
    report(f"H2s reused output, short[1,64] f32 F=64 ({n} sequences, {v.nbytes >> 20} MiB)", {
        "np.copyto one shot (streams)": lambda: np.copyto(out, v),
        "scree _C.pack (as is)": lambda: _C.pack(seqs, off, out),
        "proto pack memcpy 1T": lambda: lib.pack(ptrs, ptr(off), n, R, ptr(out), 1, 0),
        "proto pack NT stores 1T": lambda: lib.pack(ptrs, ptr(off), n, R, ptr(out), 1, 1),
        "scree _C.unpad (as is)": lambda: _C.unpad(padded, off, out, False),
        "proto unpad NT stores 1T": lambda: lib.unpad(ptr(padded), ptr(off), n, L, R, ptr(out), 1, 1),
    }, 2 * v.nbytes)


def h2b():
    """Same scree kernels with glibc's non-temporal threshold lowered to 64 KiB (fresh process)."""
    code = ("import sys; sys.path.insert(0, %r); import diag_layout as d; d.h2b_child()" % str(HERE))
    for tun in (None, "glibc.cpu.x86_non_temporal_threshold=0x10000"):
        env = dict(os.environ)
        if tun:
            env["GLIBC_TUNABLES"] = tun
        subprocess.run([sys.executable, "-c", code], env=env, check=True)


def h2b_child():
    lens, off, v = uniform_data()
    seqs = [v[off[i]:off[i + 1]].copy() for i in range(len(lens))]
    out = np.empty_like(v)
    out[...] = 0
    padded, mask = scree.from_offsets(v, off).to_padded()
    pout = np.empty_like(padded)
    pout[...] = 1
    mout = np.empty_like(mask)
    padv = np.zeros(1, np.float32)
    tag = os.environ.get("GLIBC_TUNABLES", "glibc default (192 MiB)")
    L = padded.shape[1]
    pad_bytes = v.nbytes + padded.nbytes + mask.nbytes
    fs, fd = v.reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8)

    def chunked():
        for i in range(0, len(fs), 1 << 20):
            np.copyto(fd[i:i + (1 << 20)], fs[i:i + (1 << 20)])
    report(f"H2b reused, {tag}", {
        "np.copyto one shot": lambda: np.copyto(out, v),
        "np.copyto in 1 MiB chunks": chunked,
        "scree _C.pack": lambda: _C.pack(seqs, off, out),
        "scree _C.unpad": lambda: _C.unpad(padded, off, out, False),
        "scree _C.pad": lambda: _C.pad(v, off, pout, mout, padv, False),
        "np.concatenate(out=)": lambda: np.concatenate(seqs, out=out),
    }, {"np.copyto one shot": 2 * v.nbytes, "np.copyto in 1 MiB chunks": 2 * v.nbytes, "scree _C.pack": 2 * v.nbytes, "scree _C.unpad": 2 * v.nbytes,
        "scree _C.pad": pad_bytes, "np.concatenate(out=)": 2 * v.nbytes})
    save()


# ---------------------------------------------------------------------------------------------
def h3():
    """Per-sequence Python overhead of scree.pack on many short sequences."""
    rng = np.random.default_rng(1)
    lens = make_lengths("short", 1 << 20, rng)
    off = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    v = rng.standard_normal((int(off[-1]), 64), dtype=np.float32)
    seqs = [v[off[i]:off[i + 1]].copy() for i in range(len(lens))]
    out = np.empty_like(v)
    out[...] = 0
    B = 2 * v.nbytes

    def minimal_pack():  # what a fast path needs: lengths, one allocation, the kernel
        h = np.zeros(len(seqs) + 1, np.int64)
        np.cumsum([s.shape[0] for s in seqs], out=h[1:])
        o = np.empty((int(h[-1]), 64), np.float32)
        _C.pack(seqs, h, o)
        return o

    print(f"   n = {len(seqs)} sequences, {v.nbytes / 2**20:.0f} MiB")
    fns = {
        "scree.pack (numpy)": lambda: scree.pack(seqs),
        "minimal Python + _C.pack (fresh)": minimal_pack,
        "np.concatenate (fresh)": lambda: np.concatenate(seqs),
        "_C.pack into reused out": lambda: _C.pack(seqs, off, out),
        "np.concatenate(out=) reused": lambda: np.concatenate(seqs, out=out),
    }
    if torch is not None:
        tseqs = [torch.from_numpy(s) for s in seqs]
        fns["scree.pack (torch)"] = lambda: scree.pack(tseqs)
        fns["torch.cat (fresh)"] = lambda: torch.cat(tseqs)
        tout = torch.from_numpy(out)
        fns["_C.pack torch into reused out"] = lambda: _C.pack(tseqs, off, tout)
    r = report("H3 pack, short[1,64] f32 F=64", fns, B)
    per = {k: (r[k]["seconds"] - r["_C.pack into reused out"]["seconds"]) / len(seqs) * 1e6 for k in r if k != "_meta"}
    print("   overhead over _C.pack reused, us/sequence:", {k: round(x, 2) for k, x in per.items()})


# ---------------------------------------------------------------------------------------------
def h4():
    """to_padded fresh: empty + explicit pad fill vs calloc'd zeros + data-only writes."""
    lib = proto()
    for kind, tokens in (("uniform", 1 << 20), ("lognormal(256,1) clip 4096", 1 << 19)):
        rng = np.random.default_rng(2)
        if kind == "uniform":
            lens = make_lengths(kind, tokens, rng)
        else:  # heavier tail than bench_layout's lognormal: padded/values ~ 10
            lens = np.clip(np.rint(rng.lognormal(np.log(256), 1.0, size=tokens // 420)), 1, 4096).astype(np.int64)
        off = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=off[1:])
        v = rng.standard_normal((int(off[-1]), 64), dtype=np.float32)
        arr = scree.from_offsets(v, off)
        n, L, R = len(lens), int(lens.max()), 256
        lens_list = lens.tolist()
        ar = np.arange(L)

        def proto_pad(zeros, fill, nt, threads=NCORES):
            def f():
                p = (np.zeros if zeros else np.empty)((n, L, 64), np.float32)
                m = (np.zeros if zeros else np.empty)((n, L), np.bool_)
                lib.pad(ptr(v), ptr(off), n, L, R, ptr(p), ptr(m), threads, nt, fill)
                return p, m
            return f

        def base():
            out = np.zeros((n, L, 64), np.float32)
            for i, ln in enumerate(lens_list):
                out[i, :ln] = v[off[i]:off[i] + ln]
            return out, ar[None, :] < lens[:, None]

        B = v.nbytes + n * L * R + n * L
        report(f"H4 to_padded fresh, {kind} f32 F=64 (padded/values = {n * L / v.shape[0]:.1f})", {
            "arr.to_padded() as is": lambda: arr.to_padded(),
            "proto: np.empty + fill pad (as is)": proto_pad(False, 1, 0),
            "proto: np.zeros + data only": proto_pad(True, 0, 0),
            "proto: np.zeros + data only, NT stores": proto_pad(True, 0, 1),
            "np.zeros + row loop (baseline)": base,
        }, B)
        p, m = proto_pad(True, 0, 1)()
        p2, m2 = arr.to_padded()
        assert np.array_equal(p, p2) and np.array_equal(m, m2)


# ---------------------------------------------------------------------------------------------
def h5():
    """Thread split, reused output."""
    lens, off, v = uniform_data()
    seqs = [v[off[i]:off[i + 1]].copy() for i in range(len(lens))]
    out = np.empty_like(v)
    out[...] = 0

    def with_threads(t):
        def f():
            os.environ["SCREE_NUM_THREADS"] = str(t)
            try:
                _C.pack(seqs, off, out)
            finally:
                del os.environ["SCREE_NUM_THREADS"]
        return f
    report("H5 _C.pack reused by thread count", {f"{t}T": with_threads(t) for t in (1, 2, 4)}, 2 * v.nbytes)


def save():
    out = Path(os.environ.get("DIAG_OUT", HERE / "results")) / "diag_layout.json"
    prev = json.loads(out.read_text()) if out.exists() else {}
    prev.update(RESULTS)
    out.write_text(json.dumps(prev, indent=1))


def main(argv):
    which = argv or ["h1", "h2", "h2s", "h2b", "h3", "h4", "h5"]
    for w in which:
        globals()[w]()
        save()


if __name__ == "__main__":
    main(sys.argv[1:])

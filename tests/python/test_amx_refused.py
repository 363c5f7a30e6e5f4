"""The AMX permission-refused path of the CPU attention dispatcher (issue 20). The amx build runs
only after Linux grants the tile-data state (src/cpu/attention/amx_os.h: arch_prctl
ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, asked once per process); refused, the avx512 build must run
(attention_cpu.cpp), with no tile instruction executed (one would be SIGILL without the permission).

This file is also its own worker: `python test_amx_refused.py refuse|fake|control`. With `refuse` it
installs a seccomp BPF filter that answers EPERM to arch_prctl(0x1023, ...) and allows every other
system call, before torch or scree is imported (`fake` answers 0 without granting anything, as a
sandbox may: amx_os.h reads the grant back, else the first tile instruction is SIGILL), then checks bfloat16 forward and backward of
scree.varlen_attention against the fp64 reference by FlashAttention's rule (attention_checks.py),
reruns every check of cpu_isa_worker.py, and prints one JSON line: the build that ran
(scree._C.cpu_isa()), the probe's errno and the tile-data permission bit before and after. The
tests assert: no crash, correct results, the avx512 build (never amx), the permission never
granted; with SCREE_CPU_ISA unset and with SCREE_CPU_ISA=amx (which caps at amx like no request:
the best build below that can run is taken, no error). A `control` process without the filter must
pick amx first, or the tests skip (no AMX in this CPU, this compiler's build or this kernel)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# x86-64 Linux constants (linux/seccomp.h, linux/filter.h, linux/audit.h, asm/prctl.h).
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 38, 22
SECCOMP_MODE_FILTER = 2  # prctl's mode
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 1, 1  # seccomp(2)'s operation and flag
SYS_SECCOMP, SYS_ARCH_PRCTL = 317, 158
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
ARCH_GET_XCOMP_PERM, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 0x1022, 0x1023, 18
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
OFF_NR, OFF_ARCH, OFF_ARG0_LO = 0, 4, 16  # args[0]'s low 32 bits (little endian)
NO_SECCOMP_EXIT = 77  # the worker could not install a filter here: the tests skip


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def refuse_tile_permission_program(answer: int = errno.EPERM) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k): errno `answer` for arch_prctl(ARCH_REQ_XCOMP_PERM, ...) of the x86-64 ABI
    (0: a faked success, the call not made), allow everything else (other architectures' calls,
    other system calls, other arch_prctl codes)."""
    allow, refuse = (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | answer)
    return [
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        (BPF_JEQ_K, 0, 4, AUDIT_ARCH_X86_64),  # not x86-64: to allow (pc + 1 + 4)
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
        (BPF_JEQ_K, 0, 2, SYS_ARCH_PRCTL),  # not arch_prctl: to allow
        (BPF_LD_W_ABS, 0, 0, OFF_ARG0_LO),
        (BPF_JEQ_K, 1, 0, ARCH_REQ_XCOMP_PERM),  # the request: to refuse, else fall into allow
        allow,
        refuse,
    ]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    return libc


def tile_permission(libc: ctypes.CDLL) -> bool | None:
    """Whether this process may use the AMX tile data (ARCH_GET_XCOMP_PERM, bit 18); None where the
    kernel has no such query (Linux < 5.16: no AMX support at all)."""
    mask = ctypes.c_ulong(0)
    if libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_GET_XCOMP_PERM), ctypes.byref(mask)) != 0:
        return None
    return bool(mask.value & (1 << XFEATURE_XTILEDATA))


def install_refusal(libc: ctypes.CDLL, answer: int = errno.EPERM) -> None:
    """No new privileges, then the filter for every thread (seccomp(2) with TSYNC; prctl where the
    kernel has no seccomp system call). Raises OSError where seccomp filters are unavailable."""
    if libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    program = refuse_tile_permission_program(answer)
    filters = (SockFilter * len(program))(*(SockFilter(*ins) for ins in program))
    prog = SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(SockFilter)))
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(SYS_SECCOMP), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                      ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(prog))
    if rc != 0 and ctypes.get_errno() == errno.ENOSYS:
        rc = libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), ctypes.c_ulong(0),
                        ctypes.c_ulong(0))
    if rc != 0:
        raise OSError(ctypes.get_errno(), f"installing the seccomp filter returned {rc}")


def probe_request(libc: ctypes.CDLL) -> int:
    """errno of this process's own ARCH_REQ_XCOMP_PERM (0: granted)."""
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(SYS_ARCH_PRCTL), ctypes.c_long(ARCH_REQ_XCOMP_PERM),
                      ctypes.c_long(XFEATURE_XTILEDATA))
    return 0 if rc == 0 else ctypes.get_errno()


# ---- the worker (run as a script; torch and scree are imported only after the filter) -----------
BF16_CASES = [  # (q lengths, k lengths, heads q, heads k, d, dv, options)
    ([0, 1, 7, 130, 33], [0, 1, 9, 130, 200], 4, 2, 64, 64, {"causal": True}),
    ([97, 5, 250], [97, 300, 250], 2, 2, 128, 128, {}),
    ([64, 1, 191], [64, 40, 191], 4, 1, 32, 32, {"causal": True, "window": (20, 0), "softcap": 4.0}),
    ([1, 700, 3], [1, 650, 3], 8, 2, 128, 128, {"causal": True, "window": (200, 30)}),  # chunked backward
    ([100, 7, 257], [100, 12, 300], 2, 2, 40, 96, {"softcap": 3.0}),
]


def check_bf16(torch, scree) -> None:
    from attention_checks import check_against_references, fwd_grads, random_qkv, reference_pair
    for i, (lq, lk, hq, hk, d, dv, opts) in enumerate(BF16_CASES):
        q, k, v = random_qkv(lq, lk, hq, hk, d, dv, torch.bfloat16, "cpu", seed=700 + i)
        dout = torch.randn(sum(lq), hq, dv, generator=torch.Generator().manual_seed(800 + i)).bfloat16()
        got = fwd_grads(scree.varlen_attention, q, k, v, dout, opts)
        assert got[0].dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got[2])
        ref64, low = reference_pair(q, k, v, dout, opts)
        check_against_references(f"refused bf16 case {i}", got, ref64, low, seed=700 + i, softcap="softcap" in opts)


def worker(mode: str) -> int:
    libc = _libc()
    report: dict = {"mode": mode, "permission_before": tile_permission(libc)}
    if mode in ("refuse", "fake"):
        if report["permission_before"] is not False:
            raise AssertionError(f"tile-data permission before the filter: {report['permission_before']} "
                                 "(expected False: an exec'd process starts without it)")
        answer = errno.EPERM if mode == "refuse" else 0
        try:
            install_refusal(libc, answer)
        except OSError as e:
            print(f"no seccomp filter here: {e}", flush=True)
            return NO_SECCOMP_EXIT
        report["probe_errno"] = probe_request(libc)
        if report["probe_errno"] != answer or tile_permission(libc) is not False:
            raise AssertionError(f"the filter did not answer ARCH_REQ_XCOMP_PERM with errno {answer} "
                                 f"(got {report['probe_errno']}) without granting it")
    import torch  # noqa: E402  (after the filter: nothing may have asked for the permission before)
    import scree
    from scree import _C
    report["isa"] = _C.cpu_isa()
    if mode in ("refuse", "fake"):
        check_bf16(torch, scree)
        import runpy
        runpy.run_path(str(HERE / "cpu_isa_worker.py"), run_name="__main__")  # prints the isa, then "ok"
    else:
        q = scree.from_lengths(torch.randn(40, 2, 64).bfloat16(), [15, 25])
        scree.varlen_attention(q, q, q, causal=True)
    report["isa_after"] = _C.cpu_isa()
    report["permission_after"] = tile_permission(libc)
    report["checks"] = "ok"
    print("REPORT " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))


# ---- the tests ---------------------------------------------------------------------------------
import pytest  # noqa: E402

pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")),
                                reason="the tile-data permission and this filter are x86-64 Linux only")


def cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return all(f in flags for f in ("amx_tile", "amx_bf16", "avx512_bf16"))


def run_worker(mode: str, isa: str | None) -> tuple[subprocess.CompletedProcess, dict | None]:
    env = dict(os.environ)
    env.pop("SCREE_CPU_ISA", None)
    if isa is not None:
        env["SCREE_CPU_ISA"] = isa
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), mode], capture_output=True, text=True,
                          timeout=600, cwd=HERE, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    return proc, json.loads(lines[-1][len("REPORT "):]) if lines else None


def describe(proc: subprocess.CompletedProcess) -> str:
    sig = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
    return f"exit {proc.returncode}{sig}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def amx_machine() -> None:
    """Skip unless, without the filter, this machine and build pick amx (else nothing is refused)."""
    pytest.importorskip("torch")
    if not cpu_has_amx():
        pytest.skip("this CPU has no AMX-TILE/AMX-BF16/AVX512-BF16")
    proc, report = run_worker("control", None)
    assert proc.returncode == 0 and report is not None, describe(proc)
    if report["isa"] != "amx":
        pytest.skip(f"without the filter the {report['isa']} build runs (no amx build or no OS support here)")
    assert report["permission_after"] is True, report  # picking amx means Linux granted the request


@pytest.mark.parametrize("mode", ["refuse", "fake"], ids=["refused", "faked_grant"])
@pytest.mark.parametrize("request_isa", [None, "amx"], ids=["default", "SCREE_CPU_ISA=amx"])
def test_refused_permission_runs_avx512(amx_machine, request_isa, mode):
    proc, report = run_worker(mode, request_isa)
    if proc.returncode == NO_SECCOMP_EXIT:
        pytest.skip(f"seccomp filters unavailable: {proc.stdout.strip()}")
    assert proc.returncode == 0, describe(proc)  # a tile instruction without the permission: SIGILL (-4)
    assert report is not None and report["checks"] == "ok", describe(proc)
    assert report["probe_errno"] == (errno.EPERM if mode == "refuse" else 0)
    # SCREE_CPU_ISA=amx is the top of the cap order (like no request); a build the process cannot
    # run is never taken: the best one below runs, no error (attention_cpu.cpp, isa()).
    assert report["isa"] == report["isa_after"] == "avx512", report
    # The query (ARCH_GET_XCOMP_PERM) still passes the filter, and the permission was never granted.
    assert report["permission_before"] is False and report["permission_after"] is False, report
    # cpu_isa_worker.py's own lines, rerun under the filter: the build it saw, then "ok".
    assert [ln for ln in proc.stdout.splitlines() if not ln.startswith("REPORT ")] == ["avx512", "ok"], describe(proc)


def test_filter_program_shape():
    """The BPF program checks arch, then nr, then args[0]'s low word, and ends in allow / EPERM."""
    prog = refuse_tile_permission_program()
    loads = [k for code, _, _, k in prog if code == BPF_LD_W_ABS]
    assert loads == [OFF_ARCH, OFF_NR, OFF_ARG0_LO]
    rets = [k for code, _, _, k in prog if code == BPF_RET_K]
    assert rets == [SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno.EPERM]
    for pc, (code, jt, jf, _) in enumerate(prog):  # every jump lands inside the program
        if code == BPF_JEQ_K:
            assert pc + 1 + max(jt, jf) < len(prog)

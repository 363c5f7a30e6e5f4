// May this process run AMX bf16 tile instructions? The CPU must have AMX-TILE, AMX-BF16 and
// AVX512-BF16 (cpuid), the OS must manage the tile state (XCR0 bits 17-18, set by the kernel), and
// on Linux the process must ask for the 8 KiB tile-data state once (arch_prctl
// ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, Linux >= 5.16) before any thread's first tile
// instruction, which otherwise faults (SIGILL). Asked once per process, under a function-local
// static (thread-safe initialisation); a refusal leaves the answer false and the caller on the
// avx512 build. Compiled in the dispatcher (no AMX flags needed: cpuid, xgetbv and a syscall).
#pragma once

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace scree::cpu {

inline bool amx_bf16_usable() {
  static const bool usable = [] {
#if defined(__x86_64__) && defined(__linux__)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool amx_bf16 = (edx & (1u << 22)) != 0, amx_tile = (edx & (1u << 24)) != 0;
    unsigned eax1 = 0, ebx1 = 0, ecx1 = 0, edx1 = 0;
    const bool avx512_bf16 = eax >= 1 && __get_cpuid_count(7, 1, &eax1, &ebx1, &ecx1, &edx1) && (eax1 & (1u << 5)) != 0;
    if (!amx_bf16 || !amx_tile || !avx512_bf16) return false;
    // OSXSAVE (leaf 1 ECX bit 27) before XGETBV; XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA).
    if (!__get_cpuid(1, &eax1, &ebx1, &ecx1, &edx1) || (ecx1 & (1u << 27)) == 0) return false;
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;
    constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
    // Read the grant back: a sandbox that fakes the request's success without granting it would
    // otherwise take the process to SIGILL at the first tile instruction (tests/python/test_amx_refused.py).
    unsigned long long granted = 0;
    return syscall(SYS_arch_prctl, kArchGetXcompPerm, &granted) == 0 && (granted & (1ull << kXfeatureXtiledata)) != 0;
#else
    return false;
#endif
  }();
  return usable;
}

}  // namespace scree::cpu

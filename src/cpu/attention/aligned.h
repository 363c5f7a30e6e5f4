// Cache-line-aligned buffers for the CPU attention kernels' operands (fp32 GEMM operands and
// accumulators in fwd.cpp / bwd.cpp, AMX tiles in fwd_amx.cpp / bwd_amx.cpp, the kept Workspace).
// Why: std::vector and new[] give 16-byte alignment (glibc; large blocks are mmap'ed and start 16
// bytes into a page), so every 64-byte row or zmm load from such a buffer spans two lines. Measured
// on this Xeon with tiles::gemm (64 x 256 x 128, L1/L2-resident operands): 29 ns per product from
// 16-byte aligned buffers against 11 aligned (S = Q K^T: 19 against 9); the AMX forward 1.23-1.73x.
#pragma once

#include "isa.h"

#include <cstddef>
#include <memory>
#include <new>
#include <vector>

SCREE_CPU_NAMESPACE_BEGIN

inline constexpr size_t kLine = 64;

template <class T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <class U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kLine))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(kLine)); }
  bool operator==(const LineAllocator&) const { return true; }
  bool operator!=(const LineAllocator&) const { return false; }
};

// A vector whose first element starts a line.
template <class T>
using LineVector = std::vector<T, LineAllocator<T>>;

struct LineDelete {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t(kLine)); }
};

// An uninitialised array of a trivial type starting a line: new T[n] for operands.
template <class T>
using LineArray = std::unique_ptr<T[], LineDelete>;

template <class T>
inline LineArray<T> line_array(size_t n) {
  return LineArray<T>(static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kLine))));
}

SCREE_CPU_NAMESPACE_END

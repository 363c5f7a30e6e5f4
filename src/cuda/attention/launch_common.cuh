// Host helpers every launcher shares: ceiling division and the dynamic shared-memory opt-in
// (a block gets more than 48 KiB only after cudaFuncSetAttribute raises its limit), done once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <utility>

#include "cuda_check.h"

namespace scree::cuda_attention {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Once per (kernel, device): the attribute stays set, and the call costs ~1 us of host time on
// every launch otherwise (the host overhead of a call is measured against FlashAttention's ~27 us).
template <class Kernel>
void set_smem(Kernel kernel, int bytes) {
  static std::mutex lock;
  static std::set<std::pair<const void*, int>> done;
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  const std::pair<const void*, int> key{reinterpret_cast<const void*>(kernel), device};
  std::lock_guard<std::mutex> guard(lock);
  if (done.count(key)) return;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  done.insert(key);
}

}  // namespace scree::cuda_attention

// Host helpers every launcher shares: ceiling division and the dynamic shared-memory opt-in
// (a block gets more than 48 KiB only after cudaFuncSetAttribute raises its limit).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_check.h"

namespace scree::cuda_attention {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class Kernel>
void set_smem(Kernel kernel, int bytes) {
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
             "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

}  // namespace scree::cuda_attention

// check_cuda: turns a CUDA runtime error into scree::Error(DeviceFailure) naming the call, so a
// failed launch reaches Python as scree.DeviceError instead of a crash or a silent wrong result.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "scree/error.h"

namespace scree::cuda_attention {

inline void check_cuda(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) {
    throw Error(ErrorKind::DeviceFailure,
                std::string(what) + " failed: " + cudaGetErrorName(rc) + " (" + cudaGetErrorString(rc) + ")");
  }
}

}  // namespace scree::cuda_attention

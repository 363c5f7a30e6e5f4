// CUDA runtime probe: lets Python ask whether a GPU is usable without importing a framework.
#include <cuda_runtime.h>

#include "scree/cuda_runtime.h"

namespace scree::cuda {

int device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

}  // namespace scree::cuda

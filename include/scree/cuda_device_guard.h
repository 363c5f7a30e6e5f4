// scree::cuda::DeviceGuard: makes a GPU current for a scope and restores the previous one, as
// torch's CUDAGuard does (a framework lets an array live on cuda:1 while cuda:0 is current; a
// launch on the wrong device would fail or touch foreign memory). Shared by the attention bindings
// and the device check of offsets. Needs the CUDA runtime's header; no framework header.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "scree/error.h"

namespace scree::cuda {

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ == device) previous_ = -1;
    else check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  static void check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return;
    cudaGetLastError();  // leave no non-sticky error behind for the framework's next check
    throw Error(ErrorKind::DeviceFailure, std::string(what) + " failed: " + cudaGetErrorString(e));
  }
  int previous_ = -1;
};

}  // namespace scree::cuda

// The multiprocessor count of the current device, read once per device (a persistent grid has one
// CTA per SM; the attribute query costs ~1 us of host time per call otherwise).
#pragma once

#include <cuda_runtime.h>

#include "../cuda_check.h"

namespace scree::cuda_attention::sm90 {

inline int sm_count() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  static int cache[64] = {};
  if (device < 0 || device >= 64) {
    int sms = 0;
    check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    return sms;
  }
  if (cache[device] == 0)
    check_cuda(cudaDeviceGetAttribute(&cache[device], cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return cache[device];
}

}  // namespace scree::cuda_attention::sm90

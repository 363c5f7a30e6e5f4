// Launcher of the Hopper forward for one (element type, head dim): TMA tensor maps over the
// packed q, k, v tensors (rank 3: head dim, heads, tokens; 64-column boxes with 128-byte
// swizzle), the dynamic shared-memory opt-in, the launch and its error check. Explicitly
// instantiated in instances/fwd_sm90_*.cu, compiled for sm_90a only.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "../cuda_check.h"
#include "../launch.cuh"
#include "fwd_sm90.cuh"

namespace scree::cuda_attention::sm90 {

// cuTensorMapEncodeTiled from the driver, found once through the runtime (no link to libcuda).
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found{};
    check_cuda(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &found),
               "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)");
    if (found != cudaDriverEntryPointSuccess || ptr == nullptr)
      throw Error(ErrorKind::DeviceFailure, "the CUDA driver has no cuTensorMapEncodeTiled (needs CUDA 12+)");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// Tensor map of a (tokens, heads, d) tensor of T with element strides (row, head) and a
// contiguous last dimension; boxes of (box_rows tokens, 1 head, 64 columns).
template <class T>
CUtensorMap tensor_map(const void* base, int64_t tokens, int64_t heads, int64_t d, int64_t row_stride,
                       int64_t head_stride, int box_rows, const char* name) {
  CUtensorMap map;
  const cuuint64_t dims[3] = {cuuint64_t(d), cuuint64_t(heads), cuuint64_t(tokens)};
  const cuuint64_t strides[2] = {cuuint64_t(head_stride) * sizeof(T), cuuint64_t(row_stride) * sizeof(T)};
  const cuuint32_t box[3] = {64, 1, cuuint32_t(box_rows)};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUtensorMapDataType type =
      std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const CUresult rc = tensor_map_encoder()(&map, type, 3, const_cast<void*>(base), dims, strides, box, element_strides,
                                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (rc != CUDA_SUCCESS)
    throw Error(ErrorKind::DeviceFailure, std::string("cuTensorMapEncodeTiled(") + name + ") failed with CUresult " +
                                              std::to_string(int(rc)));
  return map;
}

template <class T, int D>
void launch_fwd_sm90(const VarlenParams& p, cudaStream_t stream) {
  using Tiles = FwdTiles<D>;
  if (p.num_sequences == 0 || p.max_seqlen_q == 0 || p.heads_q == 0 || p.total_q == 0) return;
  // Keys: a map needs at least one row; with no key at all every row outputs 0 / -inf, which the
  // kernel does without reading k or v (no key block is visible).
  const int64_t tk = p.total_k > 0 ? p.total_k : 1;
  const void* kbase = p.total_k > 0 ? p.k : p.q;
  const void* vbase = p.total_k > 0 ? p.v : p.q;
  const CUtensorMap tq = tensor_map<T>(p.q, p.total_q, p.heads_q, D, p.q_row_stride, p.q_head_stride, Tiles::kBlockM, "q");
  const CUtensorMap tk_map = tensor_map<T>(kbase, tk, p.total_k > 0 ? p.heads_k : p.heads_q, D,
                                           p.total_k > 0 ? p.k_row_stride : p.q_row_stride,
                                           p.total_k > 0 ? p.k_head_stride : p.q_head_stride, Tiles::kBlockN, "k");
  const CUtensorMap tv_map = tensor_map<T>(vbase, tk, p.total_k > 0 ? p.heads_k : p.heads_q, D,
                                           p.total_k > 0 ? p.v_row_stride : p.q_row_stride,
                                           p.total_k > 0 ? p.v_head_stride : p.q_head_stride, Tiles::kBlockN, "v");
  const ScoreMap score = ScoreMap::from(p);
  auto kernel = score.folds() ? varlen_fwd_sm90_kernel<T, D, true> : varlen_fwd_sm90_kernel<T, D, false>;
  set_smem(kernel, Tiles::kSmemBytes);
  // Persistent: one CTA per SM (224 KiB of shared memory allows no second), at most one per tile.
  const TileOrder order{p.num_sequences, ceil_div(p.max_seqlen_q, Tiles::kBlockM), p.heads_q};
  int device = 0, sms = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  const int64_t tiles = order.sequences * order.m_tiles * order.heads;
  const unsigned grid = unsigned(tiles < sms ? tiles : sms);
  // The tile counter: 8 stream-ordered bytes per call (the pool makes this cheap), zeroed on the
  // stream and freed after the kernel, so concurrent calls on other streams never share one.
  void* counter = nullptr;
  check_cuda(cudaMallocAsync(&counter, sizeof(unsigned long long), stream), "cudaMallocAsync(tile counter)");
  check_cuda(cudaMemsetAsync(counter, 0, sizeof(unsigned long long), stream), "cudaMemsetAsync(tile counter)");
  kernel<<<grid, Tiles::kThreads, Tiles::kSmemBytes, stream>>>(
      p, score, order, static_cast<unsigned long long*>(counter), tq, tk_map, tv_map);
  const cudaError_t launched = cudaGetLastError();
  check_cuda(cudaFreeAsync(counter, stream), "cudaFreeAsync(tile counter)");
  check_cuda(launched, "varlen_fwd_sm90_kernel launch");
}

}  // namespace scree::cuda_attention::sm90

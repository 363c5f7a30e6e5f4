// TMA (the bulk tensor copy engine): host-side tensor maps over the packed attention tensors and
// the backward's fp32 arrays, the device-side loads that complete on an mbarrier, and the
// reduce-add of a shared-memory box into a tensor.
//  - tensor_map_3d<T>: a (tokens, heads, d) tensor of 16-bit T with element strides (row, head) and
//    a contiguous last dimension, as a rank-3 map (d, heads, tokens) with boxes of (64 columns,
//    1 head, box_rows tokens) and 128-byte swizzle, the layout wgmma's descriptors read;
//  - tensor_map_head_groups<T>: the same tensor as a rank-4 map (d, group, heads / group, tokens)
//    with boxes of (64 columns, group heads, 1 group, box_tokens tokens): the query tile of the
//    forward's head-grouped order, token-major and head-minor, group x box_tokens rows of 128 bytes
//    in shared memory as one tall box would lay them;
//  - tensor_map_pages<T>: a paged KV cache (num_pages, page_size, heads, d) with any strides (NHD
//    and HND pages alike) as a rank-4 map (d, slot, heads, pages), boxes of (64 columns, box_rows
//    slots, 1 head, 1 page), the same swizzle: box_rows-row boxes stacked in shared memory at
//    multiples of 1024 bytes give the layout of one tall box;
//  - tensor_map_rows_f32: an fp32 (rows, ld) array, boxes of (box, 1), no swizzle.
// Coordinates past the tensor's end read zeros; a box's full byte count is always credited to the
// mbarrier, so the expected transaction bytes never depend on where a tile ends. The innermost
// coordinate must give a 16-byte aligned address (seen on an H200: an unaligned one is an illegal
// instruction); outer coordinates are free.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "../cuda_check.h"
#include "ptx.cuh"

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

inline CUtensorMap encode_tensor_map(CUtensorMapDataType type, cuuint32_t rank, const void* base, const cuuint64_t* dims,
                                     const cuuint64_t* strides, const cuuint32_t* box, CUtensorMapSwizzle swizzle,
                                     const char* name) {
  CUtensorMap map;
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult rc = tensor_map_encoder()(&map, type, rank, const_cast<void*>(base), dims, strides, box,
                                           element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (rc != CUDA_SUCCESS)
    throw Error(ErrorKind::DeviceFailure, std::string("cuTensorMapEncodeTiled(") + name + ") failed with CUresult " +
                                              std::to_string(int(rc)));
  return map;
}

template <class T>
CUtensorMapDataType tma_type() {
  return std::is_same_v<T, float> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
         : std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                     : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
}

// A (tokens, heads, d) tensor as a rank-3 map (d, heads, tokens) with 128-byte swizzled boxes of
// (128 bytes of a row, 1 head, box_rows tokens): 64 columns of a 16-bit T, 32 of fp32.
template <class T>
CUtensorMap tensor_map_3d(const void* base, int64_t tokens, int64_t heads, int64_t d, int64_t row_stride,
                          int64_t head_stride, int box_rows, const char* name) {
  const cuuint64_t dims[3] = {cuuint64_t(d), cuuint64_t(heads), cuuint64_t(tokens)};
  const cuuint64_t strides[2] = {cuuint64_t(head_stride) * sizeof(T), cuuint64_t(row_stride) * sizeof(T)};
  const cuuint32_t box[3] = {128 / sizeof(T), 1, cuuint32_t(box_rows)};
  return encode_tensor_map(tma_type<T>(), 3, base, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B, name);
}

// (tokens, heads, d) with heads = groups x group, the group's heads adjacent (GQA's query heads of
// one KV head), boxes of one group's heads for box_tokens tokens.
template <class T>
CUtensorMap tensor_map_head_groups(const void* base, int64_t tokens, int64_t groups, int group, int64_t d,
                                   int64_t row_stride, int64_t head_stride, int box_tokens, const char* name) {
  const cuuint64_t dims[4] = {cuuint64_t(d), cuuint64_t(group), cuuint64_t(groups), cuuint64_t(tokens)};
  const cuuint64_t strides[3] = {cuuint64_t(head_stride) * sizeof(T), cuuint64_t(head_stride) * group * sizeof(T),
                                 cuuint64_t(row_stride) * sizeof(T)};
  const cuuint32_t box[4] = {128 / sizeof(T), cuuint32_t(group), 1, cuuint32_t(box_tokens)};
  return encode_tensor_map(tma_type<T>(), 4, base, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B, name);
}

// Pages (num_pages, page_size, heads, d) of 16-bit T, strides in elements; boxes of box_rows slots.
// A coordinate past a dimension (a page id of num_pages, a slot of page_size) reads zeros.
template <class T>
CUtensorMap tensor_map_pages(const void* base, int64_t num_pages, int64_t page_size, int64_t heads, int64_t d,
                             int64_t page_stride, int64_t slot_stride, int64_t head_stride, int box_rows,
                             const char* name) {
  const cuuint64_t dims[4] = {cuuint64_t(d), cuuint64_t(page_size), cuuint64_t(heads), cuuint64_t(num_pages)};
  const cuuint64_t strides[3] = {cuuint64_t(slot_stride) * sizeof(T), cuuint64_t(head_stride) * sizeof(T),
                                 cuuint64_t(page_stride) * sizeof(T)};
  const cuuint32_t box[4] = {128 / sizeof(T), cuuint32_t(box_rows), 1, 1};
  return encode_tensor_map(tma_type<T>(), 4, base, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B, name);
}

// rows x ld floats, ld a multiple of 4 (16-byte row stride).
inline CUtensorMap tensor_map_rows_f32(const float* base, int64_t rows, int64_t ld, int box, const char* name) {
  const cuuint64_t dims[2] = {cuuint64_t(ld), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld) * sizeof(float)};
  const cuuint32_t boxes[2] = {cuuint32_t(box), 1};
  return encode_tensor_map(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, base, dims, strides, boxes, CU_TENSOR_MAP_SWIZZLE_NONE,
                           name);
}

// One box of a rank-3 / rank-2 tensor map (coordinates innermost first) into shared memory; the
// bytes count towards bar's expected transactions.
__device__ __forceinline__ void tma_load_3d(void* smem, const CUtensorMap* map, int c0, int c1, int c2, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          smem_u32(smem)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void tma_load_4d(void* smem, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_u32(smem)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void tma_load_2d(void* smem, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smem_u32(smem)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}

// Adds a box from shared memory to the tensor element-wise (atomic per element; boxes past the
// tensor's end are clipped), tracked by this thread's bulk groups (ptx.cuh: bulk_commit / waits).
__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, const void* smem, int c0, int c1, int c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(smem_u32(smem)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// A box of a rank-3 tensor map into L2 only (no shared memory, no barrier): a later load of it
// then reads L2 instead of device memory.
__device__ __forceinline__ void tma_prefetch_l2_3d(const CUtensorMap* map, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.prefetch.tensor.3d.L2.global.tile [%0, {%1, %2, %3}];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}

// The D / 64 slabs (64 columns each) of one box of a tensor_map_3d map: slab s lands at
// smem + s * slab_bytes.
template <int D>
__device__ __forceinline__ void tma_load_slabs(char* smem, int slab_bytes, const CUtensorMap* map, int head, int row,
                                               uint64_t* bar) {
#pragma unroll
  for (int s = 0; s < D / 64; ++s) tma_load_3d(smem + s * slab_bytes, map, s * 64, head, row, bar);
}

template <int D>
__device__ __forceinline__ void tma_prefetch_l2_slabs(const CUtensorMap* map, int head, int row) {
#pragma unroll
  for (int s = 0; s < D / 64; ++s) tma_prefetch_l2_3d(map, s * 64, head, row);
}

}  // namespace scree::cuda_attention::sm90

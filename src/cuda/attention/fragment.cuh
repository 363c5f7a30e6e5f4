// Register fragments shared by every attention kernel (sm80 mma.sync and sm90 wgmma use the same
// m16n8 accumulator layout per warp: element e of n-tile j of a thread is row lane/4 (+8 when
// e >= 2), column 8j + 2 (lane % 4) + e % 2): packing two floats into one 16-bit pair, reading a
// 16-bit element as float, reductions over the 4 lanes of a row, and turning two adjacent
// accumulator tiles into the A operand of the next product (so P and dS never leave registers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace scree::cuda_attention {

// Two floats -> one register of two 16-bit values (lower address = x).
template <class T>
__device__ __forceinline__ uint32_t pack2(float x, float y);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float x, float y) {
  __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float x, float y) {
  __half2 v = __floats2half2_rn(x, y);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <class T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }

// Reductions over the 4 lanes that share a row of an accumulator (lanes 4r..4r+3).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// The A operand of a 16 x 16 product whose values are two adjacent 16 x 8 accumulators (columns
// [16j, 16j+8) and [16j+8, 16j+16)): the accumulator layout matches A's register order.
template <class T>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
  a[0] = pack2<T>(lo[0], lo[1]);
  a[1] = pack2<T>(lo[2], lo[3]);
  a[2] = pack2<T>(hi[0], hi[1]);
  a[3] = pack2<T>(hi[2], hi[3]);
}

}  // namespace scree::cuda_attention

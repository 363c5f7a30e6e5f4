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

// Value `hi` (0: the lower address, as pack2's x) of a register of two 16-bit values, as a float;
// a bfloat16 is a float's upper half, so one shift or mask.
template <class T>
__device__ __forceinline__ float unpack_half(uint32_t w, int hi);
template <>
__device__ __forceinline__ float unpack_half<__nv_bfloat16>(uint32_t w, int hi) {
  return __uint_as_float(hi ? (w & 0xffff0000u) : (w << 16));
}
template <>
__device__ __forceinline__ float unpack_half<__half>(uint32_t w, int hi) {
  return __half2float(__ushort_as_half(uint16_t(hi ? w >> 16 : w)));
}

// Reductions over the 4 lanes that share a row of an accumulator (lanes 4r..4r+3).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// One row's four words of four 8-column chunks, as a quad holds them (lane q: columns 2q, 2q + 1
// of each chunk), regrouped so that lane q holds chunk q whole (16 bytes, one vector store): a 4 x 4
// transpose over the quad in two rounds of xor shuffles, two words a round. Words b[s] of the
// result are lane s's word of chunk q.
__device__ __forceinline__ uint4 quad_transpose(uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, int q) {
  const bool hi = (q & 2) != 0, odd = (q & 1) != 0;
  // Partner q ^ 2: keep the two chunks of this lane's half (c & 2 == q & 2), send the other two.
  const uint32_t u0 = hi ? a2 : a0, u1 = hi ? a3 : a1;
  const uint32_t v0 = __shfl_xor_sync(0xffffffffu, hi ? a0 : a2, 2);
  const uint32_t v1 = __shfl_xor_sync(0xffffffffu, hi ? a1 : a3, 2);
  // u: this lane's, v: lane q ^ 2's words of chunks (q & 2), (q & 2) + 1. Partner q ^ 1: keep
  // chunk q, send chunk q ^ 1.
  const uint32_t ko = odd ? u1 : u0, kr = odd ? v1 : v0;
  const uint32_t r0 = __shfl_xor_sync(0xffffffffu, odd ? u0 : u1, 1);  // lane q ^ 1's
  const uint32_t r1 = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 1);  // lane q ^ 3's
  const uint32_t e0 = odd ? r0 : ko, e1 = odd ? ko : r0;  // lanes (q & 2), (q & 2) + 1
  const uint32_t f0 = odd ? r1 : kr, f1 = odd ? kr : r1;  // lanes (q & 2) ^ 2, ((q & 2) ^ 2) + 1
  return hi ? make_uint4(f0, f1, e0, e1) : make_uint4(e0, e1, f0, f1);
}

// Whether rows of a tensor at ptr take 16-byte stores: the base and both strides in whole 8-element
// (16-byte) units. Outputs are not required to be aligned, so the kernels check at run time.
__host__ __device__ __forceinline__ bool rows_16b(const void* ptr, int64_t row_stride, int64_t head_stride) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && row_stride % 8 == 0 && head_stride % 8 == 0;
}

// One 16-byte store to global memory, always as one instruction. Where a branch beside it stores
// the same words as four 4-byte stores (the one-path schemes below and staged_rows.cuh), nvcc
// merged the two and emitted four 4-byte stores for half of the vector path's chunks too (SASS of
// the Hopper backward, dK / dV and dq: 4 x STG.E where STG.E.128 was meant; ncu counted 75% of
// those stores' sectors as excess), since it cannot prove the chunk's alignment from a T pointer.
__device__ __forceinline__ void store_16b(void* gmem, const uint4& v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(gmem), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// Stores row r (0: lane / 4, 1: lane / 4 + 8) of a warp's m16 x 8DT accumulator fragment, times
// mult, as T at dst (the row's first column; nothing is stored where `live` is false). `vector`
// (warp-uniform: the quad's shuffles run in every lane or in none; dst 16-byte aligned; used where
// DT % 4 == 0): each quad regroups the row into 16-byte chunks first, one store a chunk instead of
// four 4-byte ones (the accumulator layout's 4-byte stores fill half of each 32-byte sector they
// touch). kOnePath: the chunks are formed either way and stored as four words where not `vector`,
// so the code has one store scheme, not two under a branch: in the Hopper backward (dq stored from
// the step loop) the branch made ptxas spill the consumers (~100 local memory operations instead
// of a few), while in the forward's epilogue the single path cost 2-3% at short lengths (H200).
template <class T, int DT, bool kOnePath = false>
__device__ __forceinline__ void store_fragment_row(T* dst, const float (&acc)[DT][4], int r, float mult, bool live,
                                                   bool vector) {
  const int q = threadIdx.x % 4;
  auto word = [&](int dt) { return pack2<T>(acc[dt][2 * r] * mult, acc[dt][2 * r + 1] * mult); };
  auto chunks = [&](auto&& store) {
#pragma unroll
    for (int g = 0; g < DT / 4; ++g)
      store(dst + (4 * g + q) * 8, quad_transpose(word(4 * g), word(4 * g + 1), word(4 * g + 2), word(4 * g + 3), q));
  };
  if constexpr (DT % 4 == 0 && kOnePath) {
    chunks([&](T* chunk, const uint4& c) {
      if (live && vector) store_16b(chunk, c);
      if (live && !vector) {
        uint32_t* w = reinterpret_cast<uint32_t*>(chunk);
        w[0] = c.x, w[1] = c.y, w[2] = c.z, w[3] = c.w;
      }
    });
    return;
  }
  // (Written out, not through `chunks`: with the lambda nvcc schedules the forward's epilogue and
  // the backward's consumers differently, 5 spills instead of 2 there; compared in the SASS.)
  if constexpr (DT % 4 == 0) {  // 16-byte chunks take four 8-column tiles
    if (vector) {
#pragma unroll
      for (int g = 0; g < DT / 4; ++g) {
        const uint4 c = quad_transpose(word(4 * g), word(4 * g + 1), word(4 * g + 2), word(4 * g + 3), q);
        if (live) *reinterpret_cast<uint4*>(dst + (4 * g + q) * 8) = c;
      }
      return;
    }
  }
  if (live) {
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) *reinterpret_cast<uint32_t*>(dst + q * 2 + dt * 8) = word(dt);
  }
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

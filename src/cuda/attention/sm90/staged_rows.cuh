// Stores a warp's 16-row accumulator fragment to global memory through 2 KB of shared memory
// (the Hopper backward's dK and dV epilogue; the forward's output rows at D = 64). wgmma leaves
// row r of the warp's 16 in the quad of lanes 4 (r % 8) .. + 3, two columns of each 8-column tile a
// lane, so storing from registers takes 4-byte stores (half of each 32-byte sector) or a quad
// transpose of shuffles and selects (8.7% of the consumers' stall samples at short lengths, ncu).
// Instead, per 64 columns: four stmatrix.x4 put the 16 x 64 block into 128-byte rows of shared
// memory (16-byte chunk c of row r at chunk c ^ (r % 8): eight rows of one chunk fall in eight bank
// groups), and each lane reads back four 16-byte chunks, so that a warp's store writes four whole
// 128-byte row segments.
#pragma once

#include <cstdint>

#include "../fragment.cuh"
#include "ptx.cuh"

namespace scree::cuda_attention::sm90 {

__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

// The same with each 8 x 8 matrix transposed on its way (lane l's fragment column c becomes row c
// of matrix l / 8): the 80-query backward's dS written query-major from dS^T's registers.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0),
               "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

// acc: the warp's fragment (rows lane / 4 and lane / 4 + 8 of each of the DT 8-column tiles), row
// lane / 4 + 8 r times mult[r], as T. Row i (0..15) goes to dst + i * row_stride where i < rows;
// stage: 2 KB of shared memory, 128-byte aligned, that no other warp touches until this returns.
// `vector` (dst and the stride in 16-byte units) picks 16-byte stores, else four 4-byte ones a chunk.
template <class T, int DT>
__device__ __forceinline__ void store_rows_staged(const float (&acc)[DT][4], const float (&mult)[2], char* stage,
                                                  T* dst, int64_t row_stride, int rows, bool vector) {
  static_assert(DT % 8 == 0, "64-column rounds");
  const int lane = threadIdx.x % 32;
  const uint32_t s0 = smem_u32(stage);
  auto word = [&](int dt, int half) {
    return pack2<T>(acc[dt][2 * half] * mult[half], acc[dt][2 * half + 1] * mult[half]);
  };
#pragma unroll
  for (int g = 0; g < DT / 8; ++g) {
    if (g > 0) __syncwarp();  // the last round's reads are done before its rows are overwritten
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
      // Matrices (rows 0-7, chunk j), (rows 8-15, chunk j), (rows 0-7, chunk j + 1), (rows 8-15,
      // chunk j + 1); lanes 8m .. 8m + 7 give matrix m's row addresses.
      const int m = lane / 8, row = (m & 1) * 8 + lane % 8, chunk = j + (m >> 1);
      const int dt = 8 * g + j;
      stmatrix_x4(s0 + row * 128 + ((chunk ^ (row & 7)) << 4), word(dt, 0), word(dt, 1), word(dt + 1, 0),
                  word(dt + 1, 1));
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = lane + 32 * i, row = c / 8, chunk = c % 8;
      const uint4 v = *reinterpret_cast<const uint4*>(stage + row * 128 + ((chunk ^ (row & 7)) << 4));
      T* out = dst + row * row_stride + 64 * g + 8 * chunk;
      if (row < rows && vector) store_16b(out, v);
      if (row < rows && !vector) {
        uint32_t* w = reinterpret_cast<uint32_t*>(out);
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
      }
    }
  }
  __syncwarp();  // every read is done before the caller reuses the stage
}

// The same with one factor for every row (the backward's dK, dV).
template <class T, int DT>
__device__ __forceinline__ void store_rows_staged(const float (&acc)[DT][4], float mult, char* stage, T* dst,
                                                  int64_t row_stride, int rows, bool vector) {
  const float both[2] = {mult, mult};
  store_rows_staged<T>(acc, both, stage, dst, row_stride, rows, vector);
}

}  // namespace scree::cuda_attention::sm90

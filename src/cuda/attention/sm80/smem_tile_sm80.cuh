// A tile of ROWS x D 16-bit elements in shared memory, rows of D*2 bytes cut into 16-byte chunks,
// chunk c of row r stored at chunk (c ^ (r % 8)) (D >= 64). The XOR swizzle puts the 8 rows one
// ldmatrix phase reads (same logical chunk, rows r..r+7) in 8 different 16-byte bank groups:
// without it a 128- or 256-byte row stride maps all 8 to the same banks (an 8-way conflict).
// D = 32 (64-byte rows, two per 128-byte bank line) XORs with (r / 2) % 4 for the same effect.
// Also: the cp.async tile loader and the four fragment loads of the mma.m16n8k16 operands (sm80 path).
#pragma once

#include <cstdint>

#include "mma_sm80.cuh"

namespace scree::cuda_attention {

template <int ROWS, int D>
struct SmemTile {
  static_assert(D % 32 == 0, "rows of whole 64-byte halves of a bank line");
  static constexpr int kChunks = D / 8;
  static constexpr int kRowsPerLine = kChunks >= 8 ? 1 : 8 / kChunks;  // rows sharing 128 bytes
  static constexpr int kXorMask = kChunks >= 8 ? 7 : kChunks - 1;
  static constexpr int kBytes = ROWS * D * 2;

  char* base;

  __device__ __forceinline__ char* at(int row, int chunk) const {
    return base + row * (D * 2) + ((chunk ^ ((row / kRowsPerLine) & kXorMask)) << 4);
  }

  // Rows [0, rows_valid) of `src` (row stride in elements, 16-byte aligned rows) with cp.async;
  // the other rows are zero-filled. The caller commits and waits.
  template <int THREADS, class T>
  __device__ __forceinline__ void load_async(const T* src, int64_t row_stride, int rows_valid) const {
    static_assert((ROWS * kChunks) % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int it = 0; it < ROWS * kChunks / THREADS; ++it) {
      const int i = it * THREADS + int(threadIdx.x);
      const int r = i / kChunks, c = i % kChunks;
      const bool ok = r < rows_valid;
      cp_async_16(at(r, c), src + (ok ? r * row_stride : 0) + c * 8, ok);
    }
  }

  // A operand (16 x 16, row-major) of rows [row0, row0+16), columns [k0, k0+16) of this tile.
  __device__ __forceinline__ void load_a(uint32_t (&a)[4], int row0, int k0) const {
    const int l = threadIdx.x % 32;
    ldmatrix_x4(a, at(row0 + (l % 16), k0 / 8 + l / 16));
  }

  // A operand from a tile stored transposed ([k][m]): A[m][k] for m in [m0, m0+16), k in [k0, k0+16).
  __device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], int m0, int k0) const {
    const int l = threadIdx.x % 32, i = l / 8;
    ldmatrix_x4_trans(a, at(k0 + (l % 8) + (i / 2) * 8, m0 / 8 + (i % 2)));
  }

  // B operands of two n-tiles (n in [n0, n0+16)) over k in [k0, k0+16) from a tile stored [n][k]
  // (e.g. K as [key][d] for Q K^T): b = {n-tile 0: b[0], b[1]; n-tile 1: b[2], b[3]}.
  __device__ __forceinline__ void load_b(uint32_t (&b)[4], int n0, int k0) const {
    const int l = threadIdx.x % 32;
    ldmatrix_x4(b, at(n0 + (l % 8) + (l / 16) * 8, k0 / 8 + (l / 8) % 2));
  }

  // B operands of two n-tiles from a tile stored [k][n] (e.g. V as [key][d] for P V).
  __device__ __forceinline__ void load_b_trans(uint32_t (&b)[4], int n0, int k0) const {
    const int l = threadIdx.x % 32;
    ldmatrix_x4_trans(b, at(k0 + (l % 8) + ((l / 8) % 2) * 8, n0 / 8 + l / 16));
  }
};

}  // namespace scree::cuda_attention

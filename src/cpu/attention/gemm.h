// The one matrix micro-kernel of the CPU attention: C (M x N) (+)= A (M x K) * B (K x N), B and C
// row-major in the compute type; A row-major, or stored transposed (A_T: element (m, k) at
// A[k * lda + m]) so that S^T from a previous product can be used without a transpose. Register
// tile: kTileRows rows x 2 vectors. Row tiles outermost: a tile's rows of A (12 x K, read by
// broadcasts, in place from K's rows 2 KiB apart) stay in L1 across the column panels, while B
// (Q^T or V, packed or dense) is re-read from L1/L2; with the panels outermost (B's panel kept in
// L1) the fp32 forward was 1-4% slower (D 64: 3-4%), the backward -3..+13% (interleaved A/B, this
// Xeon, benchmarks/NOTES.md issue 20 step 7).
// N must be a multiple of the width (callers pad their packed buffers with zeros); panels are two
// vectors wide, the last one one vector where N is an odd multiple.
// The multiply-add is a policy: FmaProduct here, bf16_pairs.h's Bf16PairProduct (A and B holding
// bfloat16 pairs whose two products one instruction adds into C's fp32 lanes).
#pragma once

#include "isa.h"

#include <cstdint>
#include <cstring>

#include "simd.h"

SCREE_CPU_NAMESPACE_BEGIN

// The micro-kernel's multiply-add, C's vector += A's scalar x B's vector, over kPack indices of the
// reduction a step. FmaProduct: A and B in the compute type, one FMA a step.
template <class T>
struct FmaProduct {
  using A = T;
  using B = T;
  static constexpr int kPack = 1;
  static T load_a(const A* a) { return *a; }
  static vec_t<T> madd(vec_t<T> c, T a, vec_t<T> b) { return c + a * b; }
};


// Always inlined: an out-of-line call per 6x16 tile spilled the accumulators in its epilogue and
// cost a measurable share at K = 64..128 (benchmarks/NOTES.md). NV: vectors per row of the tile (2;
// 1 for a last column panel one vector wide).
template <class T, int R, bool A_T, int NV = 2, class P = FmaProduct<T>>
__attribute__((always_inline)) inline void gemm_tile(const typename P::A* A, int64_t lda, const typename P::B* B,
                                                     int64_t ldb, T* C, int64_t ldc, int64_t K, bool accumulate,
                                                     T* col_max) {
  using V = vec_t<T>;
  constexpr int W = Simd<T>::width;
  static_assert(NV == 1 || NV == 2, "one or two vectors a row");
  // The product starts from zero and C is added once at the end (C + A B, not a chain through C):
  // accumulated over blocks (O over key blocks, dK / dV over query blocks and a GQA group's heads,
  // dQ over key blocks), a chain through C rounded one sum of up to ~5,600 terms one FMA at a time,
  // sqrt(n) times a block's error: float32 dV 1.9x FlashAttention's bound at 696 queries x 8 heads
  // (benchmarks/NOTES.md, the kernels' campaign). One add per accumulator a tile more.
  V c0[R], c1[R];
  for (int r = 0; r < R; ++r) {
    c0[r] = V{};
    if constexpr (NV == 2) c1[r] = V{};
  }
  for (int64_t k = 0; k < K; ++k) {  // K: steps of P::kPack reduction indices
    V b0, b1{};
    std::memcpy(&b0, B + k * ldb, sizeof(V));
    if constexpr (NV == 2) std::memcpy(&b1, B + k * ldb + W, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const auto a = P::load_a(A_T ? A + k * lda + r : A + r * lda + k);
      c0[r] = P::madd(c0[r], a, b0);
      if constexpr (NV == 2) c1[r] = P::madd(c1[r], a, b1);
    }
  }
  for (int r = 0; r < R; ++r) {
    if (accumulate) c0[r] = load<T>(C + r * ldc) + c0[r];
    store<T>(C + r * ldc, c0[r]);
    if constexpr (NV == 2) {
      if (accumulate) c1[r] = load<T>(C + r * ldc + W) + c1[r];
      store<T>(C + r * ldc + W, c1[r]);
    }
  }
  if (col_max != nullptr) {  // the tile's column maxima, from the registers
    V m0 = c0[0];
    for (int r = 1; r < R; ++r) m0 = vmax<T>(m0, c0[r]);
    store<T>(col_max, vmax<T>(load<T>(col_max), m0));
    if constexpr (NV == 2) {
      V m1 = c1[0];
      for (int r = 1; r < R; ++r) m1 = vmax<T>(m1, c1[r]);
      store<T>(col_max + W, vmax<T>(load<T>(col_max + W), m1));
    }
  }
}

// Rows of the register tile: 6 x 2 vectors fill the 16 AVX2 / SSE registers; AVX-512 has 32, so
// 12 rows (24 accumulators + 2 B vectors + 1 broadcast) halve the loads of B per FMA.
inline constexpr int kTileRows = kVectorBytes == 64 ? 12 : 6;

// The rows left below a whole tile (1 .. R - 1), one instantiation each.
template <class T, int R, bool A_T, int NV = 2, class P = FmaProduct<T>>
__attribute__((always_inline)) inline void gemm_rest(int64_t rows, const typename P::A* A, int64_t lda,
                                                     const typename P::B* B, int64_t ldb, T* C, int64_t ldc, int64_t K,
                                                     bool accumulate, T* col_max) {
  if constexpr (R > 0) {
    if (rows == R) return gemm_tile<T, R, A_T, NV, P>(A, lda, B, ldb, C, ldc, K, accumulate, col_max);
    gemm_rest<T, R - 1, A_T, NV, P>(rows, A, lda, B, ldb, C, ldc, K, accumulate, col_max);
  }
}

// B's column panel starting at column j: row-major B (b_panel 0) has it at B + j; panel-major B
// (b_panel > 0: panel p's K rows of W2 values stored together, p * b_panel apart, ldb = W2) at
// B + (j / W2) * b_panel, so that a panel's rows are one contiguous run.
template <class T, class BT = T>
inline const BT* b_panel_at(const BT* B, int64_t j, int64_t b_panel) {
  constexpr int64_t W2 = 2 * Simd<T>::width;
  return b_panel == 0 ? B + j : B + j / W2 * b_panel;
}

// col_max (N values, optional): raised to the maximum of each column of C, taken from the registers
// (the softmax's running max over S^T's key rows without a pass over S^T). b_panel: see b_panel_at.
// P: the multiply-add; K counts its steps (pairs of reduction indices with Bf16PairProduct).
template <class T, bool A_T = false, class P = FmaProduct<T>>
void gemm(int64_t M, int64_t N, int64_t K, const typename P::A* A, int64_t lda, const typename P::B* B, int64_t ldb,
          T* C, int64_t ldc, bool accumulate, T* col_max = nullptr, int64_t b_panel = 0) {
  constexpr int W = Simd<T>::width, W2 = 2 * W;
  const int64_t N2 = N / W2 * W2;  // two-vector panels; a last one-vector panel where N % W2 == W
  auto cm = [&](int64_t j) { return col_max == nullptr ? nullptr : col_max + j; };
  auto bp = [&](int64_t j) { return b_panel_at<T>(B, j, b_panel); };
  int64_t i = 0;
  for (; i + kTileRows <= M; i += kTileRows) {
    for (int64_t j = 0; j < N2; j += W2)
      gemm_tile<T, kTileRows, A_T, 2, P>(A + (A_T ? i : i * lda), lda, bp(j), ldb, C + i * ldc + j, ldc, K, accumulate,
                                         cm(j));
    if (N2 < N)
      gemm_tile<T, kTileRows, A_T, 1, P>(A + (A_T ? i : i * lda), lda, bp(N2), ldb, C + i * ldc + N2, ldc, K, accumulate,
                                         cm(N2));
  }
  for (int64_t j = 0; j < N2; j += W2)
    gemm_rest<T, kTileRows - 1, A_T, 2, P>(M - i, A + (A_T ? i : i * lda), lda, bp(j), ldb, C + i * ldc + j, ldc, K,
                                           accumulate, cm(j));
  if (N2 < N)
    gemm_rest<T, kTileRows - 1, A_T, 1, P>(M - i, A + (A_T ? i : i * lda), lda, bp(N2), ldb, C + i * ldc + N2, ldc, K,
                                           accumulate, cm(N2));
}

// A masked block's products skip the register tiles that only meet masked scores (keys a tile's
// queries cannot see: above the causal diagonal, outside a window). On a causal diagonal block of
// 96 x 96, ~30% of S^T's tiles and ~45% of P V's reduction are such (an item's queries see keys up
// to their own). The caller masks (or never reads) what was skipped.

// S^T = K Q^T (M keys x N queries, overwritten): column panel j (queries [j W2, j W2 + W2)) needs
// key rows [row_lo[j], row_hi[j]) only; a row tile outside its panel's range is not computed.
template <class T, class P = FmaProduct<T>>
void gemm_panel_rows(int64_t M, int64_t N, int64_t K, const typename P::A* A, int64_t lda, const typename P::B* B,
                     int64_t ldb, T* C, int64_t ldc, const int64_t* row_lo, const int64_t* row_hi) {
  constexpr int W = Simd<T>::width, W2 = 2 * W;
  const int64_t N2 = N / W2 * W2;  // as gemm: a last one-vector panel where N % W2 == W
  int64_t i = 0;
  for (; i + kTileRows <= M; i += kTileRows) {
    for (int64_t j = 0; j < N2; j += W2)
      if (i < row_hi[j / W2] && i + kTileRows > row_lo[j / W2])
        gemm_tile<T, kTileRows, false, 2, P>(A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, K, false, nullptr);
    if (N2 < N && i < row_hi[N2 / W2] && i + kTileRows > row_lo[N2 / W2])
      gemm_tile<T, kTileRows, false, 1, P>(A + i * lda, lda, B + N2, ldb, C + i * ldc + N2, ldc, K, false, nullptr);
  }
  for (int64_t j = 0; j < N2; j += W2)
    if (i < M && i < row_hi[j / W2] && M > row_lo[j / W2])
      gemm_rest<T, kTileRows - 1, false, 2, P>(M - i, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, K, false,
                                               nullptr);
  if (N2 < N && i < M && i < row_hi[N2 / W2] && M > row_lo[N2 / W2])
    gemm_rest<T, kTileRows - 1, false, 1, P>(M - i, A + i * lda, lda, B + N2, ldb, C + i * ldc + N2, ldc, K, false,
                                             nullptr);
}

// The union of rows [i, i + rows)'s ranges [lo_r - k0, hi_r - k0), within [0, n): [lo, hi).
inline void band_union(const int64_t* lo_r, const int64_t* hi_r, int64_t i, int64_t rows, int64_t k0, int64_t n,
                       int64_t& lo, int64_t& hi) {
  lo = n, hi = 0;
  for (int64_t r = i; r < i + rows; ++r)
    lo = lo_r[r] - k0 < lo ? lo_r[r] - k0 : lo, hi = hi_r[r] - k0 > hi ? hi_r[r] - k0 : hi;
  lo = lo < 0 ? 0 : lo, hi = hi > n ? n : hi;
}

// S = Q K^T (M queries x N keys, overwritten; the backward's): row tile i needs the columns its
// rows' ranges [c_lo[r], c_hi[r]) cover; a column panel outside them is not computed.
template <class T>
void gemm_rows_cols(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                    int64_t ldc, const int64_t* c_lo, const int64_t* c_hi) {
  constexpr int W2 = 2 * Simd<T>::width;  // N: a multiple of the width
  for (int64_t i = 0; i < M; i += kTileRows) {
    const int64_t rows = M - i < kTileRows ? M - i : kTileRows;
    int64_t lo, hi;
    band_union(c_lo, c_hi, i, rows, 0, N, lo, hi);
    for (int64_t j = lo / W2 * W2; j < hi; j += W2) {
      if (j + W2 <= N)
        gemm_rest<T, kTileRows, false>(rows, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, K, false, nullptr);
      else  // as gemm: a last one-vector panel where N % W2 == W
        gemm_rest<T, kTileRows, false, 1>(rows, A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, K, false, nullptr);
    }
  }
}

// C += A B over a band (P V in the forward; dV, dK and dQ in the backward): row r of A is 0
// outside k in [k_lo[r] - k0, k_hi[r] - k0) (masked P or dS), so a row tile reduces over its rows'
// union only. A as gemm's (A_T: stored transposed); b_panel as gemm's (N a multiple of 2 vectors).
// K counts reduction indices (keys); with pairs (P::kPack = 2) the band is taken in whole pairs,
// whose partners outside it must be 0 in A. accumulate = false: C = A B (0 where a row tile's band
// is empty).
template <class T, bool A_T, class P = FmaProduct<T>>
void gemm_rows_keys(int64_t M, int64_t N, int64_t K, const typename P::A* A, int64_t lda, const typename P::B* B,
                    int64_t ldb, T* C, int64_t ldc, const int64_t* k_lo, const int64_t* k_hi, int64_t k0,
                    int64_t b_panel = 0, bool accumulate = true) {
  constexpr int W2 = 2 * Simd<T>::width;
  for (int64_t i = 0; i < M; i += kTileRows) {
    const int64_t rows = M - i < kTileRows ? M - i : kTileRows;
    int64_t lo, hi;
    band_union(k_lo, k_hi, i, rows, k0, K, lo, hi);
    if (lo >= hi) {
      if (!accumulate)
        for (int64_t r = i; r < i + rows; ++r)
          for (int64_t j = 0; j < N; j += Simd<T>::width) store<T>(C + r * ldc + j, vec_t<T>{});
      continue;
    }
    lo /= P::kPack, hi = (hi + P::kPack - 1) / P::kPack;
    const typename P::A* a = A_T ? A + lo * lda + i : A + i * lda + lo;
    for (int64_t j = 0; j < N; j += W2)
      gemm_rest<T, kTileRows, A_T, 2, P>(rows, a, lda, b_panel_at<T>(B, j, b_panel) + lo * ldb, ldb, C + i * ldc + j,
                                         ldc, hi - lo, accumulate, nullptr);
  }
}

SCREE_CPU_NAMESPACE_END

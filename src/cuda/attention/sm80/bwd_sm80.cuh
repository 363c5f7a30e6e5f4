// sm80 varlen attention backward (mma.sync + cp.async), recomputing P from the forward's lse:
//  1. preprocess (bwd_prepost.cuh): delta[h, t] = sum_d dout * out (fp32), the softmax-gradient
//               row term (rows of ld floats), and the dq accumulator zeroed;
//  2. dkdv:     one block per (sequence, 64-key tile, kv head), 4 warps of 16 keys; loops over the
//               kv head's query heads (GQA sums stay in registers: no atomics for dk, dv) and the
//               query tiles that can see the keys: S^T = K Q^T, P^T, dP^T = V dO^T,
//               dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q; unless deterministic also
//               dQ += dS K into an fp32 accumulator with atomics;
//  3. dq:       deterministic mode: one block per (sequence, 64-query tile, head) recomputes S, P,
//               dP and owns its dQ += dS K (no atomics: the same bits every run, 7 instead of
//               5 products); otherwise the postprocess (bwd_prepost.cuh) casts the fp32 accumulator.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../scores.cuh"
#include "../varlen_tile.cuh"
#include "mma_sm80.cuh"
#include "smem_tile_sm80.cuh"

namespace scree::cuda_attention {

using attention::VarlenBackwardParams;

template <int D>
struct BwdTiles {
  static constexpr int kBlockN = 64;  // keys per block: 4 warps x 16
  // Queries per step. Each thread holds dK and dV of 16 keys x D (D fp32 registers) plus S^T and
  // dP^T of 16 keys x kBlockM (kBlockM / 4 each): 128 + 32 at D = 128 with 32 queries, 64 + 32 at
  // D = 64 with 64, under the 255-register limit without spills.
  static constexpr int kBlockM = D <= 64 ? 64 : 32;
  static constexpr int kThreads = 128;
  // Shared memory: K, V (64 x D), Q, dO (kBlockM x D), dS^T (64 x kBlockM), lse and delta:
  // D = 64: 8 + 8 + 8 + 8 + 8 KiB + 0.5 KiB = 40.5 KiB; D = 128: 16 + 16 + 8 + 8 + 4 + 0.25 = 52.25 KiB.
  static constexpr int kKBytes = SmemTile<kBlockN, D>::kBytes;
  static constexpr int kQBytes = SmemTile<kBlockM, D>::kBytes;
  static constexpr int kDSBytes = SmemTile<kBlockN, kBlockM>::kBytes;
  static constexpr int kSmemBytes = 2 * kKBytes + 2 * kQBytes + kDSBytes + 2 * kBlockM * 4;
};

template <int D>
struct DqTiles {
  static constexpr int kBlockM = 64;  // queries per block: 4 warps x 16
  static constexpr int kBlockN = 64;
  static constexpr int kThreads = 128;
  // Q, dO (64 x D) and one stage of K, V (64 x D): 32 KiB at D = 64, 64 KiB at D = 128.
  static constexpr int kTileBytes = SmemTile<64, D>::kBytes;
  static constexpr int kSmemBytes = 4 * kTileBytes;
};

// The lse a row's probabilities are measured against: a row that saw no key (lse = -inf) gets +inf
// so that exp(s - lse) is 0 for it instead of NaN; so do rows past the sequence's end.
__device__ __forceinline__ float lse_for_recompute(float lse) { return lse == -INFINITY ? INFINITY : lse; }

template <class T, int D>
__global__ void __launch_bounds__(128) varlen_dkdv_kernel(const VarlenBackwardParams p, const ScoreMap score,
                                                          const float* delta, int64_t ld, float* dq_accum) {
  using Tiles = BwdTiles<D>;
  constexpr int kM = Tiles::kBlockM, kN = Tiles::kBlockN;
  extern __shared__ __align__(128) char smem[];

  const SeqTile s = sequence(p, blockIdx.x);
  const int n0 = int(blockIdx.y) * kN;
  if (n0 >= s.k_len) return;
  const int hk = int(blockIdx.z);
  const int group = int(p.heads_q / p.heads_k);
  const int cols = min(kN, s.k_len - n0);

  const SmemTile<kN, D> sK{smem}, sV{smem + Tiles::kKBytes};
  const SmemTile<kM, D> sQ{smem + 2 * Tiles::kKBytes}, sdO{smem + 2 * Tiles::kKBytes + Tiles::kQBytes};
  const SmemTile<kN, kM> sdS{smem + 2 * Tiles::kKBytes + 2 * Tiles::kQBytes};
  float* s_lse = reinterpret_cast<float*>(smem + 2 * Tiles::kKBytes + 2 * Tiles::kQBytes + Tiles::kDSBytes);
  float* s_delta = s_lse + kM;

  sK.template load_async<128>(static_cast<const T*>(p.k) + (s.k_start + n0) * p.k_row_stride + hk * p.k_head_stride,
                              p.k_row_stride, cols);
  sV.template load_async<128>(static_cast<const T*>(p.v) + (s.k_start + n0) * p.v_row_stride + hk * p.v_head_stride,
                              p.v_row_stride, cols);
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float acc_dk[D / 8][4], acc_dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[i][e] = acc_dv[i][e] = 0.f;

  int mb_begin, mb_end;
  query_blocks<kM>(p, s, n0, cols, mb_begin, mb_end);

  for (int hi = 0; hi < group; ++hi) {
    const int h = hk * group + hi;
    const T* qh = static_cast<const T*>(p.q) + s.q_start * p.q_row_stride + h * p.q_head_stride;
    const T* doh = static_cast<const T*>(p.dout) + s.q_start * p.dout_row_stride + h * p.dout_head_stride;
    const float* lse_h = p.lse_in + h * p.total_q + s.q_start;
    const float* delta_h = delta + h * ld + s.q_start;
    for (int mb = mb_begin; mb < mb_end; ++mb) {
      const int m0 = mb * kM;
      const int rows = min(kM, s.q_len - m0);
      __syncthreads();  // the previous step is done with sQ, sdO, sdS, s_lse
      sQ.template load_async<128>(qh + int64_t(m0) * p.q_row_stride, p.q_row_stride, rows);
      sdO.template load_async<128>(doh + int64_t(m0) * p.dout_row_stride, p.dout_row_stride, rows);
      cp_async_commit();
      for (int i = threadIdx.x; i < kM; i += 128) {
        s_lse[i] = i < rows ? lse_for_recompute(lse_h[m0 + i]) : INFINITY;
        s_delta[i] = i < rows ? delta_h[m0 + i] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x kM queries.
      float acc_s[kM / 8][4], acc_dp[kM / 8][4];
#pragma unroll
      for (int i = 0; i < kM / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[i][e] = acc_dp[i][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t ak[4], av[4];
        sK.load_a(ak, warp * 16, kk * 16);
        sV.load_a(av, warp * 16, kk * 16);
#pragma unroll
        for (int nt = 0; nt < kM / 16; ++nt) {
          uint32_t b[4];
          sQ.load_b(b, nt * 16, kk * 16);
          mma_16816<T>(acc_s[2 * nt], ak, b[0], b[1]);
          mma_16816<T>(acc_s[2 * nt + 1], ak, b[2], b[3]);
          sdO.load_b(b, nt * 16, kk * 16);
          mma_16816<T>(acc_dp[2 * nt], av, b[0], b[1]);
          mma_16816<T>(acc_dp[2 * nt + 1], av, b[2], b[3]);
        }
      }

      // P^T and dS^T, elementwise. Blocks where every (query, key) pair is visible skip the mask.
      const KeyRange first = visible_keys(p, m0, s.q_len, s.k_len);
      const KeyRange last = visible_keys(p, m0 + kM - 1, s.q_len, s.k_len);
      const bool full = m0 + kM <= s.q_len && n0 + kN <= s.k_len && last.lo <= n0 && first.hi >= n0 + kN;
#pragma unroll
      for (int nt = 0; nt < kM / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = nt * 8 + (lane % 4) * 2 + (e & 1);   // query within the tile
          const int kj = warp * 16 + lane / 4 + 8 * (e >> 1);  // key within the tile
          const float x = score(acc_s[nt][e]);
          float pr = exp2f((x - s_lse[qi]) * kLog2e);
          if (!full) {
            const KeyRange r = visible_keys(p, m0 + qi, s.q_len, s.k_len);
            if (m0 + qi >= s.q_len || n0 + kj < r.lo || n0 + kj >= r.hi) pr = 0.f;
          }
          acc_s[nt][e] = pr;
          acc_dp[nt][e] = pr * (acc_dp[nt][e] - s_delta[qi]) * score.grad(x);
        }
      }

      // dV += P^T dO and dK += dS^T Q (k = queries).
#pragma unroll
      for (int kk = 0; kk < kM / 16; ++kk) {
        uint32_t ap[4], ads[4];
        acc_to_a<T>(ap, acc_s[2 * kk], acc_s[2 * kk + 1]);
        acc_to_a<T>(ads, acc_dp[2 * kk], acc_dp[2 * kk + 1]);
#pragma unroll
        for (int dt = 0; dt < D / 16; ++dt) {
          uint32_t b[4];
          sdO.load_b_trans(b, dt * 16, kk * 16);
          mma_16816<T>(acc_dv[2 * dt], ap, b[0], b[1]);
          mma_16816<T>(acc_dv[2 * dt + 1], ap, b[2], b[3]);
          sQ.load_b_trans(b, dt * 16, kk * 16);
          mma_16816<T>(acc_dk[2 * dt], ads, b[0], b[1]);
          mma_16816<T>(acc_dk[2 * dt + 1], ads, b[2], b[3]);
        }
      }

      if (dq_accum != nullptr) {
        // dS^T to shared memory, then dQ (kM x D) += dS K split over the warps.
#pragma unroll
        for (int nt = 0; nt < kM / 8; ++nt)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int kj = warp * 16 + lane / 4 + 8 * r, qi = nt * 8 + (lane % 4) * 2;
            *reinterpret_cast<uint32_t*>(sdS.at(kj, qi / 8) + (qi % 8) * 2) =
                pack2<T>(acc_dp[nt][2 * r], acc_dp[nt][2 * r + 1]);
          }
        __syncthreads();
        constexpr int kRowTiles = kM / 16;            // 16-query tiles of dQ
        constexpr int kWarpsPerRow = 4 / kRowTiles;   // warps sharing one, each a slice of D
        constexpr int kCols = D / kWarpsPerRow;
        const int mt = warp / kWarpsPerRow, c0 = (warp % kWarpsPerRow) * kCols;
        float acc_dq[kCols / 8][4];
#pragma unroll
        for (int i = 0; i < kCols / 8; ++i) acc_dq[i][0] = acc_dq[i][1] = acc_dq[i][2] = acc_dq[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kN / 16; ++kk) {
          uint32_t a[4];
          sdS.load_a_trans(a, mt * 16, kk * 16);
#pragma unroll
          for (int dt = 0; dt < kCols / 16; ++dt) {
            uint32_t b[4];
            sK.load_b_trans(b, c0 + dt * 16, kk * 16);
            mma_16816<T>(acc_dq[2 * dt], a, b[0], b[1]);
            mma_16816<T>(acc_dq[2 * dt + 1], a, b[2], b[3]);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int qi = mt * 16 + lane / 4 + 8 * r;
          if (qi >= rows) continue;
          float* dst = dq_accum + ((s.q_start + m0 + qi) * p.heads_q + h) * D + c0 + (lane % 4) * 2;
#pragma unroll
          for (int dt = 0; dt < kCols / 8; ++dt) {
#if __CUDA_ARCH__ >= 900
            // One 8-byte vector atomic instead of two (sm_90+): half the atomic operations.
            atomicAdd(reinterpret_cast<float2*>(dst + dt * 8), make_float2(acc_dq[dt][2 * r], acc_dq[dt][2 * r + 1]));
#else
            atomicAdd(dst + dt * 8, acc_dq[dt][2 * r]);
            atomicAdd(dst + dt * 8 + 1, acc_dq[dt][2 * r + 1]);
#endif
          }
        }
      }
    }
  }
  cp_async_wait<0>();  // K and V were never waited for when no query tile sees this block

  // dK, dV of this block's keys (the score scale is inside dS already).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int kj = warp * 16 + lane / 4 + 8 * r;
    if (kj >= cols) continue;
    const int64_t t = s.k_start + n0 + kj;
    T* dk = static_cast<T*>(p.dk) + t * p.dk_row_stride + hk * p.dk_head_stride + (lane % 4) * 2;
    T* dv = static_cast<T*>(p.dv) + t * p.dv_row_stride + hk * p.dv_head_stride + (lane % 4) * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<uint32_t*>(dk + dt * 8) = pack2<T>(acc_dk[dt][2 * r], acc_dk[dt][2 * r + 1]);
      *reinterpret_cast<uint32_t*>(dv + dt * 8) = pack2<T>(acc_dv[dt][2 * r], acc_dv[dt][2 * r + 1]);
    }
  }
}

// Deterministic dQ: one block per (sequence, 64-query tile, head), over the key tiles it sees.
template <class T, int D>
__global__ void __launch_bounds__(128) varlen_dq_kernel(const VarlenBackwardParams p, const ScoreMap score,
                                                        const float* delta, int64_t ld) {
  using Tiles = DqTiles<D>;
  constexpr int kM = Tiles::kBlockM, kN = Tiles::kBlockN;
  extern __shared__ __align__(128) char smem[];

  const QueryTile tile = query_tile<kM>(p);
  if (tile.empty) return;
  const SeqTile& s = tile.s;
  const int m0 = tile.m0, rows = tile.rows, h = tile.h, hk = tile.hk;

  const SmemTile<kM, D> sQ{smem}, sdO{smem + Tiles::kTileBytes};
  const SmemTile<kN, D> sK{smem + 2 * Tiles::kTileBytes}, sV{smem + 3 * Tiles::kTileBytes};
  sQ.template load_async<128>(static_cast<const T*>(p.q) + (s.q_start + m0) * p.q_row_stride + h * p.q_head_stride,
                              p.q_row_stride, rows);
  sdO.template load_async<128>(
      static_cast<const T*>(p.dout) + (s.q_start + m0) * p.dout_row_stride + h * p.dout_head_stride,
      p.dout_row_stride, rows);
  const T* k = static_cast<const T*>(p.k) + s.k_start * p.k_row_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + s.k_start * p.v_row_stride + hk * p.v_head_stride;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int row[2];
  KeyRange vis[2];
  float lse[2], dlt[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row[r] = warp * 16 + lane / 4 + 8 * r;
    const int i = min(row[r], rows - 1);
    vis[r] = visible_keys(p, m0 + i, s.q_len, s.k_len);
    lse[r] = lse_for_recompute(p.lse_in[h * p.total_q + s.q_start + m0 + i]);
    dlt[r] = delta[h * ld + s.q_start + m0 + i];
  }
  const KeyBlocks kb = key_blocks<kN>(p, s, m0, rows);

  float acc_dq[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc_dq[i][0] = acc_dq[i][1] = acc_dq[i][2] = acc_dq[i][3] = 0.f;

  for (int nb = kb.begin; nb < kb.end; ++nb) {
    const int n0 = nb * kN;
    __syncthreads();  // the previous step is done with sK, sV
    sK.template load_async<128>(k + int64_t(n0) * p.k_row_stride, p.k_row_stride, s.k_len - n0);
    sV.template load_async<128>(v + int64_t(n0) * p.v_row_stride, p.v_row_stride, s.k_len - n0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float acc_s[kN / 8][4], acc_dp[kN / 8][4];
#pragma unroll
    for (int i = 0; i < kN / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_s[i][e] = acc_dp[i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4], ado[4];
      sQ.load_a(aq, warp * 16, kk * 16);
      sdO.load_a(ado, warp * 16, kk * 16);
#pragma unroll
      for (int nt = 0; nt < kN / 16; ++nt) {
        uint32_t b[4];
        sK.load_b(b, nt * 16, kk * 16);
        mma_16816<T>(acc_s[2 * nt], aq, b[0], b[1]);
        mma_16816<T>(acc_s[2 * nt + 1], aq, b[2], b[3]);
        sV.load_b(b, nt * 16, kk * 16);
        mma_16816<T>(acc_dp[2 * nt], ado, b[0], b[1]);
        mma_16816<T>(acc_dp[2 * nt + 1], ado, b[2], b[3]);
      }
    }
    const bool full = n0 >= kb.full_lo && n0 + kN <= kb.full_hi;
#pragma unroll
    for (int nt = 0; nt < kN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1;
        const float x = score(acc_s[nt][e]);
        float pr = exp2f((x - lse[r]) * kLog2e);
        if (!full) {
          const int col = n0 + nt * 8 + (lane % 4) * 2 + (e & 1);
          if (col < vis[r].lo || col >= vis[r].hi) pr = 0.f;
        }
        acc_dp[nt][e] = pr * (acc_dp[nt][e] - dlt[r]) * score.grad(x);
      }
    }
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, acc_dp[2 * kk], acc_dp[2 * kk + 1]);
#pragma unroll
      for (int dt = 0; dt < D / 16; ++dt) {
        uint32_t b[4];
        sK.load_b_trans(b, dt * 16, kk * 16);
        mma_16816<T>(acc_dq[2 * dt], a, b[0], b[1]);
        mma_16816<T>(acc_dq[2 * dt + 1], a, b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= rows) continue;
    T* dq = static_cast<T*>(p.dq) + (s.q_start + m0 + row[r]) * p.dq_row_stride + h * p.dq_head_stride +
            (lane % 4) * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<uint32_t*>(dq + dt * 8) = pack2<T>(acc_dq[dt][2 * r], acc_dq[dt][2 * r + 1]);
  }
}

}  // namespace scree::cuda_attention

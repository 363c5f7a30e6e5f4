// sm80 varlen attention forward (mma.sync + cp.async): one thread block per (sequence, 64-query
// tile, query head), 4 warps of 16 query rows each. K and V tiles of 64 keys are double buffered
// in shared memory (the copy of block j+1 overlaps the math of block j); S = Q K^T and
// O += P V run on m16n8k16 tensor-core products with P kept in registers; the softmax is online
// (running max and sum per row, fp32). Runs on every sm_80+ GPU and is the oracle of the faster
// Hopper path.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "mma.cuh"
#include "scores.cuh"
#include "smem_tile.cuh"
#include "varlen_tile.cuh"

namespace scree::cuda_attention {

template <int D>
struct FwdTiles {
  static constexpr int kBlockM = 64;   // 4 warps x 16 rows
  static constexpr int kBlockN = 64;   // keys per step: S is 16 x 64 per warp = 32 fp32 registers
  static constexpr int kThreads = 128;
  // Shared memory: Q + 2 stages of (K, V), each 64 x D x 2 bytes:
  // 5 * 8 KiB = 40 KiB at D = 64, 5 * 16 KiB = 80 KiB at D = 128 (2 blocks per SM on 228 KiB).
  static constexpr int kTileBytes = SmemTile<64, D>::kBytes;
  static constexpr int kSmemBytes = 5 * kTileBytes;
};

template <class T, int D>
__global__ void __launch_bounds__(128) varlen_fwd_kernel(const VarlenParams p, const ScoreMap score) {
  using Tiles = FwdTiles<D>;
  constexpr int kM = Tiles::kBlockM, kN = Tiles::kBlockN;
  extern __shared__ __align__(128) char smem[];

  const SeqTile s = sequence(p, blockIdx.x);
  const int m0 = int(blockIdx.y) * kM;
  if (m0 >= s.q_len) return;
  const int h = int(blockIdx.z);
  const int hk = h / int(p.heads_q / p.heads_k);
  const int rows = min(kM, s.q_len - m0);

  const T* q = static_cast<const T*>(p.q) + (s.q_start + m0) * p.q_row_stride + h * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + s.k_start * p.k_row_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + s.k_start * p.v_row_stride + hk * p.v_head_stride;

  const SmemTile<kM, D> sQ{smem};
  // Stage i of K at smem + (1 + i) * tile, of V at smem + (3 + i) * tile (computed, not an array
  // indexed at run time, which would put the tiles' descriptors on the stack).
  auto sK = [&](int stage) { return SmemTile<kN, D>{smem + (1 + stage) * Tiles::kTileBytes}; };
  auto sV = [&](int stage) { return SmemTile<kN, D>{smem + (3 + stage) * Tiles::kTileBytes}; };

  const KeyBlocks kb = key_blocks<kN>(p, s, m0, rows);
  auto load_kv = [&](int nb, int stage) {
    const int n0 = nb * kN;
    sK(stage).template load_async<128>(k + int64_t(n0) * p.k_row_stride, p.k_row_stride, s.k_len - n0);
    sV(stage).template load_async<128>(v + int64_t(n0) * p.v_row_stride, p.v_row_stride, s.k_len - n0);
  };
  sQ.template load_async<128>(q, p.q_row_stride, rows);
  if (kb.begin < kb.end) load_kv(kb.begin, 0);
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // This thread's two rows (of the tile) and their visible keys.
  int row[2];
  KeyRange vis[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row[r] = warp * 16 + lane / 4 + 8 * r;
    vis[r] = visible_keys(p, m0 + min(row[r], rows - 1), s.q_len, s.k_len);
  }

  float acc_o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) acc_o[i][0] = acc_o[i][1] = acc_o[i][2] = acc_o[i][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  uint32_t qf[D / 16][4];

  for (int nb = kb.begin; nb < kb.end; ++nb) {
    const int stage = (nb - kb.begin) & 1;
    cp_async_wait<0>();
    __syncthreads();  // this stage has landed, and everyone is done with the other stage
    if (nb == kb.begin) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) sQ.load_a(qf[kk], warp * 16, kk * 16);
    }
    if (nb + 1 < kb.end) load_kv(nb + 1, stage ^ 1);
    cp_async_commit();

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float acc_s[kN / 8][4];
#pragma unroll
    for (int i = 0; i < kN / 8; ++i) acc_s[i][0] = acc_s[i][1] = acc_s[i][2] = acc_s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nt = 0; nt < kN / 16; ++nt) {
        uint32_t b[4];
        sK(stage).load_b(b, nt * 16, kk * 16);
        mma_16816<T>(acc_s[2 * nt], qf[kk], b[0], b[1]);
        mma_16816<T>(acc_s[2 * nt + 1], qf[kk], b[2], b[3]);
      }
    }

    // Scores, mask, online softmax.
    const int n0 = nb * kN;
    const bool full = n0 >= kb.full_lo && n0 + kN <= kb.full_hi;
#pragma unroll
    for (int nt = 0; nt < kN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = score(acc_s[nt][e]);
        if (!full) {
          const int col = n0 + nt * 8 + (lane % 4) * 2 + (e & 1);
          const KeyRange& r = vis[e >> 1];
          if (col < r.lo || col >= r.hi) x = -INFINITY;
        }
        acc_s[nt][e] = x;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int nt = 0; nt < kN / 8; ++nt) mx = fmaxf(mx, fmaxf(acc_s[nt][2 * r], acc_s[nt][2 * r + 1]));
      mx = quad_max(mx);
      // A row that has seen no key yet keeps max -inf; subtract 0 then so exp gives 0, not NaN.
      const float base = mx == -INFINITY ? 0.f : mx * kLog2e;
      const float alpha = exp2f(row_max[r] * kLog2e - base);
      row_max[r] = mx;
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kN / 8; ++nt) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          acc_s[nt][e] = exp2f(acc_s[nt][e] * kLog2e - base);
          sum += acc_s[nt][e];
        }
      }
      row_sum[r] = row_sum[r] * alpha + sum;  // per-thread partial; the quad is summed at the end
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) acc_o[dt][2 * r] *= alpha, acc_o[dt][2 * r + 1] *= alpha;
    }

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      uint32_t a[4];
      acc_to_a<T>(a, acc_s[2 * kk], acc_s[2 * kk + 1]);
#pragma unroll
      for (int dt = 0; dt < D / 16; ++dt) {
        uint32_t b[4];
        sV(stage).load_b_trans(b, dt * 16, kk * 16);
        mma_16816<T>(acc_o[2 * dt], a, b[0], b[1]);
        mma_16816<T>(acc_o[2 * dt + 1], a, b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();  // no copy may outlive the block (a tile with no visible key skips the loop)

  // Epilogue: O / l, lse = max + log(l); a row that saw no key gets 0 and -inf.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(row_sum[r]);
    if (row[r] >= rows) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int64_t t = s.q_start + m0 + row[r];
    T* out = static_cast<T*>(p.out) + t * p.out_row_stride + h * p.out_head_stride + (lane % 4) * 2;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<uint32_t*>(out + dt * 8) = pack2<T>(acc_o[dt][2 * r] * inv, acc_o[dt][2 * r + 1] * inv);
    if (p.lse != nullptr && lane % 4 == 0)
      p.lse[h * p.total_q + t] = l > 0.f ? row_max[r] + logf(l) : -INFINITY;
  }
}

}  // namespace scree::cuda_attention

// sm80 varlen attention forward (mma.sync + cp.async): one thread block per (sequence, query
// tile, query head), 4 warps of 16 or 32 query rows each. K and V tiles are double buffered
// in shared memory (the copy of block j+1 overlaps the math of block j); S = Q K^T and
// O += P V run on m16n8k16 tensor-core products with P kept in registers; the softmax is online
// (running max and sum per row, fp32). Runs on every sm_80+ GPU and is the oracle of the faster
// Hopper path.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../online_softmax.cuh"
#include "../scores.cuh"
#include "../varlen_tile.cuh"
#include "mma_sm80.cuh"
#include "smem_tile_sm80.cuh"

namespace scree::cuda_attention {

// Tile shape of the forward for head dim D. Each warp owns kRowTiles x 16 query rows: two row
// tiles halve the shared-memory reads of K and V per flop (every warp reads all of a K/V tile
// for its rows), at the price of registers: O is kRowTiles x D / 2 fp32 per thread (128 at
// D = 128) and S kRowTiles x kBlockN / 2 (32 with 32 keys), so D = 128 takes 32 keys per step.
// Measured on an H200 (benchmarks/NOTES.md, 2026-11-27): two row tiles gave no gain (mix d128
// 229 vs 227 TFLOP/s, short causal 119 vs 104), so one is the default; -DSCREE_FWD_ROW_TILES=2
// builds the other for experiments.
#ifndef SCREE_FWD_ROW_TILES
#define SCREE_FWD_ROW_TILES 1
#endif
template <int D>
struct FwdTiles {
  static constexpr int kRowTiles = SCREE_FWD_ROW_TILES;
  static constexpr int kBlockM = 4 * 16 * kRowTiles;  // 4 warps
  static constexpr int kBlockN = (kRowTiles == 1 || D <= 64) ? 64 : 32;
  static constexpr int kThreads = 128;
  // Shared memory: Q (kBlockM x D) + 2 stages of (K, V) (kBlockN x D each), 2 bytes an element:
  // two row tiles: D = 64: 16 + 4 * 8 = 48 KiB; D = 128: 32 + 4 * 8 = 64 KiB (3 blocks per SM);
  // one row tile: D = 64: 8 + 32 = 40 KiB; D = 128: 16 + 64 = 80 KiB.
  static constexpr int kQBytes = SmemTile<kBlockM, D>::kBytes;
  static constexpr int kKVBytes = SmemTile<kBlockN, D>::kBytes;
  static constexpr int kSmemBytes = kQBytes + 4 * kKVBytes;
};

// kFolded: ScoreMap::folds() (no softcap, scale > 0), see online_softmax.cuh.
template <class T, int D, bool kFolded>
__global__ void __launch_bounds__(128) varlen_fwd_kernel(const VarlenParams p, const ScoreMap score) {
  using Tiles = FwdTiles<D>;
  constexpr int kM = Tiles::kBlockM, kN = Tiles::kBlockN, kR = Tiles::kRowTiles;
  extern __shared__ __align__(128) char smem[];

  const QueryTile tile = query_tile<kM>(p);
  if (tile.empty) return;
  const SeqTile& s = tile.s;
  const int m0 = tile.m0, rows = tile.rows, h = tile.h, hk = tile.hk;

  const T* q = static_cast<const T*>(p.q) + (s.q_start + m0) * p.q_row_stride + h * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + s.k_start * p.k_row_stride + hk * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + s.k_start * p.v_row_stride + hk * p.v_head_stride;

  const SmemTile<kM, D> sQ{smem};
  // Stage i of K at Q + i * tile, of V at Q + (2 + i) * tile (computed, not an array indexed at
  // run time, which would put the tiles' descriptors on the stack).
  auto sK = [&](int stage) { return SmemTile<kN, D>{smem + Tiles::kQBytes + stage * Tiles::kKVBytes}; };
  auto sV = [&](int stage) { return SmemTile<kN, D>{smem + Tiles::kQBytes + (2 + stage) * Tiles::kKVBytes}; };

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
  // This thread's rows (of the tile): row tile t, half r -> warp * 16 * kR + 16 t + lane / 4 + 8 r.
  int row[kR][2];
  KeyRange vis[kR][2];
#pragma unroll
  for (int t = 0; t < kR; ++t)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row[t][r] = warp * 16 * kR + 16 * t + lane / 4 + 8 * r;
      vis[t][r] = visible_keys(p, m0 + min(row[t][r], rows - 1), s.q_len, s.k_len);
    }

  float acc_o[kR][D / 8][4];
#pragma unroll
  for (int t = 0; t < kR; ++t)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) acc_o[t][i][0] = acc_o[t][i][1] = acc_o[t][i][2] = acc_o[t][i][3] = 0.f;
  RowState st[kR];

  for (int nb = kb.begin; nb < kb.end; ++nb) {
    const int stage = (nb - kb.begin) & 1;
    cp_async_wait<0>();
    __syncthreads();  // this stage has landed, and everyone is done with the other stage
    if (nb + 1 < kb.end) load_kv(nb + 1, stage ^ 1);
    cp_async_commit();

    // S = Q K^T for this warp's rows x kN keys; Q fragments come from shared memory each step
    // (keeping them in registers would cost kR * D / 4 more registers).
    float acc_s[kR][kN / 8][4];
#pragma unroll
    for (int t = 0; t < kR; ++t)
#pragma unroll
      for (int i = 0; i < kN / 8; ++i) acc_s[t][i][0] = acc_s[t][i][1] = acc_s[t][i][2] = acc_s[t][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qf[kR][4];
#pragma unroll
      for (int t = 0; t < kR; ++t) sQ.load_a(qf[t], warp * 16 * kR + 16 * t, kk * 16);
#pragma unroll
      for (int nt = 0; nt < kN / 16; ++nt) {
        uint32_t b[4];
        sK(stage).load_b(b, nt * 16, kk * 16);
#pragma unroll
        for (int t = 0; t < kR; ++t) {
          mma_16816<T>(acc_s[t][2 * nt], qf[t], b[0], b[1]);
          mma_16816<T>(acc_s[t][2 * nt + 1], qf[t], b[2], b[3]);
        }
      }
    }

    // Scores, mask, online softmax.
    const int n0 = nb * kN;
    const bool full = n0 >= kb.full_lo && n0 + kN <= kb.full_hi;
#pragma unroll
    for (int t = 0; t < kR; ++t) softmax_step<kFolded>(acc_s[t], acc_o[t], st[t], vis[t], full, n0, score);

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kN / 16; ++kk) {
      uint32_t a[kR][4];
#pragma unroll
      for (int t = 0; t < kR; ++t) acc_to_a<T>(a[t], acc_s[t][2 * kk], acc_s[t][2 * kk + 1]);
#pragma unroll
      for (int dt = 0; dt < D / 16; ++dt) {
        uint32_t b[4];
        sV(stage).load_b_trans(b, dt * 16, kk * 16);
#pragma unroll
        for (int t = 0; t < kR; ++t) {
          mma_16816<T>(acc_o[t][2 * dt], a[t], b[0], b[1]);
          mma_16816<T>(acc_o[t][2 * dt + 1], a[t], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy may outlive the block (a tile with no visible key skips the loop)

  // Epilogue: O / l, lse = max + log(l); a row that saw no key gets 0 and -inf.
#pragma unroll
  for (int t = 0; t < kR; ++t) store_rows<T>(p, acc_o[t], st[t], row[t], rows, s.q_start + m0, h);
}

}  // namespace scree::cuda_attention

// Hopper (sm_90a) varlen attention forward: warp-specialised, TMA + mbarrier + wgmma.
// One thread block per (sequence, 128-query tile, query head), three warpgroups:
//  - producer (warpgroup 0, registers lowered to 24 with setmaxnreg): one thread issues TMA
//    loads of the Q tile and of K/V tiles of 128 keys into a 2-stage ring, each stage guarded by
//    a "full" mbarrier (transaction bytes) and an "empty" one (the 256 consumer threads arrive);
//  - two consumers (warpgroups 1, 2, registers raised to 240), 64 query rows each:
//    S = Q K^T with wgmma from shared memory (both K-major, 128-byte swizzle as TMA wrote them),
//    the online softmax of online_softmax.cuh on the accumulators, then O += P V with P from
//    registers and V from shared memory (transposed descriptor).
// Rows past a sequence's end read the next sequence's tokens (or TMA's zero fill past the tensor):
// keys there are masked, query rows there are computed and never stored.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../online_softmax.cuh"
#include "../scores.cuh"
#include "../smem_tile.cuh"
#include "../varlen_tile.cuh"
#include "ptx.cuh"
#include "wgmma.cuh"

namespace scree::cuda_attention::sm90 {

template <int D>
struct FwdTiles {
  static constexpr int kBlockM = 128;  // 2 consumer warpgroups x 64 rows
  static constexpr int kBlockN = 128;  // S is 64 x 128 per warpgroup: 64 fp32 registers a thread
  static constexpr int kStages = 2;
  static constexpr int kThreads = 384;
  static constexpr int kSlabBytesQ = kBlockM * 128;   // one 64-column slab of the Q tile
  static constexpr int kSlabBytesKV = kBlockN * 128;  // one 64-column slab of a K or V tile
  static constexpr int kQBytes = kBlockM * D * 2;
  static constexpr int kKVBytes = kBlockN * D * 2;
  // Shared memory: Q + stages x (K + V) + barriers, plus 1 KiB to align the base to 1024 bytes
  // (the 128-byte swizzle atom): D = 128: 32 + 2 x 64 = 160 KiB; D = 64: 16 + 2 x 32 = 80 KiB.
  static constexpr int kBarrierBytes = 8 * (1 + 2 * kStages);
  static constexpr int kSmemBytes = kQBytes + kStages * 2 * kKVBytes + kBarrierBytes + 1024;
};

template <class T, int D>
__global__ void __launch_bounds__(384, 1)
    varlen_fwd_sm90_kernel(const VarlenParams p, const ScoreMap score, const __grid_constant__ CUtensorMap tm_q,
                           const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v) {
  using Tiles = FwdTiles<D>;
  constexpr int kM = Tiles::kBlockM, kN = Tiles::kBlockN, kStages = Tiles::kStages;
  extern __shared__ char smem_raw[];
  char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  char* sQ = smem;
  auto sK = [&](int stage) { return smem + Tiles::kQBytes + stage * 2 * Tiles::kKVBytes; };
  auto sV = [&](int stage) { return smem + Tiles::kQBytes + stage * 2 * Tiles::kKVBytes + Tiles::kKVBytes; };
  uint64_t* bar_q = reinterpret_cast<uint64_t*>(smem + Tiles::kQBytes + kStages * 2 * Tiles::kKVBytes);
  uint64_t* full = bar_q + 1;
  uint64_t* empty = bar_q + 1 + kStages;

  const SeqTile s = sequence(p, blockIdx.x);
  const int m0 = int(blockIdx.y) * kM;
  if (m0 >= s.q_len) return;  // the whole block leaves before any barrier exists
  const int h = int(blockIdx.z);
  const int hk = h / int(p.heads_q / p.heads_k);
  const int rows = min(kM, s.q_len - m0);
  const KeyBlocks kb = key_blocks<kN>(p, s, m0, rows);

  if (threadIdx.x == 0) {
    mbar_init(bar_q, 1);
    for (int i = 0; i < kStages; ++i) mbar_init(&full[i], 1), mbar_init(&empty[i], 256);
    fence_barrier_init();
  }
  __syncthreads();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<24>();
    if (threadIdx.x == 0) {
      mbar_arrive_expect_tx(bar_q, Tiles::kQBytes);
#pragma unroll
      for (int slab = 0; slab < D / 64; ++slab)
        tma_load_3d(sQ + slab * Tiles::kSlabBytesQ, &tm_q, slab * 64, h, int(s.q_start + m0), bar_q);
      for (int nb = kb.begin, i = 0; nb < kb.end; ++nb, ++i) {
        const int stage = i % kStages;
        if (i >= kStages) mbar_wait(&empty[stage], ((i / kStages) & 1) ^ 1);  // consumers freed it
        mbar_arrive_expect_tx(&full[stage], 2 * Tiles::kKVBytes);
        const int row = int(s.k_start) + nb * kN;
#pragma unroll
        for (int slab = 0; slab < D / 64; ++slab) {
          tma_load_3d(sK(stage) + slab * Tiles::kSlabBytesKV, &tm_k, slab * 64, hk, row, &full[stage]);
          tma_load_3d(sV(stage) + slab * Tiles::kSlabBytesKV, &tm_v, slab * 64, hk, row, &full[stage]);
        }
      }
    }
  } else {
    setmaxnreg_inc<240>();
    const int cw = wg - 1;  // this warpgroup's rows: [64 cw, 64 cw + 64) of the tile
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    int row[2];
    KeyRange vis[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row[r] = 64 * cw + 16 * warp + lane / 4 + 8 * r;
      vis[r] = visible_keys(p, m0 + min(row[r], rows - 1), s.q_len, s.k_len);
    }
    float o[D / 8][4], sacc[kN / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
#pragma unroll
    for (int i = 0; i < kN / 8; ++i) sacc[i][0] = sacc[i][1] = sacc[i][2] = sacc[i][3] = 0.f;
    RowState st;
    const uint32_t q_base = smem_u32(sQ) + 64 * cw * 128;

    mbar_wait(bar_q, 0);
    for (int nb = kb.begin, i = 0; nb < kb.end; ++nb, ++i) {
      const int stage = i % kStages;
      mbar_wait(&full[stage], (i / kStages) & 1);

      // S = Q K^T: D / 16 steps of k = 16 (4 per 64-column slab, 32 bytes apart).
      const uint32_t k_base = smem_u32(sK(stage));
      fence_regs(sacc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t off_q = (kk / 4) * Tiles::kSlabBytesQ + (kk % 4) * 32;
        const uint32_t off_k = (kk / 4) * Tiles::kSlabBytesKV + (kk % 4) * 32;
        wgmma_ss<kN, T>(sacc, desc_sw128(q_base + off_q, 16, 1024), desc_sw128(k_base + off_k, 16, 1024),
                        kk > 0 ? 1 : 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(sacc);

      const int n0 = nb * kN;
      const bool full_tile = n0 >= kb.full_lo && n0 + kN <= kb.full_hi;
      softmax_step(sacc, o, st, vis, full_tile, n0, score);

      // O += P V: kN / 16 steps of 16 keys (2048 bytes apart in the V tile).
      // P is packed to 16 bits for all steps before the fence: registers an in-flight wgmma reads
      // must not be written (ptxas would otherwise insert a wait before each step, warning C7519).
      const uint32_t v_base = smem_u32(sV(stage));
      uint32_t a[kN / 16][4];
#pragma unroll
      for (int j = 0; j < kN / 16; ++j) acc_to_a<T>(a[j], sacc[2 * j], sacc[2 * j + 1]);
      fence_regs(o);
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < kN / 16; ++j)
        wgmma_rs_tb<D, T>(o, a[j], desc_sw128(v_base + j * 2048, Tiles::kSlabBytesKV, 1024), 1);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(o);
      mbar_arrive(&empty[stage]);
    }
    store_rows<T>(p, o, st, row, rows, s.q_start + m0, h);
  }
}

}  // namespace scree::cuda_attention::sm90

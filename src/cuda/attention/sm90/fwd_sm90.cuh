// Hopper (sm_90a) varlen attention forward: warp-specialised, TMA + mbarrier + wgmma.
// A persistent grid (one CTA per SM) working through (sequence, 128- or 192-query tile, query head) tiles
// longest first (tile_scheduler.cuh), or, over short sequences, through the device-computed packed
// tiles of tile_packing.cuh (several sequences a tile, each row masked to its own keys), or, for
// GQA calls with few queries against many keys, through head-grouped tiles (head_group_tiles.h:
// a KV head's query heads for 128 / G tokens a tile); three or four warpgroups:
//  - producer (warpgroup 0, registers lowered to 40 with setmaxnreg, 56 over pages, 32 beside three
//    consumers): one thread issues TMA
//    loads of the Q tile and of K/V tiles of 128 keys into a 3- or 4-stage ring, each guarded by
//    a "full" mbarrier (transaction bytes) and an "empty" one (every consumer thread arrives);
//  - two consumers (warpgroups 1, 2, registers raised to 232, 224 over pages), 64 query rows each,
//    or three (192-row tiles at D = 64, registers 160; FwdTiles):
//    S = Q K^T with wgmma from shared memory (both K-major, 128-byte swizzle as TMA wrote them),
//    the online softmax of online_softmax.cuh on the accumulators, then O += P V with P from
//    registers and V from shared memory (transposed descriptor); S of the next key block and
//    P V of the previous one are in flight together while the softmax runs.
// Rows past a sequence's end read the next sequence's tokens (or TMA's zero fill past the tensor):
// keys there are masked, query rows there are computed and never stored.
// kKv (KvSource): keys and values from packed rows, or from a paged KV cache through the page
// table, by TMA for pages of a multiple of 128 tokens (paged_tma.cuh) and by cp.async from the
// whole producer warpgroup otherwise (paged_copy.cuh); VarlenParams::paged; cu_seqlens_k then only
// gives each sequence's cached length.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../fragment.cuh"
#include "../online_softmax.cuh"
#include "../scores.cuh"
#include "../varlen_tile.cuh"
#include "named_barrier.cuh"
#include "paged_copy.cuh"
#include "paged_tma.cuh"
#include "pipeline.cuh"
#include "ptx.cuh"
#include "staged_rows.cuh"
#include "sequence_rank.cuh"
#include "tile_packing.cuh"
#include "tile_scheduler.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

// K/V ring depth: 0 = as many as fit (FwdTiles, at most 4); other values for experiments.
// Measured on an H200 (benchmarks/NOTES.md): 3 stages instead of 2 at D = 128 took mix d128 from
// 288 to 349 TFLOP/s.
#ifndef SCREE_SM90_STAGES
#define SCREE_SM90_STAGES 0
#endif
#ifndef SCREE_SM90_PINGPONG
#define SCREE_SM90_PINGPONG 1
#endif

namespace scree::cuda_attention::sm90 {

// M: query rows a tile, 64 a consumer warpgroup. 128 (2 warpgroups) everywhere but at D = 64 over
// per-sequence tiles of packed K/V, which take 192 (3 warpgroups, 512 threads: FA-3's and FA-4's
// D = 64 tile; a step's products are half D = 128's while its softmax is as long, so a third
// warpgroup's products fill the tensor cores while two run their softmax; the choice: fwd_rows.h).
template <int D, int M = 128>
struct FwdTiles {
  static constexpr int kBlockM = M;
  static constexpr int kConsumerGroups = M / 64;
  static_assert(M == 128 || (M == 192 && D == 64), "192-row tiles only at D = 64 (shared memory, registers)");
  // S is 64 x 128 per warpgroup: 64 fp32 registers a thread. 176 keys (FA-3's choice at D = 128,
  // which leaves room for 2 stages) measured 25% slower on an H200 (NOTES.md).
  static constexpr int kBlockN = 128;
  static constexpr int kThreads = 128 * (1 + kConsumerGroups);
  static constexpr int kConsumerThreads = 128 * kConsumerGroups;
  static constexpr int kSlabBytesQ = kBlockM * 128;   // one 64-column slab of the Q tile
  static constexpr int kSlabBytesKV = kBlockN * 128;  // one 64-column slab of a K or V tile
  static constexpr int kQBytes = kBlockM * D * 2;
  static constexpr int kKVBytes = kBlockN * D * 2;
  // K/V ring depth: as many stages as the 227 KiB opt-in limit takes, at most 4. D = 128: Q 32 KiB
  // + 3 x 64 KiB = 224 KiB; D = 64: Q 16 (24) KiB + 4 x 32 KiB = 144 (152) KiB.
  static constexpr int kSmemLimit = 227 * 1024;
  // The epilogue's own staging buffer (16 rows x 128 bytes a consumer warp) where shared memory has
  // room for it beside the ring's 4 stages: D = 64 (at D = 128, 3 stages leave 1 KiB).
  static constexpr int kOStageBytes = D == 64 ? kBlockM * 128 : 0;
  static constexpr int kFitStages = (kSmemLimit - 2048 - kQBytes - kOStageBytes) / (2 * kKVBytes);
  static constexpr int kStages = SCREE_SM90_STAGES > 0 ? SCREE_SM90_STAGES : (kFitStages < 4 ? kFitStages : 4);
};

// A tile's index math, done once by the producer and published with the tile (shared memory) so
// that the consumers start on it without a global-memory round trip. A packed tile (sequences
// [b, end), end > b + 1) spans its sequences in s; each row finds its own sequence's keys
// (packed_rows_keys), and no key block is unmasked. A head-grouped tile (kGrouped): row i is token
// m0 + i / G of query head h + i % G, rows = G x its tokens.
struct FwdTile {
  SeqTile s;
  int64_t b, end;  // the sequence (the first of a packed tile's, and past its last)
  int m0, rows, h, hk;
  KeyBlocks kb;
  __device__ __forceinline__ bool packed() const { return end - b > 1; }
  __device__ __forceinline__ PackedTileGeometry geometry() const { return {s, m0, b, end}; }
};

// The forward's shared memory, 1024-byte aligned tiles (the 128-byte swizzle atom) first.
template <int D, int M = 128>
struct FwdSmem {
  using Tiles = FwdTiles<D, M>;
  static constexpr int kStages = Tiles::kStages;
  static constexpr int kOStageBytes = Tiles::kOStageBytes;
  alignas(1024) char q[Tiles::kQBytes];
  struct Stage {
    alignas(1024) char k[Tiles::kKVBytes];
    alignas(1024) char v[Tiles::kKVBytes];
  } kv[kStages];
  alignas(128) char o_stage[kOStageBytes > 0 ? kOStageBytes : 1];  // 2 KB a consumer warp
  uint64_t q_full;   // the producer published a tile and its Q is loading
  uint64_t q_empty;  // the consumers are done reading the Q tile (and its slot)
  MbarRing<kStages> ring;
  TileSlots<> tiles;
  long long producer_tile[2];  // KvSource::kPagesCopy: the next tile, for the producer's four warps
  FwdTile tile[2];             // tile j's geometry in slot j % 2, as the producer computed it
};
template <int D, int M = 128>
inline constexpr int kFwdSmemBytes = smem_bytes<FwdSmem<D, M>>();
static_assert(kGroupRows == FwdTiles<128>::kBlockM, "head-grouped tiles fill the forward's query tile");

// kFolded: ScoreMap::folds() (no softcap, scale > 0), see online_softmax.cuh. kGrouped: head-grouped
// tiles (head_group_tiles.h; G = order.group), instances of their own: as a run-time switch in one
// kernel the grouped paths cost the others 1-3% (tiny and short forwards, H100, NOTES.md).
// M: the tile's query rows (FwdTiles; 192 only for per-sequence tiles of packed K/V at D = 64).
// kTurns: the consumer warpgroups take turns to issue their products (below).
template <class T, int D, bool kFolded, KvSource kKv, bool kGrouped, int M = 128, bool kTurns = (D > 64 || kKv != KvSource::kPacked)>
__global__ void __launch_bounds__(FwdTiles<D, M>::kThreads, 1)
    varlen_fwd_sm90_kernel(const VarlenParams p, const ScoreMap score, const TileOrder host_order,
                           unsigned long long* tile_counter,
                           const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                           const __grid_constant__ CUtensorMap tm_v) {
  using Tiles = FwdTiles<D, M>;
  using Smem = FwdSmem<D, M>;
  constexpr int kM = Tiles::kBlockM, kN = Tiles::kBlockN, kStages = Tiles::kStages;
  constexpr int kGroups = Tiles::kConsumerGroups, kConsumers = Tiles::kConsumerThreads;
  constexpr bool kPaged = kKv != KvSource::kPacked, kCopy = kKv == KvSource::kPagesCopy;
  static_assert(M == 128 || (!kPaged && !kGrouped), "192-row tiles only over packed K/V, one head a tile");
  // Turns (below) by default at D = 128, and over pages (not measured without them). At D = 64 on
  // two warpgroups a step's products are half as long, and the turns' waits cost more than the
  // overlap gives: without them mix d64 forward 1.709-1.718 -> 1.651-1.664 ms, short d64
  // 0.424-0.425 -> 0.407-0.410, tiny d64 0.313 -> 0.294-0.299; at D = 128 they pay (eq2048 d128
  // 345 -> 376 TFLOP/s; H200, NOTES.md).
  constexpr bool kPingpong = SCREE_SM90_PINGPONG != 0 && kTurns;
  // Where shared memory has room (D = 64), the epilogue's output rows go through it
  // (FwdSmem::o_stage, staged_rows.cuh): 16 rows a warp, stmatrix and 16-byte stores of whole
  // 128-byte row segments, instead of the quad's shuffles and selects (store_rows). Measured on an
  // H200 (NOTES.md): tiny d64 0.274-0.278 -> 0.265 ms; at D = 128, staged in the K block of the
  // tile's last stage (no room for a buffer beside 3 stages, and a barrier between the two
  // warpgroups), tiny d128 did not move.
  constexpr bool kStaged = Smem::kOStageBytes > 0;
  // Registers a thread (setmaxnreg; 128 x producer + 128 x groups x consumer <= 64K): the paged producers
  // get 56, for the page-table walk and, with cp.async, the row offsets (at 40 they spilled 80-92
  // bytes); the consumers fit 224 without spilling. Measured on an H200 (NOTES.md): 16-token pages
  // by cp.async 0.275 -> 0.256 ms at 4 x (4096 + 512), while the packed forward kept 40 / 232 (224
  // cost it ~4% at 16 x (2048 + 256)). The launch holds 168 a thread (384 threads, one CTA an SM):
  // a setmaxnreg.inc past what the others freed waits forever (48 / 232 hung every call).
  // Three consumer warpgroups (M = 192, 512 threads: 128 a thread at launch) take FA-3's 32 / 160.
  constexpr int kProducerRegs = kGroups == 3 ? 32 : kPaged ? 56 : 40;
  constexpr int kConsumerRegs = kGroups == 3 ? 160 : kPaged ? 224 : 232;
  constexpr int kLaunchRegs = 65536 / Tiles::kThreads / 8 * 8;
  static_assert(128 * kProducerRegs + kConsumers * kConsumerRegs <= Tiles::kThreads * kLaunchRegs,
                "setmaxnreg past the launch's registers");
  extern __shared__ char smem_raw[];
  Smem& sm = aligned_smem<Smem>(smem_raw);
  const int group = kGrouped ? host_order.group : 1;
  const int tile_tokens = kM / group;  // a tile's tokens (kM unless head-grouped)
  const TileOrder order = host_order.packed != nullptr
                              ? bounded_by_device_count(host_order)
                              : bounded_by_device_max(host_order, p.max_seqlen_q_device, tile_tokens);

  if (threadIdx.x == 0) {
    mbar_init(&sm.q_full, 1);
    mbar_init(&sm.q_empty, kConsumers);
    sm.ring.init(kConsumers, kCopy ? 128 : 1);
    fence_barrier_init();
  }
  __syncthreads();

  // The producer finds the next non-empty tile and publishes its index and geometry (FwdTile). The
  // K/V ring's PipelineState walks the key blocks of all of a CTA's tiles, `j` its tiles (Q's phase).
  using Tile = FwdTile;
  auto tile_at = [&](int64_t t, Tile& x) {
    int m_tile;
    if (kGrouped && order.rank != nullptr) {
      order.at_ranked(t, x.b, m_tile, x.h);
    } else {
      order.at(t, x.b, m_tile, x.h);
    }
    if constexpr (kGrouped) {  // the order's heads are KV heads
      x.hk = x.h;
      x.h *= group;
    } else {
      x.hk = x.h / int(p.heads_q / p.heads_k);
    }
    if (!kPaged && !kGrouped && M == 128 && order.packed != nullptr) {  // (the host packs only these calls)
      const PackedTileGeometry g = packed_tile(p, order.packed[x.b]);
      x.s = g.s, x.m0 = g.m0, x.b = g.first, x.end = g.end;
      if (x.packed()) {
        x.rows = x.s.q_len;
        if (x.rows == 0) return false;
        const KeyRange first = packed_row_keys(p, g, 0), last = packed_row_keys(p, g, x.rows - 1);
        x.kb.begin = int(first.lo) / kN;
        x.kb.end = last.hi > first.lo ? int((last.hi + kN - 1) / kN) : x.kb.begin;
        x.kb.full_lo = INT32_MAX, x.kb.full_hi = 0;  // rows of different sequences: every block masked
        return true;
      }
    } else {
      x.s = sequence(p, x.b);
      x.m0 = m_tile * tile_tokens;
      x.end = x.b + 1;
    }
    if (x.m0 >= x.s.q_len) return false;
    const int tokens = min(tile_tokens, x.s.q_len - x.m0);
    x.rows = tokens * group;
    x.kb = key_blocks<kN>(p, x.s, x.m0, tokens);
    return true;
  };
  const int64_t tiles = order.count();

  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    setmaxnreg_dec<kProducerRegs>();
    // One thread drives the loads. Pages by TMA take the whole warp, a lane per page box of a key
    // block (paged_tma.cuh): one thread issuing the 32 boxes of a block and waiting for its page
    // ids kept the tensor cores at 177 of 621 TFLOP/s on an H200 (benchmarks/NOTES.md). Pages by
    // cp.async take the whole warpgroup (paged_copy.cuh); its thread 0 still schedules and loads Q.
    constexpr int kLanes = kCopy ? 128 : kPaged ? 32 : 1;
    constexpr unsigned kMask = kPaged ? 0xffffffffu : 1u;
    if (threadIdx.x < kLanes) {
      const bool leader = threadIdx.x == 0;
      const TileCounter counter{tile_counter};
      int calls = 0;
      auto next_tile = [&] {  // the leader's atomic, the same index in every thread
        long long n = 0;
        if (leader) n = counter.next();
        if constexpr (kCopy) {  // four warps: through shared memory, a slot per parity of the call
          if (leader) sm.producer_tile[calls & 1] = n;
          named_sync(NamedBarrier::kFwdProducerTile, 128);
          n = sm.producer_tile[calls & 1];
          ++calls;
        } else {
          n = __shfl_sync(kMask, n, 0);
        }
        return int64_t(n);
      };
      PipelineState<kStages> kv = MbarRing<kStages>::producer_start();
      [[maybe_unused]] const PagedCopyMode mode = kCopy ? PagedCopyMode::of(p, D) : PagedCopyMode{};
      int64_t t = counter.first(), reserved = 0;
      for (int j = 0;; ++j) {
        if (j > 0) t = reserved;
        Tile x;
        bool found = false;
        while (t < tiles && !(found = tile_at(t, x))) t = next_tile();
        // Tile j's geometry into slot j % 2 before waiting for the consumers: they read that slot
        // last at the start of tile j - 2, whose products all finished (q_empty, waited at tile j - 1).
        if (found && leader) sm.tile[j & 1] = x;
        if (j > 0) mbar_wait(&sm.q_empty, (j - 1) & 1);  // the previous tile's Q (and its slot) is no longer read
        if (leader) sm.tiles.publish(j, found ? t : -1);  // published by the arrive below (release semantics)
        if (!found) {
          if (leader) mbar_arrive(&sm.q_full);  // completes the phase with no bytes: the consumers read -1 and stop
          break;
        }
        if (leader && kGrouped) {  // one box of the group's heads a slab (tma.cuh: tensor_map_head_groups)
          mbar_arrive_expect_tx(&sm.q_full, group * tile_tokens * D * int(sizeof(T)));
#pragma unroll
          for (int sl = 0; sl < D / 64; ++sl)
            tma_load_4d(sm.q + sl * Tiles::kSlabBytesQ, &tm_q, sl * 64, 0, x.hk, int(x.s.q_start + x.m0), &sm.q_full);
        } else if (leader) {
          mbar_arrive_expect_tx(&sm.q_full, Tiles::kQBytes);
          tma_load_slabs<D>(sm.q, Tiles::kSlabBytesQ, &tm_q, x.h, int(x.s.q_start + x.m0), &sm.q_full);
        }
        // Reserve the next tile now, so that the counter's round trip and the next tile's offsets
        // (read above, before the q_empty wait) overlap this tile's loads instead of sitting between
        // two tiles: a short sequence's tile lasts only a few microseconds.
        reserved = next_tile();
        const int lane = int(threadIdx.x);
        if constexpr (kCopy) {
          // Each thread's own row offsets, read one block ahead (in flight during the wait below).
          PagedRowOffsets own_next;
          if (x.kb.begin < x.kb.end) own_next = paged_own_row<T, kN>(p, x.b, x.kb.begin, x.s.k_len, x.hk, lane);
          for (int nb = x.kb.begin; nb < x.kb.end; ++nb, kv.advance()) {
            const PagedRowOffsets own = own_next;
            if (nb + 1 < x.kb.end) own_next = paged_own_row<T, kN>(p, x.b, nb + 1, x.s.k_len, x.hk, lane);
            sm.ring.wait_empty(kv);
            typename Smem::Stage& st = sm.kv[kv.index];
            copy_paged_block<D, kN>(p, mode, own, x.s.k_len - nb * kN - lane / 8, lane, st.k, st.v);
            cp_async_mbar_arrive_noinc(sm.ring.full_bar(kv));
          }
        } else {
          int page_next = kPaged && x.kb.begin < x.kb.end ? paged_block_page<kN>(p, x.b, x.kb.begin, x.s.k_len, lane) : 0;
          for (int nb = x.kb.begin; nb < x.kb.end; ++nb, kv.advance()) {
            const int page = page_next;  // paged: read one block ahead, in flight during the wait below
            if (kPaged && nb + 1 < x.kb.end) page_next = paged_block_page<kN>(p, x.b, nb + 1, x.s.k_len, lane);
            if (leader) sm.ring.acquire(kv, 2 * Tiles::kKVBytes);
            __syncwarp(kMask);  // no lane loads into the stage before it is free
            typename Smem::Stage& st = sm.kv[kv.index];
            if constexpr (kPaged) {
              tma_load_paged_block<D, kN>(p, nb, page, x.hk, lane, st.k, st.v, &tm_k, &tm_v, sm.ring.full_bar(kv));
            } else {
              const int row = int(x.s.k_start) + nb * kN;
              tma_load_slabs<D>(st.k, Tiles::kSlabBytesKV, &tm_k, x.hk, row, sm.ring.full_bar(kv));
              tma_load_slabs<D>(st.v, Tiles::kSlabBytesKV, &tm_v, x.hk, row, sm.ring.full_bar(kv));
            }
          }
        }
      }
      if constexpr (kCopy) cp_async_drain();  // no copy outlives its thread
      if (leader) reset_counter_when_last(tile_counter);  // after its last next_tile()
    }
  } else {
    setmaxnreg_inc<kConsumerRegs>();
    const int cw = wg - 1;  // this warpgroup's rows: [64 cw, 64 cw + 64) of the tile, cw < kGroups
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const uint32_t q_base = smem_u32(sm.q) + 64 * cw * 128;
    float o[D / 8][4], sacc[kN / 8][4];
    uint32_t pa[kN / 16][4];
#pragma unroll
    for (int i = 0; i < kN / 8; ++i) sacc[i][0] = sacc[i][1] = sacc[i][2] = sacc[i][3] = 0.f;

    auto issue_s = [&](int stage) {
      const SmemDesc desc_q = SmemDesc::sw128(q_base, 16, 1024);
      const SmemDesc desc_k = SmemDesc::sw128(smem_u32(sm.kv[stage].k), 16, 1024);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t off_q = (kk / 4) * Tiles::kSlabBytesQ + (kk % 4) * 32;
        const uint32_t off_k = (kk / 4) * Tiles::kSlabBytesKV + (kk % 4) * 32;
        wgmma_ss<kN, T>(sacc, desc_q.at(off_q), desc_k.at(off_k), kk > 0 ? 1 : 0);
      }
      wgmma_commit();
    };
    auto issue_pv = [&](int stage) {
      const SmemDesc desc_v = SmemDesc::sw128(smem_u32(sm.kv[stage].v), Tiles::kSlabBytesKV, 1024);
#pragma unroll
      for (int i = 0; i < kN / 16; ++i) wgmma_rs_tb<D, T>(o, pa[i], desc_v.at(i * 2048), 1);
      wgmma_commit();
    };
    auto pack_p = [&] {
#pragma unroll
      for (int i = 0; i < kN / 16; ++i) acc_to_a<T>(pa[i], sacc[2 * i], sacc[2 * i + 1]);
    };
    // Every consumer thread arrives on the stage's "empty" barrier once its reads are done (one
    // arrival per warp after __syncwarp measured slower on an H200: mix d128 288 vs 339 TFLOP/s).

    // Turns (SCREE_SM90_PINGPONG): the consumer warpgroups take turns, round robin, to issue their
    // products (fwd_turn(cw) is "my turn"), so that one's softmax runs while another's products
    // occupy the tensor cores instead of all hitting their softmax at once. Each issue phase waits
    // for its turn and hands the turn to the next warpgroup; the last hands warpgroup 0 the first.
    // All walk the same tiles and key blocks, so their issue phases pair up. Measured on an H200
    // with two warpgroups (NOTES.md): eq2048 d128 345 -> 376 TFLOP/s, mix d128 328 -> 319, others
    // within 3%.
    auto my_turn = [&] {
      if (kPingpong) named_sync(fwd_turn(cw), 256);
    };
    auto their_turn = [&] {
      if (kPingpong) named_arrive(fwd_turn((cw + 1) % kGroups), 256);
    };
    if (kPingpong && cw == kGroups - 1) named_arrive(fwd_turn(0), 256);
    const bool out_vector = rows_16b(p.out, p.out_row_stride, p.out_head_stride);

    PipelineState<kStages> kv;
    for (int j = 0;; ++j) {
      mbar_wait(&sm.q_full, j & 1);  // the producer published tile j (and started loading its Q)
      if (sm.tiles.read(j) < 0) break;
      const Tile x = sm.tile[j & 1];  // non-empty: the producer skipped the others
      int row[2];
      KeyRange vis[2];
      int live_row[2];  // rows past the tile's end take its last row's keys
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        row[r] = 64 * cw + 16 * warp + lane / 4 + 8 * r;
        live_row[r] = min(row[r], x.rows - 1);
      }
      if (M == 128 && x.packed()) {
        packed_rows_keys(p, x.geometry(), live_row, vis);
      } else {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int token = kGrouped ? live_row[r] / group : live_row[r];
          vis[r] = visible_keys(p, x.m0 + token, x.s.q_len, x.s.k_len);
        }
      }
#pragma unroll
      for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
      RowState st;
      auto is_full = [&](int nb) { return nb * kN >= x.kb.full_lo && nb * kN + kN <= x.kb.full_hi; };

      // Intra-warpgroup overlap: while the softmax of key block i runs on the CUDA cores, the
      // tensor cores finish O += P(i-1) V(i-1); S(i) = Q K(i)^T is issued together with it.
      // Invariant at the top of step i: O holds sum_{j <= i-2} P(j) V(j) against max m(i-1), and
      // pa holds P(i-1) against m(i-1). Q is released once the tile's last S is done, so the
      // producer loads the next tile's Q while this one finishes.
      const int blocks = x.kb.end - x.kb.begin;
      float alpha[2];
      RowTotals totals;  // the rows' sums, for the epilogue
      int prev = 0;  // the stage of key block i - 1
      if (blocks == 0) mbar_arrive(&sm.q_empty);
      if (blocks > 0) {
        sm.ring.wait(kv);
        if constexpr (kCopy) fence_proxy_async_smem();  // cp.async wrote the stage (generic proxy); wgmma reads it
        fence_regs(sacc);
        my_turn();
        wgmma_fence();
        issue_s(kv.index);
        their_turn();
        wgmma_wait<0>();
        fence_regs(sacc);
        if (blocks == 1) mbar_arrive(&sm.q_empty);
        softmax_scores<kFolded>(sacc, st, vis, is_full(x.kb.begin), x.kb.begin * kN, score, alpha);  // O is still 0
        pack_p();
        prev = kv.index;
        kv.advance();
      }
      for (int i = 1; i < blocks; ++i, kv.advance()) {
        const int nb = x.kb.begin + i;
        sm.ring.wait(kv);
        if constexpr (kCopy) fence_proxy_async_smem();  // cp.async wrote the stage (generic proxy); wgmma reads it
        fence_regs(sacc);
        fence_regs(o);
        my_turn();
        wgmma_fence();
        issue_s(kv.index);
        issue_pv(prev);
        their_turn();
        wgmma_wait<1>();  // S(i) is done (groups complete in order); P(i-1) V(i-1) may still run
        fence_regs(sacc);
        if (i == blocks - 1) mbar_arrive(&sm.q_empty);
        const bool moved = softmax_scores<kFolded>(sacc, st, vis, is_full(nb), nb * kN, score, alpha);
        wgmma_wait<0>();
        fence_regs(o);
        sm.ring.release(prev);
        if (moved) rescale(o, alpha);
        pack_p();
        prev = kv.index;
      }
      if (blocks > 0) {
        if constexpr (kKv == KvSource::kPagesTma) {
          // The last block holds the sequence's end when it reaches past it: its V rows from the end
          // to the end of that page are the page's leftovers (paged_tma.cuh).
          const int n0 = (x.kb.end - 1) * kN, ps = int(p.page_size);
          if (n0 + kN > x.s.k_len && x.s.k_len % ps != 0) {
            const int page_end = (x.s.k_len / ps + 1) * ps;
            zero_rows_past_end<D, kN>(sm.kv[prev].v, x.s.k_len - n0, min(kN, page_end - n0), int(threadIdx.x) % 128,
                                      NamedBarrier::kFwdPagedTail0 + cw);
          }
        }
        fence_regs(o);
        my_turn();
        wgmma_fence();
        issue_pv(prev);
        their_turn();
        totals = row_totals(st);  // while the last P V runs
        wgmma_wait<0>();
        fence_regs(o);
        sm.ring.release(prev);
      } else {
        totals = row_totals(st);
      }
      if constexpr (kGrouped) {
        store_grouped_rows<T>(p, o, st, totals, row, x.rows, x.s.q_start + x.m0, x.h, group);
      } else if constexpr (kStaged) {
        const int row0 = 64 * cw + 16 * warp;  // this warp's 16 rows and 2 KB of the stage
        T* out = static_cast<T*>(p.out) + (x.s.q_start + x.m0 + row0) * p.out_row_stride + x.h * p.out_head_stride;
        store_rows_staged<T>(o, totals.inv, sm.o_stage + row0 * 128, out, p.out_row_stride, x.rows - row0, out_vector);
        store_lse(p, st, totals, row, x.rows, x.s.q_start + x.m0, x.h);
      } else {
        store_rows<T>(p, o, st, totals, row, x.rows, x.s.q_start + x.m0, x.h);
      }
    }
  }
}

}  // namespace scree::cuda_attention::sm90

// Hopper (sm_90a) varlen attention backward: warp-specialised, TMA + mbarrier + wgmma, composed
// from the parts the forward uses (pipeline.cuh, tile_scheduler.cuh, tma.cuh, named_barrier.cuh).
// A persistent grid works through key tiles (sequence, 128 keys, kv head), costliest first (the
// orders and where each is used: TileOrder, tile_scheduler.cuh); each CTA
// keeps its tile's K and V in shared memory and walks every (query head of the GQA group, query
// block) that sees them, so dK and dV of the whole group are summed in registers (no atomics):
//  - producer (warpgroup 0, 24 registers): one thread publishes each tile decoded (the consumers
//    do no index math of the order), loads its K and V once (separate barriers: V lands while the
//    first S^T runs) and Q, dO, lse, delta of each query block into a 2-stage ring (TMA,
//    transaction-counted mbarriers), and prefetches the next tile's K, V, Q, dO into L2; lane 0 of
//    warps 1 and 2 are the dQ writers of consumers 0 and 1 (dq_writer.cuh);
//  - two consumers (warpgroups 1, 2, 240 registers), 64 keys each, per query block (a step):
//      S^T = K Q^T and dP^T = V dO^T (wgmma, both operands from shared memory),
//      P^T = exp2(S^T log2(e) scale - lse2), dS^T = P^T (dP^T - delta) [(1 - tanh^2) with softcap],
//      dV += P^T dO and dK += dS^T Q with P and dS in registers (A operands),
//      dS^T to shared memory (two buffers), then dQ (64 x 64 per warpgroup) = dS K from shared
//      memory, staged in shared memory as fp32 for the warpgroup's writer, which adds it to the
//      fp32 accumulator in global memory by TMA reduce-adds (two 64 x 32 boxes). With 80 queries a
//      step (BwdTiles, M = 80): dS stored query-major in two buffers, dQ^T = K^T dS^T, 80 x 32 boxes.
//    Software pipelined: a step's S^T is issued behind the last step's dQ, which is staged once
//    both are done, while dP^T runs; each consumer waits once a step for the other's half of dS^T.
//    After a tile's last step, dK and dV leave through shared memory (staged_rows.cuh).
// The score scale is left out of dS (one multiply less per score): dK is scaled in the epilogue,
// dQ by the postprocess. Deterministic mode orders the dQ additions of the key tiles of one query
// block by the schedule (dq_writer.cuh: a per-block counter in global memory, waited on and
// released by the writers, off the consumers' path), so the sums are the same bits on every
// run; where sequences are longer than 2048 keys its tile order puts tile indices outermost
// (TileOrder::tiles_outermost), so the tiles whose adds wait for each other run a wave apart.
// Rows past a sequence's end read the neighbours' tokens or TMA's zeros: their P and dS are set
// to 0 (a select, never a product, so non-finite neighbours cannot leak into P or dS).
// Packed key tiles (short sequences, tile_packing.cuh): a tile's 128 keys hold several whole
// sequences, its steps walk the query blocks spanning those sequences' queries, and each key row
// keeps only its own sequence's visible queries (packed_key_queries: a block-diagonal mask); such
// a tile is the only one adding to its queries' dQ, so deterministic mode waits for no other.
// Where every sequence's keys fit one key tile (dq_direct), no tile shares its queries with another:
// each step stores its dQ (times the score scale) straight into dq from registers, rows of other
// tiles' sequences left alone, with no fp32 accumulator, writer or postprocess; the preprocess
// zeroes the rows that saw no key. The accumulator costs ~1.1 GB of memory traffic at 32k tokens x
// 16 heads x 128 (zeroing 268 MB, reduce-adds reading and writing it, the postprocess reading it
// and writing dq), more than q, k, v, dO, dK and dV together (805 MB).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../bwd_workspace.h"
#include "../fragment.cuh"
#include "../online_softmax.cuh"
#include "../scores.cuh"
#include "../varlen_tile.cuh"
#include "dq_writer.cuh"
#include "named_barrier.cuh"
#include "pipeline.cuh"
#include "ptx.cuh"
#include "staged_rows.cuh"
#include "tile_packing.cuh"
#include "tile_scheduler.cuh"
#include "tma.cuh"
#include "wgmma.cuh"

namespace scree::cuda_attention::sm90 {

using attention::QueryRange;
using attention::VarlenBackwardParams;
using attention::visible_queries;

// M: queries per step (the default: 64 at D = 128, 128 at D = 64). Registers of a consumer thread:
// S^T and dP^T are 64 x M fp32 each, dK and dV 64 x D each, dQ 64 x 64 (64 x M transposed, below),
// and S^T, dP^T and dQ are never all live: D = 128 with 64 queries: 32 + 32 + 64 + 64 = 192 of
// 240 at the peak; D = 64 with 128 queries: 64 + 64 + 32 + 32 = 192; D = 128 with 80 queries
// (M = 80, FA-3's and FA-4's block for non-causal D = 128): 40 + 40 + 64 + 64 = 208.
// M = 80 is not a multiple of wgmma's 64 rows, so dQ is computed transposed, dQ^T = K^T dS^T
// (head dims on the rows, queries on N = 80), with dS stored query-major.
template <int D, int M = (D <= 64 ? 128 : 64)>
struct BwdTiles {
  static constexpr int kBlockN = 128;  // keys of a CTA tile: 2 consumer warpgroups x 64
  static constexpr int kBlockM = M;
  static constexpr bool kDqTransposed = M % 64 != 0;
  static_assert(!kDqTransposed || (D == 128 && M % 16 == 0), "transposed dQ: D = 128, 16-query k-steps");
  // The untransposed dQ covers 64 queries (D = 128) or 128 (D = 64, two warpgroups of 64) a step.
  static_assert(kDqTransposed || M == (D <= 64 ? 128 : 64), "untransposed dQ: 64 queries at D = 128, 128 at D = 64");
  // The order of a step's products (varlen_bwd_sm90_kernel's kDqFirst). At 80 queries, not
  // deterministic: S^T and dP^T back to back, and dQ before dK, so that the dQ is staged for its
  // writer while dK runs. Otherwise dK before dQ, whose dQ is staged at the next step, between S^T
  // and dP^T. H100, bwd ms, medians of 3 alternated runs on two machines, at 80 queries: eq2048
  // 2.93 -> 2.78 and 2.75 -> 2.72, eq8192 causal 5.58 -> 5.40 and 5.38 -> 5.21, mix 3.80 -> 3.76 and
  // 3.57 -> 3.50, mix causal 2.41 -> 2.40 and 2.22 -> 2.26. At 64 queries (short, short causal,
  // eq2048 causal) -4..+2%; at D = 64 (128 queries) -15..-19% (mix 4.71 -> 5.81). Deterministic runs
  // keep the other order: staging inside the step waits there for the writer, which waits for the
  // ordering counters (FA-4's order at 64 queries, H200: deterministic eq8192 causal 392 -> 327
  // TFLOP/s; design.md).
  static constexpr bool kDqBeforeDk = kDqTransposed;
  static constexpr int kThreads = 384;
  static constexpr int kStages = 2;  // of the Q / dO ring: two fit next to K, V, dS^T and dQ
  static constexpr int kSlabQ = kBlockM * 128;   // bytes of a 64-column slab of a Q or dO tile
  static constexpr int kSlabK = kBlockN * 128;   // of a K or V tile
  // A 64-column slab of dS^T (128 keys x 64 queries) or, transposed, of dS (M queries x 64 keys);
  // two alternating buffers, each of kDsSlabs slabs.
  static constexpr int kSlabDs = kDqTransposed ? kBlockM * 128 : kBlockN * 128;
  static constexpr int kDsSlabs = kDqTransposed ? kBlockN / 64 : kBlockM / 64;
  static constexpr int kQBytes = kBlockM * D * 2;
  static constexpr int kKBytes = kBlockN * D * 2;
  // The dQ tile of a warpgroup is kDqRows queries x 64 head dims: D = 128: all queries of the
  // block, head dims [64 w, 64 w + 64); D = 64: queries [64 w, 64 w + 64), every head dim. Staged as
  // two boxes of kDqRows rows x 32 fp32 (128-byte swizzled rows, so the accumulator stores of a
  // warp take the minimum two wavefronts).
  static constexpr int kDqRows = D <= 64 ? 64 : kBlockM;
  static constexpr int kDqBoxBytes = kDqRows * 128;
  // lse and delta of a query block come as a box of kRowBox floats starting at the block's first
  // token rounded down to a multiple of 4: TMA needs a 16-byte aligned start in the innermost
  // dimension (an unaligned one is an illegal instruction), and a block starts at any token.
  static constexpr int kRowBox = kBlockM + 4;
};

// A key tile: its sequence, first key n0 (and keys in it), kv head, and the query blocks
// [mb_begin, mb_end) that can see its keys; the steps walk them for each query head of the group.
// A packed tile (sequences [first, end), end > first + 1): s spans its sequences (k_len its keys,
// q_len its queries), n0 = 0, and every query block of the span is walked.
struct BwdTile {
  SeqTile s;
  int n_tile, n0, hk;
  int mb_begin, mb_blocks, steps;  // steps < 0: no tile is left (what the producer publishes last)
  int64_t first, end;
  __device__ __forceinline__ bool packed() const { return end - first > 1; }
};

template <int D, int M>
struct BwdSmem {
  using Tiles = BwdTiles<D, M>;
  alignas(1024) char k[Tiles::kKBytes];
  alignas(1024) char v[Tiles::kKBytes];
  struct RowBoxes {  // lse and delta of a stage's query block
    alignas(128) float lse2[Tiles::kRowBox];
    alignas(128) float delta[Tiles::kRowBox];
  };
  // At 64 queries a stage holds its lse and delta (padding it by 256 bytes); at 80 they sit apart
  // (`rows`): the two dS buffers fit in 227 KiB only without that padding and the packed offsets.
  // Moved apart at 64 queries too, the H100's mix causal backward took 2.19 -> 2.37 ms (3 runs).
  struct StageBare {
    alignas(1024) char q[Tiles::kQBytes];
    alignas(1024) char dout[Tiles::kQBytes];
  };
  struct StageWithRows : StageBare {
    RowBoxes rows;
  };
  using Stage = std::conditional_t<Tiles::kDqTransposed, StageBare, StageWithRows>;
  Stage stage[Tiles::kStages];
  alignas(1024) char ds[2][Tiles::kDsSlabs][Tiles::kSlabDs];  // dS^T (or dS) slabs
  alignas(1024) char dq[2][2][Tiles::kDqBoxBytes];                // [warpgroup][box]
  struct None {};  // a member a kernel variant does without
  std::conditional_t<Tiles::kDqTransposed, RowBoxes[Tiles::kStages], None> rows;
  __device__ __forceinline__ RowBoxes& rows_of(int stage_index) {
    if constexpr (Tiles::kDqTransposed) return rows[stage_index];
    else return stage[stage_index].rows;
  }
  DqHandover dq_handover[2];                                      // [warpgroup], with its writer
  uint64_t kv_full;   // the producer published a tile and its K is loading
  uint64_t v_full;    // the tile's V is loading (waited for before the first dP^T: it lands under S^T)
  uint64_t kv_empty;  // the consumers are done with the tile's K, V (and its slot)
  MbarRing<Tiles::kStages> ring;
  TileSlots<BwdTile> tiles;  // the producer's decoded tiles
  // A packed tile's sequence offsets, a copy per consumer warpgroup (one buffer suffices: the
  // producer publishes tile j + 1 only after every consumer thread arrived on kv_empty for tile j).
  // None at M = 80 (transposed dQ), which never runs packed tiles.
  std::conditional_t<Tiles::kDqTransposed, None, PackedSeqs[2]> packed_seqs;
};
template <int D, int M>
inline constexpr int kBwdSmemBytes = smem_bytes<BwdSmem<D, M>>();

template <int kM, int kN>
__device__ __forceinline__ bool bwd_tile_at(const VarlenBackwardParams& p, const TileOrder& order, int group, int64_t t,
                                            BwdTile& x) {
  int64_t b;
  if (order.rank != nullptr) {
    order.at_ranked_keys(t, b, x.n_tile, x.hk);
  } else {
    order.at(t, b, x.n_tile, x.hk);
  }
  if (order.packed != nullptr) {  // entry b of the schedule: {first, end, first key, 0}
    const int4 e = order.packed[b];
    x.first = e.x, x.end = e.y;
    x.s = sequence(p, x.first);
    x.n_tile = e.z / kN;
    if (x.packed()) {
      const SeqTile last = sequence(p, x.end - 1);
      // Clamped, not trusted (an unvalidated layout): keys within one tile, a bounded query span.
      x.s.k_len = int(clamp64(last.k_start + last.k_len - x.s.k_start, 0, kN));
      x.s.q_len = int(clamp64(last.q_start + last.q_len - x.s.q_start, 0, kPackKeys));
      x.n0 = 0;
      x.mb_begin = 0;
      x.mb_blocks = (x.s.q_len + kM - 1) / kM;
      x.steps = group * x.mb_blocks;
      return x.s.k_len > 0;
    }
  } else {
    x.first = b, x.end = b + 1;
    x.s = sequence(p, b);
  }
  x.n0 = x.n_tile * kN;
  if (x.n0 >= x.s.k_len) return false;
  const QueryRange qr = visible_queries(p, x.n0, x.n0 + kN, x.s.q_len, x.s.k_len);
  x.mb_begin = int(qr.lo) / kM;
  x.mb_blocks = qr.hi > qr.lo ? int((qr.hi + kM - 1) / kM) - x.mb_begin : 0;
  x.steps = group * x.mb_blocks;
  return true;
}

// The causal backward's key tiles run fastest over at most this many key tiles a sequence, and over
// more where the sequences' lengths vary, ranked longest first (at_ranked_keys; the kernel's order).
constexpr int64_t kBwdCausalFastTiles = 8;

// kFolded: no softcap and scale > 0 (ScoreMap::folds()): P = exp2(q.k * scale log2 e - lse2) is one
// FFMA and an ex2, and P can be computed while dP^T is still in flight. kDqFirst: the step order of
// BwdTiles::kDqBeforeDk (the launcher's choice). walk_down: a tile's steps walk its query blocks
// from the last down where key tiles run fastest (the launcher's bwd_walks_down; ascending otherwise).
template <class T, int D, int M, bool kFolded, bool kDqFirst>
__global__ void __launch_bounds__(384, 1)
    varlen_bwd_sm90_kernel(const VarlenBackwardParams p, const ScoreMap score, const BwdWorkspace ws, bool deterministic,
                           bool dq_direct, bool walk_down, const PackedTiles packed,
                           const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                           const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_do,
                           const __grid_constant__ CUtensorMap tm_lse2, const __grid_constant__ CUtensorMap tm_delta,
                           const __grid_constant__ CUtensorMap tm_dq) {
  using Tiles = BwdTiles<D, M>;
  using Smem = BwdSmem<D, M>;
  constexpr int kM = Tiles::kBlockM, kN = Tiles::kBlockN, kStages = Tiles::kStages;
  constexpr bool kDqT = Tiles::kDqTransposed;
  // P^T packed before the dS pass (the folded 80-query step; see there). SCREE_BWD_P_EARLY=0 for A/Bs.
#ifndef SCREE_BWD_P_EARLY
#define SCREE_BWD_P_EARLY 1
#endif
  constexpr bool kPEarly = SCREE_BWD_P_EARLY && kFolded && kDqT;
  extern __shared__ char smem_raw[];
  Smem& sm = aligned_smem<Smem>(smem_raw);

  if (threadIdx.x == 0) {
    mbar_init(&sm.kv_full, 1);
    mbar_init(&sm.v_full, 1);
    mbar_init(&sm.kv_empty, 256);
    sm.dq_handover[0].init(), sm.dq_handover[1].init();
    sm.ring.init(256);
    fence_barrier_init();
  }
  __syncthreads();

  // The order over the true maximum key length the preprocess found (a loose host bound would
  // otherwise cost a counter round trip per empty tile).
  const int group = int(p.heads_q / p.heads_k);
  // Deterministic mode puts tile indices outermost only where sequences are longer than 16 tiles
  // (2048 keys): below that, the key tiles of one sequence that run side by side are few, and the
  // default order's L2 reuse wins (H200, bwd det TFLOP/s, tiles outermost vs default: eq2048 304
  // vs 373, short d128 174 vs 194; mix to 4096 keys 304 vs 122, eq8192 causal 363 vs 227).
  // Packed (packed.tiles set): entry t / heads_k of the schedule, in sequence order, kv head t % heads_k.
  const int64_t key_tiles = (int64_t(ws.header->max_seqlen_k) + kN - 1) / kN;
  TileOrder order{p.num_sequences, key_tiles, p.heads_k, !p.causal, deterministic && key_tiles > 16};
  // Unmasked and not deterministic: the key tile fastest, so the CTAs running together share the
  // Q, dO and dQ of a few (sequence, head) pairs in L2 (H200, bwd ms, 3 alternations, default ->
  // this: short d128 0.971 -> 0.917, mix 3.93 -> 3.84, short d64 1.220 -> 1.177, mix d64 4.24 -> 4.14;
  // H100: short d128 1.290 -> 1.068); causal ones keep the default (eq8192 causal 5.51 -> 5.74, mix
  // causal 2.13 -> 2.22: the last pairs' key tile 0, the costliest, would start at the grid's end).
  // Causal ones over at most 8 key tiles (keys up to 1,024) take it too: there the costly tile 0
  // of the last pairs is a short tail (H100, 3 runs: short causal 1.039 -> 0.970 ms).
  order.tiles_fastest = !deterministic && key_tiles > 1 && (!p.causal || key_tiles <= kBwdCausalFastTiles);
  // Causal over more than 8 key tiles with varied lengths (not deterministic): the launcher ranked
  // the sequences longest first (ws.rank, sequence_rank.cuh; rank[0] = -1 where the lengths do not
  // vary), and the key tiles run fastest in that order, so the grid ends on the shortest sequences'
  // tiles. Heads outermost, the mix causal backward (32k tokens, 16 heads, up to 3,979 keys; H100,
  // ncu) kept its SMs busy 93% of the kernel (the last head's costliest tiles end late), ranked 99%;
  // its DRAM traffic (2.6-2.9 GB, twice FA-4's) is the same in both orders.
  if (ws.rank != nullptr && ws.rank[0] >= 0) {
    order.tiles_fastest = true;
    order.rank = ws.rank;
  }
  // The walk from the last query block down (the launcher's walk_down) only where the key tiles of
  // one (sequence, head) run side by side (tiles_fastest: ranked, or at most 8 key tiles), whose
  // reads it brings together. H100, causal bwd ms, down against up, two runs: mix d64 -2.1/-2.6%,
  // 512..8192 mix -4.4/-3.7%, mix d128 -0.4/-0.7% (DRAM read 1.88 -> 1.48 GB, ncu), short -0.9/-1.1%;
  // but eq2048 +3.6/+5.5%, eq8192 +1.9/+3.6%, whose order runs heads, not tiles, side by side
  // (benchmarks/NOTES.md, session 45).
  const bool descend = walk_down && order.tiles_fastest;
  if (packed.tiles != nullptr) {
    order = TileOrder{packed.capacity, 1, p.heads_k, false};
    order.packed = packed.tiles;
    order.packed_count = packed.count;
    order = bounded_by_device_count(order);
  }
  const int64_t tiles = order.count();

  const int wg = warp_uniform(threadIdx.x / 128);
  if (wg == 0) {
    setmaxnreg_dec<24>();
    const int warp = warp_uniform(threadIdx.x / 32);
    if (warp == 1 || warp == 2) {
      // Warp-uniform, so the writer's shared-memory addresses sit in uniform registers: with the
      // producer warpgroup's 24 registers they were spilled and reloaded in every turn of its
      // mbarrier wait (10M local loads in one short d128 backward, ncu).
      const int cw = warp - 1;
      if (threadIdx.x % 32 == 0)
        dq_writer<kM, kN>(p, ws, &tm_dq, sm.dq[cw][0], sm.dq[cw][1], sm.dq_handover[cw], D <= 64 ? 64 * cw : 0,
                          D <= 64 ? 0 : 64 * cw, deterministic, order.descending);
    } else if (threadIdx.x == 0) {
      const TileCounter counter{&ws.header->tile_counter};
      PipelineState<kStages> qs = MbarRing<kStages>::producer_start();
      int64_t t = counter.first(), reserved = 0;
      for (int j = 0;; ++j) {
        if (j > 0) t = reserved;
        BwdTile x;
        bool found = false;
        while (t < tiles && !(found = bwd_tile_at<kM, kN>(p, order, group, t, x))) t = counter.next();
        if (j > 0) mbar_wait(&sm.kv_empty, (j - 1) & 1);  // the previous tile's K, V (and slot) are free
        if (!found) x.steps = -1;
        sm.tiles.publish(j, x);
        if (!found) {
          mbar_arrive(&sm.kv_full);  // no bytes: the consumers read steps < 0 and stop
          break;
        }
        const int krow = int(x.s.k_start) + x.n0;
        mbar_arrive_expect_tx(&sm.kv_full, Tiles::kKBytes);
        tma_load_slabs<D>(sm.k, Tiles::kSlabK, &tm_k, x.hk, krow, &sm.kv_full);
        mbar_arrive_expect_tx(&sm.v_full, Tiles::kKBytes);
        tma_load_slabs<D>(sm.v, Tiles::kSlabK, &tm_v, x.hk, krow, &sm.v_full);
        reserved = counter.next();  // the next tile's round trip overlaps this tile's loads
        for (int step = 0; step < x.steps; ++step, qs.advance()) {
          const int h = x.hk * group + step / x.mb_blocks;
          const int i = step % x.mb_blocks;
          const int qrow = int(x.s.q_start) + (x.mb_begin + (descend ? x.mb_blocks - 1 - i : i)) * kM;
          sm.ring.acquire(qs, 2 * Tiles::kQBytes + 2 * Tiles::kRowBox * 4);
          typename Smem::Stage& st = sm.stage[qs.index];
          typename Smem::RowBoxes& rb = sm.rows_of(qs.index);
          uint64_t* bar = sm.ring.full_bar(qs);
          tma_load_slabs<D>(st.q, Tiles::kSlabQ, &tm_q, h, qrow, bar);
          tma_load_slabs<D>(st.dout, Tiles::kSlabQ, &tm_do, h, qrow, bar);
          tma_load_2d(rb.lse2, &tm_lse2, qrow & ~3, h, bar);
          tma_load_2d(rb.delta, &tm_delta, qrow & ~3, h, bar);
          // Once the ring is full (the next acquire waits for the consumers' steps): the next
          // tile's K, V and first Q, dO into L2. Their loads into shared memory wait for this
          // tile's last step; from device memory the consumers waited for them ~9% of their time
          // at short lengths (H200, ncu: 16..512 tokens, d128).
          if (step == min(x.steps, kStages) - 1) {
            BwdTile y;
            if (reserved < tiles && bwd_tile_at<kM, kN>(p, order, group, reserved, y)) {
              const int yrow = int(y.s.k_start) + y.n0;
              tma_prefetch_l2_slabs<D>(&tm_k, y.hk, yrow);
              tma_prefetch_l2_slabs<D>(&tm_v, y.hk, yrow);
              if (y.steps > 0) {
                const int yq = int(y.s.q_start) + (y.mb_begin + (descend ? y.mb_blocks - 1 : 0)) * kM;
                tma_prefetch_l2_slabs<D>(&tm_q, y.hk * group, yq);
                tma_prefetch_l2_slabs<D>(&tm_do, y.hk * group, yq);
              }
            }
          }
        }
      }
    }
  } else {
    setmaxnreg_inc<240>();
    const int cw = wg - 1;                   // this warpgroup's keys: [64 cw, 64 cw + 64) of the tile
    const int tid = threadIdx.x - 128 * wg;  // 0..127 within the warpgroup
    const int warp = tid / 32, lane = tid % 32, quad = lane % 4;
    // The dQ tile of this warpgroup (see BwdTiles): query offset and head-dim offset.
    const int dq_row0 = D <= 64 ? 64 * cw : 0, dq_col0 = D <= 64 ? 0 : 64 * cw;
    const uint32_t k_rows = smem_u32(sm.k) + 64 * cw * 128;  // this warpgroup's 64 rows of each K slab
    const uint32_t v_rows = smem_u32(sm.v) + 64 * cw * 128;
    const float mult = kFolded ? score.scale_log2 : kLog2e;

    // dq: this warpgroup's dQ tile, 64 queries x 64 head dims, or transposed (kDqT) 64 head dims x kM
    // queries.
    constexpr int kDqN = kDqT ? kM : 64;
    float sacc[kM / 8][4], dpacc[kM / 8][4], dv[D / 8][4], dk[D / 8][4], dq[kDqN / 8][4];
    uint32_t pa[kM / 16][4], da[kM / 16][4];
    PipelineState<kStages> qs;
    int step_count = 0;  // steps so far over all tiles: the dS^T buffer alternates

    // S^T = K Q^T or dP^T = V dO^T (64 keys x kM queries) of the stage qs holds; the first k-step
    // overwrites the accumulators (outputs only: their last values are dead).
    auto issue_kq = [&](float (&acc)[kM / 8][4], uint32_t a_rows, const char* b_tile) {
      const SmemDesc desc_a = SmemDesc::sw128(a_rows, 16, 1024), desc_b = SmemDesc::sw128(smem_u32(b_tile), 16, 1024);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint64_t a = desc_a.at((kk / 4) * Tiles::kSlabK + (kk % 4) * 32);
        const uint64_t b = desc_b.at((kk / 4) * Tiles::kSlabQ + (kk % 4) * 32);
        if (kk == 0) wgmma_ss_zero<kM, T>(acc, a, b); else wgmma_ss<kM, T>(acc, a, b, 1);
      }
      wgmma_commit();
    };
    auto issue_s = [&] { issue_kq(sacc, k_rows, sm.stage[qs.index].q); };
    auto issue_dp = [&] { issue_kq(dpacc, v_rows, sm.stage[qs.index].dout); };

    // dQ of a step, in dq: staged into this warpgroup's two boxes for its writer (dq_writer.cuh),
    // which adds them to the accumulator in global memory.
    DqHandover& ho = sm.dq_handover[cw];
    uint32_t free_parity = 1;
    auto stage_dq = [&](const BwdTile& x, int h, int mb) {
      dq_wait_free(ho, free_parity);
      if constexpr (kDqT) {
        // dq[j][e]: head dim 16 warp + lane / 4 + 8 (e / 2) of the warpgroup's 64 (box dim / 32),
        // query 8 j + 2 quad + e % 2 (the box row): 4-byte stores; a warp's 32 fall in 4 rows x 2
        // chunks, 8 distinct swizzled chunks, so no bank conflict.
#pragma unroll
        for (int j = 0; j < kDqN / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int dim = 16 * warp + lane / 4 + 8 * (e >> 1), row = 8 * j + 2 * quad + (e & 1);
            const int col = dim % 32, chunk = (col / 4) ^ (row & 7);
            *reinterpret_cast<float*>(sm.dq[cw][dim / 32] + row * 128 + chunk * 16 + 4 * (col % 4)) = dq[j][e];
          }
      } else {
#pragma unroll
        for (int jn = 0; jn < 8; ++jn)
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            // row 16 warp + lane / 4 (+ 8), columns 8 jn + 2 quad (+ 1): box jn / 4, 16-byte chunk
            // 2 (jn % 4) + quad / 2 of the 128-byte row, XOR the row's index mod 8.
            const int row = 16 * warp + lane / 4 + 8 * r;
            const int chunk = (2 * (jn % 4) + quad / 2) ^ (row & 7);
            *reinterpret_cast<float2*>(sm.dq[cw][jn / 4] + row * 128 + chunk * 16 + 8 * (quad % 2)) =
                make_float2(dq[jn][2 * r], dq[jn][2 * r + 1]);
          }
      }
      if (tid == 0) ho.job = DqJob{x.s, h, mb, x.n_tile, x.packed()};
      dq_publish(ho);
    };
    // dq_direct: the dQ of a step straight into dq, the rows of the tile's own queries only (a
    // block's last rows may be the next tile's).
    const bool dq_vector = rows_16b(p.dq, p.dq_row_stride, p.dq_head_stride);
    const bool dkv_vector =
        rows_16b(p.dk, p.dk_row_stride, p.dk_head_stride) && rows_16b(p.dv, p.dv_row_stride, p.dv_head_stride);
    auto emit_dq = [&](const BwdTile& x, int h, int mb) {
      if constexpr (kDqT) {
        stage_dq(x, h, mb);  // (the launcher never sends dq_direct to the transposed dQ)
      } else {
        if (!dq_direct) return stage_dq(x, h, mb);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int q = mb * kM + dq_row0 + 16 * warp + lane / 4 + 8 * r;  // in the tile's queries
          T* dst = static_cast<T*>(p.dq) + (x.s.q_start + q) * p.dq_row_stride + h * p.dq_head_stride + dq_col0;
          store_fragment_row<T, 8, true>(dst, dq, r, score.scale, q < x.s.q_len, dq_vector);
        }
      }
    };

    for (int j = 0;; ++j) {
      mbar_wait(&sm.kv_full, j & 1);
      const BwdTile x = sm.tiles.read(j);
      if (x.steps < 0) break;
#pragma unroll
      for (int i = 0; i < D / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) dv[i][e] = dk[i][e] = 0.f;

      // This thread's two key rows. The queries that see each are computed in a masked step's
      // passes only (`bounds`): held over the steps, the four bounds were spilled and reloaded at
      // every step, the first thing its P pass waited for (D = 64, H100 ncu: 3.4% of the consumers'
      // stall samples on mix d64, masked or not).
      int key[2];
      if constexpr (!kDqT) {
        if (x.packed()) {  // (uniform: every thread holds the same tile)
          stage_packed_seqs(p, x.first, x.end, x.s.q_start, x.s.k_start, tid, sm.packed_seqs[cw]);
          named_sync(NamedBarrier::kBwdPackedSeqs0 + cw, 128);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) key[r] = 64 * cw + 16 * warp + lane / 4 + 8 * r;
      // Key row r's visible queries as column bounds relative to this thread's first column in the
      // query block at m0 (query m0 + 2 quad). The empty asm keeps the compiler from hoisting the
      // loop-invariant part out of the step loop, which would hold it in registers again.
      auto bounds = [&](int r, int m0, int& lo, int& hi) {
        int n0 = x.n0;
        asm volatile("" : "+r"(n0));
        QueryRange sees = visible_queries(p, n0 + key[r], n0 + key[r] + 1, x.s.q_len, x.s.k_len);
        if constexpr (!kDqT) {
          if (x.packed())
            sees = key[r] < x.s.k_len ? packed_key_queries(p, sm.packed_seqs[cw], int(x.end - x.first), key[r])
                                      : QueryRange{0, 0};
        }
        lo = int(sees.lo) - m0 - 2 * quad, hi = int(sees.hi) - m0 - 2 * quad;
      };
      // A query block needs no mask when every key of the tile is in the sequence and every query
      // of the block sees every key: the bounds grow with the key, so the first key's upper and
      // the last key's lower bound decide. A packed tile is always masked.
      const bool keys_full = !x.packed() && x.n0 + kN <= x.s.k_len;
      const int full_lo = int(visible_queries(p, x.n0 + kN - 1, x.n0 + kN, x.s.q_len, x.s.k_len).lo);
      const int full_hi = int(visible_queries(p, x.n0, x.n0 + 1, x.s.q_len, x.s.k_len).hi);

      int h = 0, mb = 0;  // this step's query head and block
      for (int step = 0; step < x.steps; ++step, ++step_count) {
        // (h, mb) of this step, advanced from the last: the division step / mb_blocks cost ~30
        // dependent instructions (~5% of the warps' stall samples, ncu) ahead of every S^T.
        const int h_prev = h, mb_prev = mb;  // (the step whose dQ is in flight, !kDqFirst)
        const int mb_first = descend ? x.mb_begin + x.mb_blocks - 1 : x.mb_begin;
        const int mb_last = descend ? x.mb_begin : x.mb_begin + x.mb_blocks - 1;
        const bool next_head = step > 0 && mb == mb_last;
        h = step == 0 ? x.hk * group : h + int(next_head);
        mb = step == 0 || next_head ? mb_first : mb + (descend ? -1 : 1);
        const int m0 = mb * kM;
        const bool full = keys_full && full_lo <= m0 && full_hi >= m0 + kM;
        typename Smem::Stage& st = sm.stage[qs.index];

        // kDqFirst: S^T and dP^T back to back. Otherwise S^T queues behind the last step's dQ;
        // once both are done the dQ is staged, then dP^T issued into its registers (S^T, dQ and dP^T
        // are never all live: 240 registers). Either way dP^T runs while P is computed. Every
        // product is issued unconditionally in the loop: one under a branch the compiler cannot
        // prove uniform makes ptxas serialise all of them (warning C7518).
        sm.ring.wait(qs);
        issue_s();
        if constexpr (kDqFirst) {
          mbar_wait(&sm.v_full, j & 1);  // passes at once after the tile's first step
          issue_dp();
          wgmma_wait<1>();  // S^T done (dP^T may still run)
          fence_regs(sacc);
        } else {
          wgmma_wait<0>();
          fence_regs(sacc);
          fence_regs(dq);
          if (step > 0) emit_dq(x, h_prev, mb_prev);
          mbar_wait(&sm.v_full, j & 1);
          issue_dp();
        }

        // P^T and dS^T, elementwise: element (j, e) is key key[e / 2], query m0 + 8 j + 2 quad + e % 2.
        // With a softcap dS needs the capped score, so both come in one pass after dP^T.
        int lo[2], hi[2];  // (set by with_mask for its masked pass)
        const int row_off = int((x.s.q_start + m0) & 3) + 2 * quad;  // see BwdTiles::kRowBox
        const float* lse2 = sm.rows_of(qs.index).lse2 + row_off;
        const float* delta = sm.rows_of(qs.index).delta + row_off;
        auto with_mask = [&](auto&& pass) {
          if (full) {
            pass(std::false_type{});
          } else {
#pragma unroll
            for (int r = 0; r < 2; ++r) bounds(r, m0, lo[r], hi[r]);
            pass(std::true_type{});
          }
        };
        auto keep = [&](auto mask_tag, int j, int e) {
          if constexpr (!decltype(mask_tag)::value) return true;
          const int c = 8 * j + (e & 1);
          return c >= lo[e >> 1] && c < hi[e >> 1];
        };
        if constexpr (kFolded) {
          with_mask([&](auto mask_tag) {
#pragma unroll
            for (int j = 0; j < kM / 8; ++j) {
              const float l[2] = {lse2[8 * j], lse2[8 * j + 1]};
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const float pr = exp2_ftz(fmaf(sacc[j][e], mult, -l[e & 1]));
                sacc[j][e] = keep(mask_tag, j, e) ? pr : 0.f;
              }
            }
          });
          // kPEarly (80 queries): P^T into its 16-bit A operand before dP^T's wait, and dS from it,
          // so that S^T's 40 fp32 registers are free during the dS pass. With them held, dK, dV,
          // S^T and dP^T (208 registers) left the step too few of its 240: it spilled 6 values and
          // reloaded 14 a step (80 local-memory sectors a warp and step, 1.7 GB through L2 on mix
          // causal, H100 ncu; benchmarks/NOTES.md, session 42).
          if constexpr (kPEarly) {
#pragma unroll
            for (int i = 0; i < kM / 16; ++i) acc_to_a<T>(pa[i], sacc[2 * i], sacc[2 * i + 1]);
          }
          wgmma_wait<0>();  // dP^T done
          fence_regs(dpacc);
          with_mask([&](auto mask_tag) {
#pragma unroll
            for (int j = 0; j < kM / 8; ++j) {
              const float dl[2] = {delta[8 * j], delta[8 * j + 1]};
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const float pr = kPEarly ? unpack_half<T>(pa[j / 2][2 * (j & 1) + (e >> 1)], e & 1) : sacc[j][e];
                const float ds = pr * (dpacc[j][e] - dl[e & 1]);
                dpacc[j][e] = keep(mask_tag, j, e) ? ds : 0.f;
              }
            }
          });
        } else {
          wgmma_wait<0>();
          fence_regs(dpacc);
          with_mask([&](auto mask_tag) {
#pragma unroll
            for (int j = 0; j < kM / 8; ++j) {
              const float l[2] = {lse2[8 * j], lse2[8 * j + 1]};
              const float dl[2] = {delta[8 * j], delta[8 * j + 1]};
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                const float x = score(sacc[j][e]);  // the (capped) score
                const float pr = exp2_ftz(fmaf(x, mult, -l[e & 1]));
                float ds = pr * (dpacc[j][e] - dl[e & 1]);
                if (score.softcap > 0.f) {
                  const float th = x * score.inv_softcap;
                  ds *= 1.f - th * th;
                }
                const bool k = keep(mask_tag, j, e);
                sacc[j][e] = k ? pr : 0.f;
                dpacc[j][e] = k ? ds : 0.f;
              }
            }
          });
        }
        if constexpr (!kPEarly) {
#pragma unroll
          for (int i = 0; i < kM / 16; ++i) acc_to_a<T>(pa[i], sacc[2 * i], sacc[2 * i + 1]);
        }
#pragma unroll
        for (int i = 0; i < kM / 16; ++i) acc_to_a<T>(da[i], dpacc[2 * i], dpacc[2 * i + 1]);
        const uint32_t q_base = smem_u32(st.q), do_base = smem_u32(st.dout);

        // dV += P^T dO (A = P^T from registers, B = dO, head dims contiguous).
        fence_regs(dv);
        wgmma_fence();
        const SmemDesc desc_do = SmemDesc::sw128(do_base, Tiles::kSlabQ, 1024);
#pragma unroll
        for (int i = 0; i < kM / 16; ++i) wgmma_rs_tb<D, T>(dv, pa[i], desc_do.at(i * 2048), 1);
        wgmma_commit();

        // dS^T to shared memory for dQ: key row 64 cw + 16 warp + lane / 4 (+ 8), queries 8 j + 2 quad
        // (+ 1), 128-byte swizzled rows of 64 queries (the 16-byte chunk index XOR the row's index mod
        // 8), as TMA would write them. Two buffers: the one written now was last read by the dQ
        // products of two steps ago; the other warpgroup finished those before it wrote its half
        // of the last step's dS^T, which this one waited for.
        char(&ds)[Tiles::kDsSlabs][Tiles::kSlabDs] = sm.ds[step_count & 1];
        if constexpr (kDqT) {
          // dS (queries x keys, K-major for dQ^T's B) into this warpgroup's slab (its 64 keys); da[i][2 half + r] is
          // the 8 x 8 matrix of keys 16 warp + 8 r (+0..7) x queries 16 i + 8 half (+0..7), stored
          // transposed: lane l gives the row address of query 16 i + 8 (l / 16) + l % 8 of matrix l / 8.
          const int mtx = lane / 8, chunk = 2 * warp + (mtx & 1);
#pragma unroll
          for (int i = 0; i < kM / 16; ++i) {
            const int row = 16 * i + 8 * (mtx >> 1) + lane % 8;
            stmatrix_x4_trans(smem_u32(ds[cw]) + row * 128 + ((chunk ^ (row & 7)) << 4), da[i][0], da[i][1], da[i][2],
                              da[i][3]);
          }
        } else {
#pragma unroll
          for (int i = 0; i < kM / 16; ++i)
#pragma unroll
            for (int half = 0; half < 2; ++half) {  // n-tile j = 2 i + half
              const int j8 = (2 * i + half) % 8, slab = (2 * i + half) / 8;
#pragma unroll
              for (int r = 0; r < 2; ++r) {
                const int row = key[r];
                *reinterpret_cast<uint32_t*>(ds[slab] + row * 128 + ((j8 ^ (row & 7)) << 4) + 4 * quad) =
                    da[i][2 * half + r];
              }
            }
        }

        // dK += dS^T Q (A = dS^T from registers, B = Q, head dims contiguous).
        const SmemDesc desc_q = SmemDesc::sw128(q_base, Tiles::kSlabQ, 1024);
        auto issue_dk = [&] {
          fence_regs(dk);
          wgmma_fence();
#pragma unroll
          for (int i = 0; i < kM / 16; ++i) wgmma_rs_tb<D, T>(dk, da[i], desc_q.at(i * 2048), 1);
          wgmma_commit();
        };
        if constexpr (!kDqFirst) issue_dk();

        // dQ (64 queries x 64 head dims of this warpgroup) = dS K over the tile's 128 keys, once the
        // other warpgroup has written its half of dS^T (it waits for ours in turn; arriving does not
        // block, so the two drift apart by up to a step and one's elementwise work overlaps the
        // other's products): A = dS read from dS^T (queries contiguous), B = K (head dims contiguous).
        fence_proxy_async_smem();
        named_arrive(NamedBarrier::kBwdDsWritten0 + cw, 256);
        named_sync(NamedBarrier::kBwdDsWritten0 + (1 - cw), 256);
        if constexpr (kDqT) {
          // dQ^T (this warpgroup's 64 head dims x kM queries) = K^T dS^T: A = K^T read M-major from
          // K's slab of these head dims, B = dS (K-major: 64-key slabs of 128-byte query rows).
          const SmemDesc desc_a = SmemDesc::sw128(smem_u32(sm.k) + cw * Tiles::kSlabK, Tiles::kSlabK, 1024);
          const SmemDesc desc_b = SmemDesc::sw128(smem_u32(ds[0]), Tiles::kSlabDs, 1024);
#pragma unroll
          for (int i = 0; i < kN / 16; ++i) {
            const uint64_t a = desc_a.at(i * 2048);
            const uint64_t b = desc_b.at((i / 4) * Tiles::kSlabDs + (i % 4) * 32);
            if (i == 0) wgmma_ss_mk_zero<kM, T>(dq, a, b); else wgmma_ss_mk<kM, T>(dq, a, b, 1);
          }
        } else {
          const SmemDesc desc_a = SmemDesc::sw128(smem_u32(ds[dq_row0 / 64]), Tiles::kSlabDs, 1024);
          const SmemDesc desc_b = SmemDesc::sw128(smem_u32(sm.k) + (dq_col0 / 64) * Tiles::kSlabK, Tiles::kSlabK, 1024);
#pragma unroll
          for (int i = 0; i < kN / 16; ++i) {
            const uint64_t a = desc_a.at(i * 2048);
            const uint64_t b = desc_b.at(i * 2048);
            if (i == 0) wgmma_ss_mn_zero<64, T>(dq, a, b); else wgmma_ss_mn<64, T>(dq, a, b, 1);
          }
        }
        wgmma_commit();
        if constexpr (kDqFirst) {
          issue_dk();
          wgmma_wait<1>();  // dV and dQ done (dK may still run): the P registers and the dQ are free
          fence_regs(dv);
          fence_regs(pa);
          fence_regs(dq);
          emit_dq(x, h, mb);
          wgmma_wait<0>();  // dK done: the dS registers and this stage's Q, dO are free
          fence_regs(dk);
          fence_regs(da);
        } else {
          wgmma_wait<1>();  // dV and dK done: P and dS registers and this stage's Q, dO are free
          fence_regs(dv);
          fence_regs(dk);
          fence_regs(pa);
          fence_regs(da);
        }
        sm.ring.release(qs);
        qs.advance();
      }
      if constexpr (!kDqFirst) {
        wgmma_wait<0>();  // unconditional: a wait under a branch also serialises every product (C7518)
        fence_regs(dq);
        if (x.steps > 0) emit_dq(x, h, mb);
      }
      // A tile without steps never waited for its V: its phase of v_full must complete before the
      // producer may start the next one's (a phase skipped would let the next wait pass early).
      mbar_wait(&sm.v_full, j & 1);
      mbar_arrive(&sm.kv_empty);  // the last dQ product was the last read of K (and of V before it)

      // dK (times the score scale, left out of dS) and dV of this warp's 16 key rows, through this
      // warpgroup's rows of the dS^T buffer the next step will write (staged_rows.cuh): its last
      // readers, both warpgroups' dQ products of two steps ago, are done (the other warpgroup
      // finished them before it wrote its half of the last step's dS^T, which this one waited for).
      // (kDqT: this warpgroup's rows of its own slab of that buffer.)
      {
        char* stage = kDqT ? sm.ds[step_count & 1][cw] + 16 * warp * 128
                           : sm.ds[step_count & 1][0] + (64 * cw + 16 * warp) * 128;
        const int row0 = x.n0 + 64 * cw + 16 * warp;
        const int64_t tok = x.s.k_start + row0;
        T* gk = static_cast<T*>(p.dk) + tok * p.dk_row_stride + x.hk * p.dk_head_stride;
        T* gv = static_cast<T*>(p.dv) + tok * p.dv_row_stride + x.hk * p.dv_head_stride;
        store_rows_staged<T>(dk, score.scale, stage, gk, p.dk_row_stride, x.s.k_len - row0, dkv_vector);
        store_rows_staged<T>(dv, 1.f, stage, gv, p.dv_row_stride, x.s.k_len - row0, dkv_vector);
      }
      // (kDqT) The next tile's dS stores of each warp cross the other warps' staging rows (a warp
      // writes two 16-byte chunks of every query row): the warpgroup's reads are done first.
      if (kDqT) named_sync(NamedBarrier::kBwdEpilogue0 + cw, 128);
    }
    dq_wait_free(ho, free_parity);  // the writer's last job is done: end it
    if (tid == 0) ho.job.h = -1;
    dq_publish(ho);
  }
}

}  // namespace scree::cuda_attention::sm90

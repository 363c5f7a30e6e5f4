// Launcher of the Hopper backward for one (element type, head dim): the preprocess (delta, lse in
// base-2 units, the dQ accumulator and the deterministic counters zeroed, the tile counter and the
// true maximum lengths in the workspace header), for short sequences the packed key-tile schedule
// (tile_packing.cuh, into the workspace's own part), the persistent key-tile kernel over TMA tensor
// maps, and the postprocess that converts dQ (times the score scale); where every sequence's keys
// fit one tile, the kernel writes dq itself and neither the accumulator nor the postprocess runs.
// The causal backward over long keys of varied lengths first ranks the sequences longest first
// (sequence_rank.cuh).
// At D = 128 an unmasked backward takes 80-query steps, the rest 64. Explicitly instantiated in
// instances/bwd_sm90_*.cu, compiled for sm_90a only. The host API sends calls with no query token
// (dK = dV = 0 for every key) to the portable path.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../bwd_prepost.cuh"
#include "../bwd_workspace.h"
#include "../cuda_check.h"
#include "../launch_common.cuh"
#include "bwd_sm90.cuh"
#include "sequence_rank.cuh"
#include "sm_count.h"
#include "tma.cuh"

namespace scree::cuda_attention::sm90 {

#ifndef SCREE_BWD_M80_CAUSAL_MIN_TILES
#define SCREE_BWD_M80_CAUSAL_MIN_TILES 24
#endif

// Whether the causal backward over more than kBwdCausalFastTiles key tiles ranks its sequences
// (the default; SCREE_SM90_BWD_ORDER=input keeps the input order, for A/Bs and tests). Unmasked
// ones are not ranked: H100, bwd ms, ranked vs input order, mix d128 3.877 vs 3.856, mix d64
// 4.551 vs 4.599 (already key tiles fastest, where every tile of a sequence costs its length).
inline bool bwd_ranks_sequences() {
  const char* order = std::getenv("SCREE_SM90_BWD_ORDER");
  return order == nullptr || std::strcmp(order, "input") != 0;
}

// Whether a causal, not deterministic backward's key tiles walk their query blocks from the last
// down where its key tiles run fastest in the order (the kernel decides: ranked sequences, or at most
// 8 key tiles), the default; SCREE_SM90_BWD_WALK=up keeps the ascending walk, for A/Bs and tests. The
// key tiles of one (sequence, head) run side by side (TileOrder::tiles_fastest), and unmasked they
// walk the same query block at the same time, so its Q, dO and dQ rows serve them all from L2. Causal
// ones walking up start at their own diagonal (key tile j at query block 2j with 64 queries): at any time
// they read and add to different blocks. From the last block down they walk it together again:
// mix d128 causal read 1.88 -> 1.48 GB of DRAM (H100, ncu). Faster on varied lengths, slower on
// equal ones, whose order runs heads side by side (the measurements are at the kernel's rule, bwd_sm90.cuh).
// (Deterministic runs keep the ascending walk their dQ ordering was built and measured with.)
inline bool bwd_walks_down() {
  const char* walk = std::getenv("SCREE_SM90_BWD_WALK");
  return walk == nullptr || std::strcmp(walk, "up") != 0;
}

// The key-tile kernel with M queries a step (the part of the backward that depends on M).
template <class T, int D, int M>
void launch_bwd_tiles(const VarlenBackwardParams& p, const BwdWorkspace& w, bool deterministic, bool dq_direct,
                      const PackedTiles& packed, int64_t tiles, cudaStream_t stream) {
  using Tiles = BwdTiles<D, M>;
  constexpr int kM = Tiles::kBlockM, kN = Tiles::kBlockN;
  // The transposed dQ is always staged for the writer (it has no store from registers into dq).
  if (Tiles::kDqTransposed && dq_direct)
    throw Error(ErrorKind::Unsupported, "sm90 backward: dq_direct with the transposed dQ");
  // Nor does it hold packed tiles' offsets (BwdSmem::packed_seqs): its masks would be wrong.
  if (Tiles::kDqTransposed && packed.tiles != nullptr)
    throw Error(ErrorKind::Unsupported, "sm90 backward: packed key tiles with the transposed dQ");
  const CUtensorMap tm_q = tensor_map_3d<T>(p.q, p.total_q, p.heads_q, D, p.q_row_stride, p.q_head_stride, kM, "q");
  const CUtensorMap tm_do =
      tensor_map_3d<T>(p.dout, p.total_q, p.heads_q, D, p.dout_row_stride, p.dout_head_stride, kM, "dout");
  const CUtensorMap tm_k = tensor_map_3d<T>(p.k, p.total_k, p.heads_k, D, p.k_row_stride, p.k_head_stride, kN, "k");
  const CUtensorMap tm_v = tensor_map_3d<T>(p.v, p.total_k, p.heads_k, D, p.v_row_stride, p.v_head_stride, kN, "v");
  const CUtensorMap tm_lse2 = tensor_map_rows_f32(w.lse2, p.heads_q, w.ld, Tiles::kRowBox, "lse2");
  const CUtensorMap tm_delta = tensor_map_rows_f32(w.delta, p.heads_q, w.ld, Tiles::kRowBox, "delta");
  // dQ's fp32 accumulator, (total_q, heads_q, D): boxes of 32 columns x kDqRows rows (reduce-adds).
  const CUtensorMap tm_dq = dq_direct ? CUtensorMap{}
                                      : tensor_map_3d<float>(w.dq_accum, p.total_q, p.heads_q, D, p.heads_q * D, D,
                                                             Tiles::kDqRows, "dq_accum");
  const ScoreMap score = ScoreMap::from(p);
  auto pick = [&](auto dq_first) {
    constexpr bool kDqFirst = decltype(dq_first)::value;
    return score.folds() ? varlen_bwd_sm90_kernel<T, D, M, true, kDqFirst>
                         : varlen_bwd_sm90_kernel<T, D, M, false, kDqFirst>;
  };
  auto kernel = pick(std::false_type{});
  if constexpr (Tiles::kDqBeforeDk) {
    if (!deterministic) kernel = pick(std::true_type{});
  }
  constexpr int kSmem = kBwdSmemBytes<D, M>;
  set_smem(kernel, kSmem);
  // Persistent: one CTA per SM, at most one per key tile of the host's (upper-bound) lengths.
  const int sms = sm_count();
  const unsigned grid = unsigned(tiles < sms ? tiles : sms);
  const bool walk_down = p.causal && !deterministic && packed.tiles == nullptr && bwd_walks_down();
  kernel<<<grid, Tiles::kThreads, kSmem, stream>>>(p, score, w, deterministic, dq_direct, walk_down, packed, tm_q, tm_k,
                                                    tm_v, tm_do, tm_lse2, tm_delta, tm_dq);
  check_cuda(cudaGetLastError(), "varlen_bwd_sm90_kernel launch");
}

template <class T, int D>
bool launch_bwd_sm90(const VarlenBackwardParams& p, const BwdWorkspace& ws, bool deterministic, cudaStream_t stream) {
  constexpr int kN = BwdTiles<D>::kBlockN;
  if (p.total_q == 0 || p.heads_q == 0) return false;
  bool kept = false;  // the key tiles came from p.tile_schedule
  const bool keys = p.num_sequences > 0 && p.total_k > 0 && p.max_seqlen_k > 0;
  const bool packed_order = keys && packed_tiles_chosen(p, /*by_keys=*/true);
  // Every sequence's keys in one tile: the kernel writes dq itself (bwd_sm90.cuh, dq_direct), and
  // the workspace was carved without the accumulator.
  static_assert(kN == kPackRows, "writes_dq assumes the packed key tile is the kernel's");
  const bool dq_direct = BwdWorkspace::writes_dq(p);
  BwdWorkspace w = ws;
  if (!deterministic || dq_direct) w.dq_sem = nullptr;
  if (dq_direct) w.dq_accum = nullptr;  // nothing to zero (api.cu carved none)
  launch_bwd_preprocess<T, D>(p, w, stream, /*zero_keyless_dq=*/dq_direct);
  check_cuda(cudaGetLastError(), "bwd_preprocess_kernel launch");
  if (keys) {
    PackedTiles packed{};  // tiles == nullptr: the per-sequence order
    const int64_t key_tiles = ceil_div(p.max_seqlen_k, kN);  // of the longest sequence (host bound)
    int64_t tiles = p.num_sequences * key_tiles * p.heads_k;
    if (packed_order) {
      // The caller's kept schedule, packed by its first call only (the preprocess zeroed the counter).
      kept = p.tile_schedule != nullptr;
      packed = PackedTiles::at(static_cast<char*>(kept ? p.tile_schedule : w.packed), p.total_k, p.num_sequences);
      if (!kept || !p.tile_schedule_ready) {
        pack_tiles_kernel<true><<<1, kPackThreads, 0, stream>>>(p, packed, &w.header->tile_counter);
        check_cuda(cudaGetLastError(), "pack_tiles_kernel launch");
      }
      tiles = packed.capacity * p.heads_k;
    }
    // Causal over long keys, not deterministic (whose long sequences take tiles outermost): the
    // sequences ranked longest first into the packed part's room where their key blocks vary, read
    // by the kernel's order (rank[0] = -1 where they do not).
    if (!packed_order && p.causal && !deterministic && p.num_sequences > 1 && key_tiles > kBwdCausalFastTiles &&
        bwd_ranks_sequences()) {
      w.rank = static_cast<int*>(w.packed);
      rank_sequences_kernel<><<<1, kRankThreads, 0, stream>>>(p, w.rank, nullptr, /*only_if_varied=*/true);
      check_cuda(cudaGetLastError(), "rank_sequences_kernel launch");
    }
    // 80-query steps at D = 128 (neither dq_direct nor packed tiles, which the transposed dQ has no
    // code for) where the backward is not causal, or causal over at least 24 key tiles of 128 keys
    // (3072) and not deterministic. H100, bwd ms, 64 -> 80 queries: eq2048 3.02 -> 2.84, mix 4.09
    // -> 3.62, deterministic eq2048 +7% (3 runs, session 34); eq8192 causal 5.94 -> 5.53, a causal
    // mix of 512..8192 keys 3.73 -> 3.49, mix causal (up to 4096 keys) 2.21 -> 2.21 (medians of 5,
    // session 35; a line at 48 tiles: 5.57 and 3.52). Shorter causal ones keep 64 (short causal 1.04 ->
    // 1.12), as do deterministic causal ones (eq8192 causal 365 -> 293 TFLOP/s). NOTES.md, issue 18.
    bool eighty = false;
    if constexpr (D == 128) {
      // The causal line (a compile-time switch for A/Bs: -DSCREE_BWD_M80_CAUSAL_MIN_TILES=N, 0 off).
      const bool long_causal =
          SCREE_BWD_M80_CAUSAL_MIN_TILES > 0 && !deterministic && key_tiles >= SCREE_BWD_M80_CAUSAL_MIN_TILES;
      eighty = (!p.causal || long_causal) && !dq_direct && !packed_order;
      if (eighty) launch_bwd_tiles<T, D, 80>(p, w, deterministic, dq_direct, packed, tiles, stream);
    }
    if (!eighty) launch_bwd_tiles<T, D, BwdTiles<D>::kBlockM>(p, w, deterministic, dq_direct, packed, tiles, stream);
  }
  if (!dq_direct) {
    launch_dq_convert<T, D>(p, w.dq_accum, float(p.scale), stream);
    check_cuda(cudaGetLastError(), "dq_convert_kernel launch");
  }
  return kept;
}

}  // namespace scree::cuda_attention::sm90

// Launcher of the Hopper forward for one (element type, head dim): TMA tensor maps over the
// packed q, k, v tensors (or the pages of a paged cache; q by head groups for head-grouped tiles),
// the dynamic shared-memory opt-in, the tile counter (zeroed on the stream in the caller's
// workspace unless it is known zero) or, for packed tiles, the schedule kernel that zeroes it and
// writes the tiles after it (tile_packing.cuh), the persistent launch and its error check.
// Explicitly instantiated in instances/fwd_sm90_*.cu, compiled for sm_90a only.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../cuda_check.h"
#include "../launch_common.cuh"
#include "fwd_rows.h"
#include "fwd_sm90.cuh"
#include "sm_count.h"
#include "tile_packing.cuh"
#include "tma.cuh"

namespace scree::cuda_attention::sm90 {

// One launch at M query rows a tile (fwd_rows.h; M = 192 only for per-sequence tiles over packed K/V).
// kTurns: whether the 192-row tiles' warpgroups take turns (128-row tiles keep the kernel's default).
template <class T, int D, int M, bool kTurns = false>
bool launch_fwd_sm90_rows(const VarlenParams& p, char* workspace, cudaStream_t stream, KvSource source, int group,
                          bool packed) {
  using Tiles = FwdTiles<D, M>;
  // Keys: a map needs at least one row; with no key at all every row outputs 0 / -inf, which the
  // kernel does without reading k or v (no key block is visible).
  const bool keys = p.total_k > 0;
  const int64_t tk = keys ? p.total_k : 1;
  const int64_t hk = keys ? p.heads_k : p.heads_q;
  // Head-grouped tiles (head_group_tiles.h): a tile's Q is one box of the group's heads.
  const CUtensorMap tq =
      group > 1 ? tensor_map_head_groups<T>(p.q, p.total_q, p.heads_q / group, group, D, p.q_row_stride,
                                            p.q_head_stride, group_tokens(group), "q")
                : tensor_map_3d<T>(p.q, p.total_q, p.heads_q, D, p.q_row_stride, p.q_head_stride, Tiles::kBlockM, "q");
  CUtensorMap tk_map{}, tv_map{};  // unused (zero) when the producer copies pages with cp.async
  if (source == KvSource::kPagesTma) {  // (num_pages, page_size, Hk, D) pages, boxes of min(page_size, kBlockN) slots (paged_tma.cuh)
    const int64_t pages = p.kv_rows / p.page_size;
    const int box = int(p.page_size < Tiles::kBlockN ? p.page_size : Tiles::kBlockN);
    tk_map = tensor_map_pages<T>(p.k, pages, p.page_size, p.heads_k, D, p.kv_page_stride, p.k_row_stride,
                                 p.k_head_stride, box, "k pages");
    tv_map = tensor_map_pages<T>(p.v, pages, p.page_size, p.heads_k, D, p.kv_page_stride, p.v_row_stride,
                                 p.v_head_stride, box, "v pages");
  } else if (source == KvSource::kPacked) {
    tk_map = tensor_map_3d<T>(keys ? p.k : p.q, tk, hk, D, keys ? p.k_row_stride : p.q_row_stride,
                              keys ? p.k_head_stride : p.q_head_stride, Tiles::kBlockN, "k");
    tv_map = tensor_map_3d<T>(keys ? p.v : p.q, tk, hk, D, keys ? p.v_row_stride : p.q_row_stride,
                              keys ? p.v_head_stride : p.q_head_stride, Tiles::kBlockN, "v");
  }
  const ScoreMap score = ScoreMap::from(p);
  auto pick = [&](auto folded, auto grouped) {
    constexpr bool kF = decltype(folded)::value, kG = decltype(grouped)::value;
    return source == KvSource::kPacked     ? varlen_fwd_sm90_kernel<T, D, kF, KvSource::kPacked, kG>
           : source == KvSource::kPagesTma ? varlen_fwd_sm90_kernel<T, D, kF, KvSource::kPagesTma, kG>
                                           : varlen_fwd_sm90_kernel<T, D, kF, KvSource::kPagesCopy, kG>;
  };
  auto pick_grouped = [&](auto folded) {
    if constexpr (M == 128) {
      return group > 1 ? pick(folded, std::true_type{}) : pick(folded, std::false_type{});
    } else {  // per-sequence tiles over packed K/V only (fwd_rows.h)
      return varlen_fwd_sm90_kernel<T, D, decltype(folded)::value, KvSource::kPacked, false, M, kTurns>;
    }
  };
  auto kernel = score.folds() ? pick_grouped(std::true_type{}) : pick_grouped(std::false_type{});
  constexpr int kSmem = kFwdSmemBytes<D, M>;
  set_smem(kernel, kSmem);
  // Persistent: one CTA per SM (224 KiB of shared memory allows no second), at most one per tile.
  const int64_t tile_tokens = group > 1 ? group_tokens(group) : M;
  TileOrder order{p.num_sequences, ceil_div(p.max_seqlen_q, tile_tokens), p.heads_q / group, true};
  order.group = group;
  // The tile counter lives in the call's own workspace (so concurrent calls on other streams never
  // share one) and is zeroed on the stream, in stream order with the kernel; the packed schedule
  // follows it there, or lives in the caller's p.tile_schedule, packed by its first call only.
  auto* tile_counter = reinterpret_cast<unsigned long long*>(workspace);
  // Longest-first grouped tiles (sequence_rank.cuh): their ranks after the tile counter, sorted by
  // a kernel that also zeroes the counter.
  const bool ranked = group > 1 && grouped_longest_first();
  if (ranked) {
    int* rank = reinterpret_cast<int*>(workspace + kFwdCounterBytes);
    rank_sequences_kernel<><<<1, kRankThreads, 0, stream>>>(p, rank, tile_counter, /*only_if_varied=*/false);
    check_cuda(cudaGetLastError(), "rank_sequences_kernel launch");
    order.rank = rank;
  }
  if (packed) {
    char* at = p.tile_schedule != nullptr ? static_cast<char*>(p.tile_schedule) : workspace + kFwdCounterBytes;
    const PackedTiles sched = PackedTiles::at(at, p.total_q, p.num_sequences);
    order = TileOrder{sched.capacity, 1, p.heads_q, false};
    order.packed = sched.tiles;
    order.packed_count = sched.count;
    if (p.tile_schedule == nullptr || !p.tile_schedule_ready) {
      pack_tiles_kernel<><<<1, kPackThreads, 0, stream>>>(p, sched, tile_counter);
      check_cuda(cudaGetLastError(), "pack_tiles_kernel launch");
    }
  }
  // Without the pack kernel, the counter and its CTA count are zeroed here unless the caller's
  // workspace holds them zeroed already (the last forward on it put them back to zero).
  if (!ranked && (!packed || (p.tile_schedule != nullptr && p.tile_schedule_ready)) && !p.workspace_counter_zero) {
    check_cuda(cudaMemsetAsync(tile_counter, 0, kFwdCounterBytes, stream), "cudaMemsetAsync(tile counter)");
  }
  const int64_t tiles = order.sequences * order.tiles * order.heads;
  const int sms = sm_count();
  const unsigned grid = unsigned(tiles < sms ? tiles : sms);
  kernel<<<grid, Tiles::kThreads, kSmem, stream>>>(p, score, order, tile_counter, tq, tk_map, tv_map);
  check_cuda(cudaGetLastError(), "varlen_fwd_sm90_kernel launch");
  return packed && p.tile_schedule != nullptr;
}

template <class T, int D>
bool launch_fwd_sm90(const VarlenParams& p, char* workspace, cudaStream_t stream) {
  if (p.num_sequences == 0 || p.max_seqlen_q == 0 || p.heads_q == 0 || p.total_q == 0) return false;
  const KvSource source = p.paged ? paged_source(p.page_size) : KvSource::kPacked;
  const int group = fwd_head_group(p);
  const bool packed = packed_tiles_chosen(p);  // never with head-grouped tiles
  if constexpr (D == 64) {
    const FwdRows rows = fwd_rows(D, source == KvSource::kPacked && group == 1 && !packed, p.causal, p.max_seqlen_q);
    if (rows.rows == 192) {
      return rows.turns ? launch_fwd_sm90_rows<T, D, 192, true>(p, workspace, stream, source, group, packed)
                        : launch_fwd_sm90_rows<T, D, 192, false>(p, workspace, stream, source, group, packed);
    }
  }
  return launch_fwd_sm90_rows<T, D, 128>(p, workspace, stream, source, group, packed);
}

}  // namespace scree::cuda_attention::sm90

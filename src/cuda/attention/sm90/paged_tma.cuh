// Paged keys and values for the Hopper forward (chunked prefill over a serving cache): the K/V
// tiles of 128 keys come out of the pages in place, by TMA, instead of from a packed copy.
//  - paged_block_page / tma_load_paged_block (the producer warp, lane j): segment j of key block nb
//    of sequence b (its page id read one block ahead, so the read overlaps the wait for a free
//    stage), one
//    box of seg = min(page_size, kN) rows per 64-column slab of K and of V (tensor_map_pages: 64
//    columns x seg slots of one head of one page), stacked in the stage the way one tall box would
//    land (seg x 128 bytes is a multiple of the 1024-byte swizzle atom for page sizes that are
//    multiples of 8). The lanes read their page ids together and issue their boxes in parallel. A segment past
//    the sequence's last page reads page id num_pages, past the map: TMA zero-fills it and still
//    credits the full bytes, so the stage's expected transaction count never changes.
//  - zero_rows_past_end (each consumer warpgroup, on the block holding the sequence's end): the
//    slots after the end of the sequence's last page hold whatever the engine left there (stale
//    tokens, or never-written memory that may be NaN); their scores are masked to -inf, so P is 0,
//    but 0 * NaN in P V is NaN. Those V rows are zeroed in shared memory before the product.
//    Both warpgroups write the same zeros (no ordering between them is needed) and the stage is
//    not refilled until both have released it.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "../varlen_tile.cuh"
#include "named_barrier.cuh"
#include "ptx.cuh"
#include "tma.cuh"

namespace scree::cuda_attention::sm90 {

// The page id lane `lane` loads for key block nb (num_pages, past the map, where its segment lies
// past the sequence's last page; kN / seg lanes take part, seg = min(page_size, kN)).
template <int kN>
__device__ __forceinline__ int paged_block_page(const VarlenParams& p, int64_t b, int nb, int k_len, int lane) {
  const int ps = int(p.page_size);
  const int seg = ps < kN ? ps : kN;  // page sizes >= 16 (varlen_fwd_cuda checks): at most 8 boxes a block
  const int num_pages = int(p.kv_rows / p.page_size);
  const int key0 = nb * kN + lane * seg;
  if (lane >= kN / seg || key0 >= k_len) return num_pages;
  const int64_t col = key0 / ps;
  if (col >= p.page_table_width) return num_pages;
  const int64_t at = b * p.page_table_stride + col;
  const int64_t id = p.page_table_int64 ? static_cast<const int64_t*>(p.page_table)[at]
                                        : int64_t(static_cast<const int32_t*>(p.page_table)[at]);
  return int(id < 0 ? 0 : (id >= num_pages ? num_pages - 1 : id));
}

// Lane `lane`'s boxes of key block nb (its page from paged_block_page) into the stage's K and V.
template <int D, int kN>
__device__ __forceinline__ void tma_load_paged_block(const VarlenParams& p, int nb, int page, int hk, int lane,
                                                     char* k_smem, char* v_smem, const CUtensorMap* tm_k,
                                                     const CUtensorMap* tm_v, uint64_t* bar) {
  constexpr int kSlab = kN * 128;  // bytes of one 64-column slab of a tile
  const int ps = int(p.page_size);
  const int seg = ps < kN ? ps : kN;
  if (lane >= kN / seg) return;
  const int slot = (nb * kN + lane * seg) % ps;
#pragma unroll
  for (int s = 0; s < D / 64; ++s) {
    tma_load_4d(k_smem + s * kSlab + lane * seg * 128, tm_k, s * 64, slot, hk, page, bar);
    tma_load_4d(v_smem + s * kSlab + lane * seg * 128, tm_v, s * 64, slot, hk, page, bar);
  }
}

// Rows [from, to) of a V tile zeroed by the 128 threads of one consumer warpgroup (thread index
// wg_thread), made visible to its wgmma (async proxy) and synchronised on the named barrier `bar`.
template <int D, int kN>
__device__ __forceinline__ void zero_rows_past_end(char* v_smem, int from, int to, int wg_thread, NamedBarrier bar) {
  constexpr int kChunks = (D / 64) * 8;  // 16-byte chunks of a row, over its slabs
  for (int i = wg_thread; i < (to - from) * kChunks; i += 128) {
    const int r = from + i / kChunks, s = (i % kChunks) / 8, c = i % 8;
    *reinterpret_cast<uint4*>(v_smem + s * kN * 128 + r * 128 + c * 16) = make_uint4(0u, 0u, 0u, 0u);
  }
  fence_proxy_async_smem();
  named_sync(bar, 128);
}

}  // namespace scree::cuda_attention::sm90

// Paged keys and values for the Hopper forward (chunked prefill over a serving cache): the K/V
// tiles of 128 keys come out of the pages in place instead of from a packed copy, in one of two
// ways (KvSource): by TMA for pages of 64 tokens and more, by cp.async for smaller ones. Measured
// on an H200 (benchmarks/NOTES.md): with TMA a 16-token page is a box of 2 KiB, 32 boxes a block,
// and the forward ran at 1.5-1.6x the packed one (1.05x with 128-token pages); FA-3 and FA-4 also
// copy small pages with cp.async.
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

#include "../sm80/mma_sm80.cuh"
#include "../varlen_tile.cuh"
#include "named_barrier.cuh"
#include "ptx.cuh"
#include "tma.cuh"

namespace scree::cuda_attention::sm90 {

// Where the forward's K/V tiles come from: packed rows (TMA), pages by TMA, pages by cp.async.
enum class KvSource : int { kPacked = 0, kPagesTma = 1, kPagesCopy = 2 };

__device__ __forceinline__ void cp_async_mbar_arrive_noinc(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// The page id lane `lane` loads for key block nb (num_pages, past the map, where its segment lies
// past the sequence's last page; kN / seg lanes take part, seg = min(page_size, kN)).
template <int kN>
__device__ __forceinline__ int paged_block_page(const VarlenParams& p, int64_t b, int nb, int k_len, int lane) {
  const int ps = int(p.page_size);
  const int seg = ps < kN ? ps : kN;  // page sizes >= 8 (varlen_fwd_cuda checks): at most 16 lanes a block
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

// kPagesCopy (the 128 threads of the producer warpgroup, thread tid): key block nb as 128 rows of
// K and V, D / 8 threads a row copying 16 bytes each with cp.async into the 128-byte swizzle that
// TMA would have written (chunk c of row r at slab c / 8, chunk (c % 8) ^ (r % 8)); rows at or
// past the sequence's end are zero-filled (so no V row needs zeroing afterwards). The page of a
// row comes from lane r / page_size of the thread's warp (paged_block_page, called by every warp).
// The caller arrives on the stage's barrier with cp_async_mbar_arrive_noinc.
template <class T, int D, int kN>
__device__ __forceinline__ void copy_paged_block(const VarlenParams& p, int nb, int lane_page, int hk, int k_len, int tid,
                                                 char* k_smem, char* v_smem) {
  constexpr int kChunks = D / 8;
  constexpr int kRowStep = 128 / kChunks;
  constexpr int kSlab = kN * 128;
  const int ps = int(p.page_size);
  const int num_pages = int(p.kv_rows / p.page_size);
  const int c = tid % kChunks;
  const int64_t col = int64_t(hk) * p.k_head_stride + c * 8;  // k and v pages share their strides
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
#pragma unroll 4
  for (int r = tid / kChunks; r < kN; r += kRowStep) {
    const int page = __shfl_sync(0xffffffffu, lane_page, ps < kN ? r / ps : 0);
    const int slot = ps < kN ? r % ps : (nb * kN) % ps + r;
    const bool ok = nb * kN + r < k_len && page < num_pages;
    const int64_t at = ok ? int64_t(page) * p.kv_page_stride + int64_t(slot) * p.k_row_stride + col : 0;
    const int sw = (c / 8) * kSlab + r * 128 + (((c % 8) ^ (r % 8)) << 4);
    cp_async_16(k_smem + sw, k + at, ok);
    cp_async_16(v_smem + sw, v + at, ok);
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

// Key and value rows of a paged KV cache into shared memory (sm80+ cp.async): rows [key0, key0 +
// ROWS) of one kv head of one sequence, each found through the sequence's row of the page table
// (page table[key / page_size], slot key % page_size). K and V pages share their strides, so one
// lookup serves both copies. Rows at or past `end` are zero-filled (0 * garbage could be NaN).
// Every thread copies whole 16-byte chunks, D / 8 consecutive threads one row, so a row's bytes
// leave in one coalesced request.
#pragma once

#include <cstdint>

#include "sm80/smem_tile_sm80.cuh"

namespace scree::cuda_attention {

// Where key rows live: element offsets of one page and of one row inside it; page ids outside the
// cache are clamped into it (a bad table never reads outside the cache; tables are validated
// where they enter scree).
struct PageMap {
  const int32_t* table;  // this sequence's page ids, in order
  int64_t page_stride, row_stride;
  int32_t page_size, last_page;
  int32_t page_shift;  // log2(page_size) when a power of two (the usual 16), else -1

  __device__ __forceinline__ int64_t offset(int32_t key) const {
    int32_t col, slot;
    if (page_shift >= 0) {
      col = key >> page_shift;
      slot = key & (page_size - 1);
    } else {  // one 32-bit division (a 64-bit one is ~100 instructions; keys fit int32)
      col = key / page_size;
      slot = key - col * page_size;
    }
    const int32_t page = min(max(__ldg(table + col), 0), last_page);
    return int64_t(page) * page_stride + int64_t(slot) * row_stride;
  }
};

// Issues the cp.async copies of rows [key0, key0 + ROWS) of k and v (this kv head's first element)
// into sk and sv; the caller commits and waits. The page-table reads of all a thread's rows go out
// before the first copy, so their latency is paid once per tile, not once per row.
template <int THREADS, int ROWS, int D, class T>
__device__ __forceinline__ void load_paged_rows(const SmemTile<ROWS, D>& sk, const SmemTile<ROWS, D>& sv, const T* k,
                                                const T* v, const PageMap& pages, int32_t key0, int32_t end) {
  constexpr int kChunks = D / 8;
  static_assert(THREADS % kChunks == 0 && (ROWS * kChunks) % THREADS == 0, "whole rows per thread pass");
  constexpr int kRowStep = THREADS / kChunks;
  constexpr int kRows = ROWS / kRowStep;  // rows a thread copies
  const int c = int(threadIdx.x) % kChunks, r0 = int(threadIdx.x) / kChunks;
  int64_t at[kRows];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int32_t key = key0 + r0 + i * kRowStep;
    at[i] = key < end ? pages.offset(key) : -1;
  }
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int r = r0 + i * kRowStep;
    const bool ok = at[i] >= 0;
    const int64_t e = (ok ? at[i] : 0) + c * 8;
    cp_async_16(sk.at(r, c), k + e, ok);
    cp_async_16(sv.at(r, c), v + e, ok);
  }
}

}  // namespace scree::cuda_attention

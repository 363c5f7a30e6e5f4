// Paged keys and values for the Hopper forward, copied by the producer warpgroup with cp.async
// (pages whose size is not a multiple of the 128-key tile: 1, 16, 32, 64, ... tokens). TMA pays per
// box, and a 16-token page is 2 KiB a box, 32 boxes a block: the TMA path ran at 1.5-1.6x the
// packed forward there on an H200 (1.05x with 128-token pages; benchmarks/NOTES.md).
//
// Work split of a 128-key block (kN rows) among the 128 producer threads, thread t = 8 g + j:
//  - rows g, g + 16, ..., g + 112 (kN / 16 rows), chunk j (16 bytes) of each 64-column slab, so the
//    eight threads of a row read 128 contiguous bytes and land in the 128-byte swizzle TMA would
//    have written (chunk j of row r at (j ^ r % 8) * 16; r % 8 = g % 8 for all of a thread's rows);
//  - the row offsets: thread (g, j) looks up row g + 16 j only (one page-table read, one division,
//    64-bit products once a block: the per-row version of this measured 3x slower than TMA), and
//    the eight threads of the row group trade them by shuffles (width 8).
// Rows at or past the sequence's end are zero-filled (cp.async with 0 source bytes), so no V row
// needs zeroing and never-written slots (NaN) never reach P V. Each thread arrives on the stage's
// "full" barrier with cp.async.mbarrier.arrive.noinc: the barrier completes when all 128 threads'
// copies have landed, and the producer moves on to the next stage without waiting.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../varlen_tile.cuh"
#include "kv_source.h"
#include "ptx.cuh"

namespace scree::cuda_attention::sm90 {

// Byte offsets (from p.k / p.v) of the K and V row a producer thread looks up for a key block.
struct PagedRowOffsets {
  int64_t k = 0, v = 0;
};

// Thread t's own row of key block nb of sequence b (row t / 8 + 16 (t % 8)); page 0, slot 0 (a
// row that exists) where the row lies past the sequence's end: it is zero-filled, never read.
// Page ids outside [0, num_pages) are clamped, as on the TMA path, so an unvalidated table never
// reads outside the cache. Page sizes that are powers of two (all engines' defaults) shift
// instead of dividing (~20 instructions a block a thread).
template <class T, int kN>
__device__ __forceinline__ PagedRowOffsets paged_own_row(const VarlenParams& p, int64_t b, int nb, int k_len, int hk,
                                                         int t) {
  static_assert(kN == 128, "8 rows a thread: thread (g, j) owns row g + 16 j");
  const int key = nb * kN + t / 8 + 16 * (t % 8);
  int64_t page = 0, slot = 0;
  if (key < k_len) {
    const int ps = int(p.page_size);
    const int col = (ps & (ps - 1)) == 0 ? key >> (__ffs(ps) - 1) : key / ps;
    slot = key - col * ps;
    const int64_t at = b * p.page_table_stride + (col < p.page_table_width ? col : p.page_table_width - 1);
    const int64_t id = p.page_table_int64 ? static_cast<const int64_t*>(p.page_table)[at]
                                          : int64_t(static_cast<const int32_t*>(p.page_table)[at]);
    const int64_t num_pages = p.kv_rows / p.page_size;
    page = id < 0 ? 0 : (id >= num_pages ? num_pages - 1 : id);
  }
  const int64_t base = page * p.kv_page_stride;
  return {int64_t(sizeof(T)) * (base + slot * p.k_row_stride + hk * p.k_head_stride),
          int64_t(sizeof(T)) * (base + slot * p.v_row_stride + hk * p.v_head_stride)};
}

__device__ __forceinline__ void cp_async_16_zfill(uint32_t smem, const char* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_mbar_arrive_noinc(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

// Every cp.async of this thread landed (before it exits).
__device__ __forceinline__ void cp_async_drain() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// How the row offsets travel between the threads of a row group (PagedCopyMode::of: uniform over
// a launch). With both offsets 64-bit a row took ~20 instructions around its 4 cp.async (4
// shuffles, 64-bit adds, the thread index recomputed under 40 registers); with 32-bit offsets in
// 16-byte units (a K or V tensor spanning up to 64 GiB: engines keep one cache tensor a layer) a
// pointer is one shuffle and a 2-instruction multiply-add, 10-11 instructions a row, and V rides
// on K's offset where their row and head strides agree (vLLM's (2, blocks, ...) cache,
// FlashInfer's and SGLang's pools). The producers' instructions take issue slots from the
// consumers' softmax on the same SM sub-partitions: that is what the page walk costs.
struct PagedCopyMode {
  bool narrow, same_rows;
  static __device__ __forceinline__ PagedCopyMode of(const VarlenParams& p, int D) {
    constexpr int64_t kNarrowBytes = int64_t(1) << 36;
    const int64_t pages = p.kv_rows / p.page_size;
    auto span = [&](int64_t row, int64_t head) {  // bytes from the tensor's start to past its last row
      return 2 * ((pages - 1) * p.kv_page_stride + (p.page_size - 1) * row + (p.heads_k - 1) * head + D);
    };
    return {span(p.k_row_stride, p.k_head_stride) <= kNarrowBytes && span(p.v_row_stride, p.v_head_stride) <= kNarrowBytes,
            p.k_row_stride == p.v_row_stride && p.k_head_stride == p.v_head_stride};
  }
};

// Thread t's share of a key block into a stage's K and V tiles (own: the offsets of its own row
// from paged_own_row, read a block ahead; rows_left: the sequence's keys from this block's row
// t / 8 on). All 128 threads of the warpgroup call it together (the shuffles span full warps).
template <int D, int kN, bool kNarrow, bool kSameRows>
__device__ __forceinline__ void copy_paged_rows(const VarlenParams& p, PagedRowOffsets own, int rows_left, int t,
                                                char* k_smem, char* v_smem) {
  constexpr int kSlab = kN * 128;  // bytes of one 64-column slab of a tile
  using Off = std::conditional_t<kNarrow, uint32_t, int64_t>;
  const int g = t / 8, j = t % 8;
  const uint32_t at = uint32_t(g * 128 + ((j ^ (g & 7)) << 4));
  const uint32_t ks = smem_u32(k_smem) + at, vs = smem_u32(v_smem) + at;
  const char* k = static_cast<const char*>(p.k) + 16 * j;
  const char* v = static_cast<const char*>(p.v) + 16 * j;
  const Off mk = kNarrow ? Off(own.k >> 4) : Off(own.k);
  const Off mv = kNarrow ? Off(own.v >> 4) : Off(own.v);
  auto address = [](const char* base, Off o) {
    if constexpr (kNarrow) {  // one IMAD.WIDE.U32 (the compiler split base + 16 o into three instructions)
      uint64_t a;
      asm("mad.wide.u32 %0, %1, 16, %2;" : "=l"(a) : "r"(o), "l"(reinterpret_cast<uint64_t>(base)));
      return reinterpret_cast<const char*>(a);
    } else {
      return base + o;
    }
  };
#pragma unroll
  for (int i = 0; i < kN / 16; ++i) {
    const Off ok = __shfl_sync(0xffffffffu, mk, i, 8);
    const Off ov = kSameRows ? ok : __shfl_sync(0xffffffffu, mv, i, 8);
    const bool valid = 16 * i < rows_left;
    const char* kr = address(k, ok);
    const char* vr = address(v, ov);
#pragma unroll
    for (int s = 0; s < D / 64; ++s) {
      cp_async_16_zfill(ks + i * 2048 + s * kSlab, kr + 128 * s, valid);
      cp_async_16_zfill(vs + i * 2048 + s * kSlab, vr + 128 * s, valid);
    }
  }
}

template <int D, int kN>
__device__ __forceinline__ void copy_paged_block(const VarlenParams& p, PagedCopyMode mode, PagedRowOffsets own,
                                                 int rows_left, int t, char* k_smem, char* v_smem) {
  if (mode.narrow) {
    if (mode.same_rows) return copy_paged_rows<D, kN, true, true>(p, own, rows_left, t, k_smem, v_smem);
    return copy_paged_rows<D, kN, true, false>(p, own, rows_left, t, k_smem, v_smem);
  }
  if (mode.same_rows) return copy_paged_rows<D, kN, false, true>(p, own, rows_left, t, k_smem, v_smem);
  copy_paged_rows<D, kN, false, false>(p, own, rows_left, t, k_smem, v_smem);
}

}  // namespace scree::cuda_attention::sm90

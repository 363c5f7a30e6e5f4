// Packed query tiles for short sequences (the Hopper forward): several whole sequences share one
// 128-row query tile, each row masked to its own sequence's keys (block-diagonal), so a batch of
// 1..64-token sequences computes ~3.5x fewer 128 x 128 blocks than one tile a sequence (the
// lengths' mean over 128: uniform 1..64 fills 8.6% of a per-sequence block, ~30% of a packed one).
// Measured on an H200 (32k tokens of 1..64, 16 heads x 128, NOTES.md): 0.375 -> 0.244 ms; a tile
// still costs ~6 us (its chain of Q load, products, softmax, store is not overlapped with the
// next tile's), so the time did not fall with the blocks.
//
// The schedule is computed on the device, in stream order before the forward (no host sync), by
// one block of pack_tiles_kernel, which also zeroes the forward's tile counter (the memset it
// replaces). Tile entries, in sequence order: {first sequence, end sequence, first row m0, 0}:
//  - a packed tile: consecutive sequences of <= 128 queries whose rows fit 128 and whose keys span
//    at most kPackKeys (rows of one sequence see only its keys, so a wider key span is work no row
//    uses), m0 = 0;
//  - a sequence tile: 128 queries (or the rest) of one longer sequence from row m0, as the
//    per-sequence order has it.
// Greedy in sequence order, restarted every kPackWindow sequences so that a warp packs a window
// alone (one partial tile a window: ~1.5% more tiles at lengths 1..64, none for long sequences);
// 128 sequences a window lets 128 one-token sequences share a tile. Empty sequences own no row
// and only widen an open tile's key span.
// The backward (kByKeys) packs key tiles the same way with queries and keys swapped: whole
// sequences of <= 128 keys share a 128-key tile while their queries span <= kPackKeys (2-4 query
// blocks a head), longer ones get 128-key sequence tiles {b, b + 1, n0, 0}. A packed key tile holds
// every key of its sequences, so it is the only tile that adds to their queries' dQ.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../varlen_tile.cuh"
#include "tile_packing.h"

namespace scree::cuda_attention::sm90 {

using attention::QueryRange;
using attention::visible_queries;

// The greedy of one window, run by a whole warp on shuffled copies of 32 sequences at a time (every
// lane takes the same branches); emit(first, end, m0) on every lane. kByKeys: rows are keys.
template <bool kByKeys, class Emit>
__device__ __forceinline__ void pack_window(const VarlenParams& p, int64_t b0, int64_t b1, Emit&& emit) {
  const int lane = int(threadIdx.x) % 32;
  int64_t open_first = -1, open_end = 0, open_q0 = 0, open_k0 = 0;
  for (int64_t c = b0; c < b1; c += 32) {
    const int64_t mine = c + lane;
    const SeqTile own = mine < b1 ? sequence(p, mine) : SeqTile{0, 0, 0, 0};
    const int n = int(b1 - c < 32 ? b1 - c : 32);
    for (int i = 0; i < n; ++i) {
      const int64_t b = c + i;
      int64_t q0 = __shfl_sync(0xffffffffu, own.q_start, i), k0 = __shfl_sync(0xffffffffu, own.k_start, i);
      int q_len = __shfl_sync(0xffffffffu, own.q_len, i), k_len = __shfl_sync(0xffffffffu, own.k_len, i);
      if constexpr (kByKeys) {  // below, "q" names the packed side
        const int64_t t0 = q0;
        q0 = k0, k0 = t0;
        const int tl = q_len;
        q_len = k_len, k_len = tl;
      }
      if (q_len == 0) continue;
      const bool packable = q_len <= kPackRows && k_len <= kPackKeys;
      if (packable && open_first >= 0 && q0 + q_len - open_q0 <= kPackRows && k0 + k_len - open_k0 <= kPackKeys) {
        open_end = b + 1;
        continue;
      }
      if (open_first >= 0) emit(open_first, open_end, 0);
      open_first = -1;
      if (packable) {
        open_first = b, open_end = b + 1, open_q0 = q0, open_k0 = k0;
      } else {
        for (int m0 = 0; m0 < q_len; m0 += kPackRows) emit(b, b + 1, m0);
      }
    }
  }
  if (open_first >= 0) emit(open_first, open_end, 0);
}

// Exclusive prefix sum of v[0, n) in place by one block of kPackThreads; returns the total.
__device__ __forceinline__ int block_exclusive_scan(int* v, int64_t n, int* warp_sums) {
  const int t = int(threadIdx.x), lane = t % 32, warp = t / 32;
  int carry = 0;
  for (int64_t base = 0; base < n; base += kPackThreads) {
    const int64_t i = base + t;
    const int x = i < n ? v[i] : 0;
    int incl = x;
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += y;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      int w = warp_sums[lane], wi = w;
#pragma unroll
      for (int d = 1; d < 32; d *= 2) {
        const int y = __shfl_up_sync(0xffffffffu, wi, d);
        if (lane >= d) wi += y;
      }
      warp_sums[lane] = wi - w;  // exclusive: the warps before this one
      if (lane == 31) warp_sums[32] = wi;
    }
    __syncthreads();
    if (i < n) v[i] = carry + warp_sums[warp] + incl - x;
    carry += warp_sums[32];
    __syncthreads();
  }
  return carry;
}

// One block: pass 1 counts each window's tiles, a scan places them, pass 2 writes them. (A template
// also for its linkage: every forward and backward instance file launches it.)
template <bool kByKeys = false>
__global__ void __launch_bounds__(kPackThreads) pack_tiles_kernel(const VarlenParams p, PackedTiles s,
                                                                      unsigned long long* tile_counter) {
  __shared__ int warp_sums[33];
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  constexpr int kWarps = kPackThreads / 32;
  if (threadIdx.x == 0) *tile_counter = 0;
  auto window = [&](int64_t w, int64_t& b0, int64_t& b1) {
    b0 = w * kPackWindow;
    b1 = b0 + kPackWindow < p.num_sequences ? b0 + kPackWindow : p.num_sequences;
  };
  for (int64_t w = warp; w < s.windows; w += kWarps) {
    int64_t b0, b1;
    window(w, b0, b1);
    int n = 0;
    pack_window<kByKeys>(p, b0, b1, [&](int64_t, int64_t, int) { ++n; });
    if (lane == 0) s.window_tiles[w] = n;
  }
  __syncthreads();
  const int total = block_exclusive_scan(s.window_tiles, s.windows, warp_sums);
  for (int64_t w = warp; w < s.windows; w += kWarps) {
    int64_t b0, b1;
    window(w, b0, b1);
    int64_t at = s.window_tiles[w];
    pack_window<kByKeys>(p, b0, b1, [&](int64_t first, int64_t end, int m0) {
      if (lane == 0 && at < s.capacity) s.tiles[at] = make_int4(int(first), int(end), m0, 0);
      ++at;
    });
  }
  if (threadIdx.x == 0) *s.count = int(total < s.capacity ? total : s.capacity);
}

// A tile of the schedule as the forward reads it: its rows start at s.q_start + m0 and its keys
// at s.k_start; a packed tile's s spans its sequences (q_len = its rows, k_len = its key span).
struct PackedTileGeometry {
  SeqTile s;
  int m0;
  int64_t first, end;  // sequences [first, end)
  __device__ __forceinline__ bool packed() const { return end - first > 1; }
};

__device__ __forceinline__ PackedTileGeometry packed_tile(const VarlenParams& p, int4 e) {
  PackedTileGeometry g;
  g.first = e.x, g.end = e.y, g.m0 = e.z;
  g.s = sequence(p, g.first);
  if (g.packed()) {
    const SeqTile last = sequence(p, g.end - 1);
    // Offsets are clamped, not trusted (an unvalidated layout): rows within one tile, a key span >= 0.
    const int64_t rows = clamp64(last.q_start + last.q_len - g.s.q_start, 0, kPackRows);
    g.s.q_len = int(rows);
    g.s.k_len = int(clamp64(last.k_start + last.k_len - g.s.k_start, 0, p.total_k - g.s.k_start));
  }
  return g;
}


// The keys (relative to the tile's first key) that row `row` of a packed tile sees: its sequence
// (a binary search over the tile's sequences) and visible_keys there, shifted by where that
// sequence's keys start in the tile.
__device__ __forceinline__ KeyRange packed_row_keys(const VarlenParams& p, const PackedTileGeometry& g, int row) {
  const int64_t q = g.s.q_start + row;
  int64_t lo = g.first, hi = g.end - 1;  // the last sequence of [first, end) starting at or before q
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (clamp64(p.cu_seqlens_q[mid], 0, p.total_q) <= q) lo = mid; else hi = mid - 1;
  }
  const SeqTile s = sequence(p, lo);
  const int64_t shift = s.k_start - g.s.k_start;
  const KeyRange r = visible_keys(p, q - s.q_start, s.q_len, s.k_len);
  return {r.lo + shift, r.hi + shift};
}

// A packed key tile's sequence offsets in shared memory (the backward's; a consumer warpgroup's
// own copy): entry i of sequences [first, end] is where sequence first + i starts in the tile's
// keys and queries. Staged by the warpgroup with one load a thread (one global round trip), so
// that each key row's search runs in shared memory: searched in global memory, the forward's rows
// paid 2-3 dependent loads at every tile's start (6.5 against 3.2 us a tile on an H200, NOTES.md).
struct PackedSeqs {
  int k[kPackRows + 1];  // a packed tile holds at most 128 sequences (one key each at least)
  int q[kPackRows + 1];
};

// Stages sequences [first, end] (end - first <= kPackRows) relative to the tile's first key k0 and
// query q0, by the 128 threads tid of a warpgroup; the caller syncs the warpgroup after it.
__device__ __forceinline__ void stage_packed_seqs(const VarlenParams& p, int64_t first, int64_t end, int64_t q0,
                                                  int64_t k0, int tid, PackedSeqs& out) {
  for (int i = tid; i <= int(end - first) && i <= kPackRows; i += 128) {
    // Clamped (an unvalidated layout): within the tile's keys and query span.
    out.k[i] = int(clamp64(clamp64(p.cu_seqlens_k[first + i], 0, p.total_k) - k0, 0, kPackRows));
    out.q[i] = int(clamp64(clamp64(p.cu_seqlens_q[first + i], 0, p.total_q) - q0, 0, kPackKeys));
  }
}

// The queries (relative to the tile's first query) that key `key` of a packed key tile sees: its
// sequence (the last of the n = end - first staged ones starting at or before it) and
// visible_queries there, shifted by where that sequence's queries start.
__device__ __forceinline__ QueryRange packed_key_queries(const VarlenParams& p, const PackedSeqs& s, int n, int key) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (s.k[mid] <= key) lo = mid; else hi = mid - 1;
  }
  const int k_len = s.k[lo + 1] - s.k[lo], q_len = max(s.q[lo + 1] - s.q[lo], 0);
  const int j = key - s.k[lo];
  const QueryRange r = visible_queries(p, j, j + 1, q_len, k_len);
  return r.hi > r.lo ? QueryRange{r.lo + s.q[lo], r.hi + s.q[lo]} : QueryRange{0, 0};
}

}  // namespace scree::cuda_attention::sm90

// Packed query tiles for short sequences (the Hopper forward): several whole sequences share one
// 128-row query tile, each row masked to its own sequence's keys (block-diagonal), so a batch of
// 1..64-token sequences computes ~3.5x fewer 128 x 128 blocks than one tile a sequence (the
// lengths' mean over 128: uniform 1..64 fills 8.6% of a per-sequence block, ~30% of a packed one).
// Measured on an H200 (32k tokens of 1..64, 16 heads x 128, NOTES.md): 0.375 -> 0.244 ms, then
// 0.202 with 16-byte output stores, the rows' one-round search and this kernel a thread a
// sequence; the forward kernel then moves 2.6 TB/s of its 536 MB (q, k, v, out), so a tile's cost
// is its chain of Q load, products, softmax and store, not its block.
//
// The schedule is computed on the device, in stream order before the forward (no host sync), by
// one block of pack_tiles_kernel, which also zeroes the forward's tile counter (the memset it
// replaces). Tile entries, in sequence order: {first sequence, end sequence, first row m0, 0}:
//  - a packed tile: consecutive sequences of <= 128 queries whose rows fit 128 and whose keys span
//    at most kPackKeys (rows of one sequence see only its keys, so a wider key span is work no row
//    uses), m0 = 0;
//  - a sequence tile: 128 queries (or the rest) of one longer sequence from row m0, as the
//    per-sequence order has it.
// Greedy in sequence order, restarted every kPackWindow sequences so that windows pack side by side
// (one partial tile a window: ~1.5% more tiles at lengths 1..64, none for long sequences);
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

// One window's sequences in shared memory, relative to nothing (totals < 2^31), "q" naming the
// packed side (keys in the backward), and for each sequence t the greedy's answer had a tile been
// opened at t: the last sequence it takes (last[t]) and where the next tile opens (next[t]: the
// first non-empty sequence that does not fit, or the window's end). Computed by a thread a
// sequence, so that the greedy itself is a walk along next[] (one step a tile): run as one warp's
// loop over the window's 128 sequences, the greedy took 42 us of a 0.23 ms tiny-sequence forward
// on an H200 (8 windows, 2 passes; benchmarks/NOTES.md).
struct PackWindow {
  int q0[kPackWindow], q_len[kPackWindow], k0[kPackWindow], k_len[kPackWindow];
  short last[kPackWindow], next[kPackWindow];
  int n;  // sequences in the window
};

__device__ __forceinline__ bool packable(const PackWindow& w, int t) {
  return w.q_len[t] <= kPackRows && w.k_len[t] <= kPackKeys;
}

// Fills w for sequences [b0, b1) (b1 - b0 <= kPackWindow) by the kPackWindow threads t of one
// group; the caller syncs between the two steps (load, then the scan that reads the others').
template <bool kByKeys>
__device__ __forceinline__ void load_window(const VarlenParams& p, int64_t b0, int64_t b1, int t, PackWindow& w) {
  if (t == 0) w.n = int(b1 - b0);
  if (b0 + t >= b1) return;
  const SeqTile s = sequence(p, b0 + t);
  w.q0[t] = int(kByKeys ? s.k_start : s.q_start), w.q_len[t] = kByKeys ? s.k_len : s.q_len;
  w.k0[t] = int(kByKeys ? s.q_start : s.k_start), w.k_len[t] = kByKeys ? s.q_len : s.k_len;
}
__device__ __forceinline__ void scan_window(int t, PackWindow& w) {
  const int n = w.n;
  if (t >= n) return;
  int j = t + 1, last = t;
  if (w.q_len[t] > 0 && packable(w, t)) {  // a tile opened at t takes the sequences that fit
    for (; j < n; ++j) {
      if (w.q_len[j] == 0) continue;  // empty: owns no row, only widens the key span of what follows
      if (!packable(w, j) || w.q0[j] + w.q_len[j] - w.q0[t] > kPackRows || w.k0[j] + w.k_len[j] - w.k0[t] > kPackKeys)
        break;
      last = j;
    }
  } else {  // an empty or unpackable one: the next tile opens at the next non-empty sequence
    while (j < n && w.q_len[j] == 0) ++j;
  }
  w.last[t] = short(last), w.next[t] = short(j);
}

// The greedy of one window in sequence order, by one thread: emit(first, end, m0) for each tile
// (window-relative sequences).
template <class Emit>
__device__ __forceinline__ void walk_window(const PackWindow& w, Emit&& emit) {
  int t = 0;
  while (t < w.n && w.q_len[t] == 0) ++t;
  while (t < w.n) {
    if (packable(w, t)) {
      emit(t, w.last[t] + 1, 0);
    } else {
      for (int m0 = 0; m0 < w.q_len[t]; m0 += kPackRows) emit(t, t + 1, m0);
    }
    t = w.next[t];
  }
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

// One block, kPackGroups windows at a time (a group of kPackWindow threads each): pass 1 counts each
// window's tiles, a scan places them, pass 2 writes them. (A template also for its linkage: every
// forward and backward instance file launches it.)
template <bool kByKeys = false>
__global__ void __launch_bounds__(kPackThreads) pack_tiles_kernel(const VarlenParams p, PackedTiles s,
                                                                      unsigned long long* tile_counter) {
  constexpr int kGroups = kPackThreads / kPackWindow;
  __shared__ PackWindow windows[kGroups];
  __shared__ int warp_sums[33];
  const int t = int(threadIdx.x) % kPackWindow, g = int(threadIdx.x) / kPackWindow;
  PackWindow& win = windows[g];
  if (threadIdx.x == 0) {
    *tile_counter = 0;
    if constexpr (!kByKeys) reinterpret_cast<unsigned*>(tile_counter + 1)[0] = 0;  // the forward's CTA count
  }
  // Every thread runs every round (the block syncs inside); a group past the last window idles.
  auto for_each_window = [&](auto&& per_window) {
    for (int64_t w0 = 0; w0 < s.windows; w0 += kGroups) {
      const int64_t w = w0 + g, b0 = w * kPackWindow;
      const int64_t b1 = w < s.windows ? (b0 + kPackWindow < p.num_sequences ? b0 + kPackWindow : p.num_sequences) : b0;
      load_window<kByKeys>(p, b0, b1, t, win);
      __syncthreads();
      scan_window(t, win);
      __syncthreads();
      if (t == 0 && w < s.windows) per_window(w, b0);
      __syncthreads();
    }
  };
  for_each_window([&](int64_t w, int64_t) {
    int n = 0;
    walk_window(win, [&](int, int, int) { ++n; });
    s.window_tiles[w] = n;
  });
  __syncthreads();
  const int total = block_exclusive_scan(s.window_tiles, s.windows, warp_sums);
  for_each_window([&](int64_t w, int64_t b0) {
    int64_t at = s.window_tiles[w];
    walk_window(win, [&](int first, int end, int m0) {
      if (at < s.capacity) s.tiles[at] = make_int4(int(b0 + first), int(b0 + end), m0, 0);
      ++at;
    });
  });
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

// packed_row_keys for a thread's two rows of one packed tile. A tile of at most kScanSeqs
// sequences reads all its offsets at once (independent loads: one round trip) and picks each row's
// sequence by counting; the binary search above costs 2-3 dependent loads and then the sequence's,
// at every packed tile's start (on an H200, 16% of the tiny-sequence forward's warp samples sat in
// that search; benchmarks/NOTES.md). Lengths 1..64 put ~4 sequences in a 128-row tile.
constexpr int kScanSeqs = 8;
__device__ __forceinline__ void packed_rows_keys(const VarlenParams& p, const PackedTileGeometry& g, const int (&row)[2],
                                                 KeyRange (&out)[2]) {
  const int n = int(g.end - g.first);
  if (n > kScanSeqs) {
#pragma unroll
    for (int r = 0; r < 2; ++r) out[r] = packed_row_keys(p, g, row[r]);
    return;
  }
  int q_off[kScanSeqs + 1], k_off[kScanSeqs + 1];  // offsets of sequences first .. end (clamped, as sequence())
#pragma unroll
  for (int i = 0; i <= kScanSeqs; ++i) {
    q_off[i] = i <= n ? int(clamp64(p.cu_seqlens_q[g.first + i], 0, p.total_q)) : 0;
    k_off[i] = i <= n ? int(clamp64(p.cu_seqlens_k[g.first + i], 0, p.total_k)) : 0;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t q = g.s.q_start + row[r];
    int j = 0;  // the last of the tile's sequences starting at or before q (the binary search's)
#pragma unroll
    for (int i = 1; i < kScanSeqs; ++i) j += i < n && q_off[i] <= q;
    int q0 = 0, q1 = 0, k0 = 0, k1 = 0;
#pragma unroll
    for (int i = 0; i < kScanSeqs; ++i)
      if (i == j) q0 = q_off[i], q1 = q_off[i + 1], k0 = k_off[i], k1 = k_off[i + 1];
    q1 = max(q1, q0), k1 = max(k1, k0);
    const KeyRange v = visible_keys(p, q - q0, q1 - q0, k1 - k0);
    const int64_t shift = k0 - g.s.k_start;
    out[r] = {v.lo + shift, v.hi + shift};
  }
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

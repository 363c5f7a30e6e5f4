// The varlen index math of one tile, read once per thread block: where a sequence's queries and
// keys start and how long they are, and which key blocks a query tile can see. Offsets come from
// device memory and are clamped into [0, total], so bad offsets (not monotone, past the end) give
// empty or shortened sequences, never an out-of-bounds access. Masking rules are the shared
// visible_keys of params.h (bottom-right causal, sliding window).
#pragma once

#include <cstdint>

#include "scree/attention/params.h"

namespace scree::cuda_attention {

using attention::KeyRange;
using attention::VarlenParams;
using attention::visible_keys;

struct SeqTile {
  int64_t q_start, k_start;  // first token of the sequence in q (and out, lse) / in k, v
  int q_len, k_len;          // totals are < 2^31 (validate_cuda), so lengths fit an int
};

__device__ __forceinline__ int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

__device__ __forceinline__ SeqTile sequence(const VarlenParams& p, int64_t b) {
  const int64_t q0 = clamp64(p.cu_seqlens_q[b], 0, p.total_q), q1 = clamp64(p.cu_seqlens_q[b + 1], q0, p.total_q);
  const int64_t k0 = clamp64(p.cu_seqlens_k[b], 0, p.total_k), k1 = clamp64(p.cu_seqlens_k[b + 1], k0, p.total_k);
  return {q0, k0, int(q1 - q0), int(k1 - k0)};
}

// The query tile of a forward-like kernel (grid = sequences x tiles of BLOCK_M queries x query
// heads): its sequence, first row m0, rows in it, query head h and kv head hk (GQA).
struct QueryTile {
  SeqTile s;
  int m0, rows, h, hk;
  bool empty;  // past the sequence's end: the block has nothing to do
};

template <int BLOCK_M>
__device__ __forceinline__ QueryTile query_tile(const VarlenParams& p) {
  QueryTile t;
  t.s = sequence(p, blockIdx.x);
  t.m0 = int(blockIdx.y) * BLOCK_M;
  t.empty = t.m0 >= t.s.q_len;
  t.rows = t.empty ? 0 : min(BLOCK_M, t.s.q_len - t.m0);
  t.h = int(blockIdx.z);
  t.hk = t.h / int(p.heads_q / p.heads_k);
  return t;
}

// Key blocks [begin, end) of size BLOCK_N that query rows [m0, m0 + rows) can see, plus the keys
// every one of those rows sees ([full_lo, full_hi)): blocks inside it need no mask. visible_keys'
// bounds are non-decreasing in the row, so the first and last rows bound the others.
struct KeyBlocks {
  int begin, end;
  int full_lo, full_hi;
};

template <int BLOCK_N>
__device__ __forceinline__ KeyBlocks key_blocks(const VarlenParams& p, const SeqTile& s, int m0, int rows) {
  const KeyRange first = visible_keys(p, m0, s.q_len, s.k_len);
  const KeyRange last = visible_keys(p, m0 + rows - 1, s.q_len, s.k_len);
  KeyBlocks kb;
  kb.begin = int(first.lo) / BLOCK_N;
  kb.end = last.hi > first.lo ? int((last.hi + BLOCK_N - 1) / BLOCK_N) : kb.begin;
  kb.full_lo = int(last.lo);
  kb.full_hi = int(first.hi);
  return kb;
}

// Query blocks [begin, end) of size BLOCK_M that can see some key of [n0, n0 + cols): the rows
// whose visible range meets it. Binary search on the monotone bounds (at most ~32 steps).
template <int BLOCK_M>
__device__ __forceinline__ void query_blocks(const VarlenParams& p, const SeqTile& s, int n0, int cols, int& begin,
                                             int& end) {
  // first row i with hi(i) > n0
  int lo = 0, hi = s.q_len;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (visible_keys(p, mid, s.q_len, s.k_len).hi > n0) hi = mid; else lo = mid + 1;
  }
  const int first = lo;
  // first row i with lo(i) >= n0 + cols (rows from there on see nothing of the block)
  lo = first, hi = s.q_len;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (visible_keys(p, mid, s.q_len, s.k_len).lo >= n0 + cols) hi = mid; else lo = mid + 1;
  }
  begin = first / BLOCK_M;
  end = lo > first ? (lo + BLOCK_M - 1) / BLOCK_M : begin;
}

}  // namespace scree::cuda_attention

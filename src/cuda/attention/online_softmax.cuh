// The per-thread softmax of the forward kernels (sm80 and sm90), written once. A thread holds two
// query rows (r = 0, 1: rows lane/4 and lane/4 + 8 of a 16-row tile) of a score tile s[NT][4] in
// the m16n8 accumulator layout (n-tile j, element e: row e / 2, key 8j + 2(lane % 4) + e % 2),
// and the matching output rows o[DT][4]. step(): q.k products -> scores -> mask -> running
// max -> probabilities in s (ready to be packed as the A operand of P V) and O rescaled
// (softmax_scores + rescale, which the Hopper kernel calls apart).
// store(): O / l and lse = max ln(2) + log(l) (the max is kept in base-2 units); a row that saw no
// key gets 0 and -inf.
//
// This is the forward's inner loop on the CUDA cores, so its instruction count is the kernel's
// speed once the tensor cores are fed (NOTES.md, issue 7: the Hopper kernel was issue-bound at
// ~17 instructions a score). Hence: the running max is kept in base-2 units, so one FFMA gives the
// exp2 argument (folding the scale in when kFolded: no softcap, scale > 0); exp2 is the bare
// ex2.approx.ftz (exp2f adds a range check and two multiplies); the mask is a separate
// instantiation used only on key blocks that need it, with 32-bit column tests; max and sum
// run in two independent chains a row.
#pragma once

#include <cmath>
#include <cstdint>

#include "fragment.cuh"
#include "scores.cuh"
#include "varlen_tile.cuh"

// Lazy rescaling: a row keeps its old running max until the new one exceeds it by more than
// SCREE_RESCALE_THRESHOLD (base-2 units), so probabilities reach at most 2^8 = 256 before the
// final division (exact in fp32 accumulators and no worse in bf16/fp16 P, whose relative precision
// does not depend on size); O and the sum share the stale max, so the result is the same math.
// O is rescaled only when some row of the warp moved its max (a warp vote): after the first blocks
// of a long row that is rare. Measured on an H200 (NOTES.md): in one call mix d128 537 -> 579
// TFLOP/s and short d128 causal 114 -> 130; a second call put the difference within its ~5%
// noise. 0 = move the max on every increase (still voting).
#ifndef SCREE_RESCALE_THRESHOLD
#define SCREE_RESCALE_THRESHOLD 8
#endif

namespace scree::cuda_attention {

struct RowState {
  float max[2] = {-INFINITY, -INFINITY};  // running max of the scores times log2(e)
  float sum[2] = {0.f, 0.f};  // per-thread partial sums; the 4 lanes of a row are added in store()
};

__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Visible keys of a thread's two rows as column bounds relative to its first column in the block
// (key n0 + 2 (lane % 4)): column 8 nt + (e % 2) of row r is kept iff lo[r] <= it < hi[r].
struct ColMask {
  int lo[2], hi[2];
};
__device__ __forceinline__ ColMask col_mask(const KeyRange (&vis)[2], int n0) {
  const int c0 = n0 + 2 * (int(threadIdx.x) % 4);
  return {{int(vis[0].lo) - c0, int(vis[1].lo) - c0}, {int(vis[0].hi) - c0, int(vis[1].hi) - c0}};
}

// kMask: some key of the block is masked for some row; kFolded: s holds q.k and the score is
// ScoreMap::scale times it (ScoreMap::folds()); otherwise the full ScoreMap (softcap) is applied.
template <bool kMask, bool kFolded, int NT>
__device__ __forceinline__ bool softmax_scores_impl(float (&s)[NT][4], RowState& st, const ColMask& mask,
                                                    const ScoreMap& score, float (&alpha)[2]) {
  // s * mult is the score in base-2 units (mult > 0, so maxima commute with it).
  const float mult = kFolded ? score.scale_log2 : kLog2e;
  bool moved = false;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = kFolded ? s[nt][e] : score(s[nt][e]);
      if (kMask) {
        const int c = nt * 8 + (e & 1);
        if (c < mask.lo[e >> 1] || c >= mask.hi[e >> 1]) x = -INFINITY;
      }
      s[nt][e] = x;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m0 = -INFINITY, m1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) m0 = fmaxf(m0, s[nt][2 * r]), m1 = fmaxf(m1, s[nt][2 * r + 1]);
    float mx = fmaxf(st.max[r], quad_max(fmaxf(m0, m1)) * mult);
    if (SCREE_RESCALE_THRESHOLD > 0 && !(mx > st.max[r] + float(SCREE_RESCALE_THRESHOLD))) mx = st.max[r];
    moved |= mx != st.max[r];
    // A row that has seen no key yet keeps max -inf; subtract 0 then so exp gives 0, not NaN.
    const float base = mx == -INFINITY ? 0.f : mx;
    alpha[r] = mx == st.max[r] ? 1.f : exp2_ftz(st.max[r] - base);
    st.max[r] = mx;
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      s[nt][2 * r] = exp2_ftz(fmaf(s[nt][2 * r], mult, -base));
      s[nt][2 * r + 1] = exp2_ftz(fmaf(s[nt][2 * r + 1], mult, -base));
      s0 += s[nt][2 * r];
      s1 += s[nt][2 * r + 1];
    }
    st.sum[r] = st.sum[r] * alpha[r] + (s0 + s1);
  }
  return __any_sync(0xffffffffu, moved);
}

// n0: key index (in the sequence) of column 0 of s; full: no key of the tile is masked for any row.
// Turns the scores in s into probabilities against the new running max and returns in alpha the
// factor that rescales everything accumulated so far (output rows and sums); the sums are
// rescaled here, the output by rescale() — separately, so that the Hopper kernel can compute the
// next probabilities while the previous P V product is still in flight. Returns false when O needs
// no rescaling (alpha is 1 for every row of the warp; warp-uniform).
template <bool kFolded, int NT>
__device__ __forceinline__ bool softmax_scores(float (&s)[NT][4], RowState& st, const KeyRange (&vis)[2], bool full,
                                               int n0, const ScoreMap& score, float (&alpha)[2]) {
  if (full) return softmax_scores_impl<false, kFolded>(s, st, ColMask{}, score, alpha);
  return softmax_scores_impl<true, kFolded>(s, st, col_mask(vis, n0), score, alpha);
}

template <int DT>
__device__ __forceinline__ void rescale(float (&o)[DT][4], const float (&alpha)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) o[dt][2 * r] *= alpha[r], o[dt][2 * r + 1] *= alpha[r];
}

template <bool kFolded, int NT, int DT>
__device__ __forceinline__ void softmax_step(float (&s)[NT][4], float (&o)[DT][4], RowState& st,
                                             const KeyRange (&vis)[2], bool full, int n0, const ScoreMap& score) {
  float alpha[2];
  if (softmax_scores<kFolded>(s, st, vis, full, n0, score, alpha)) rescale(o, alpha);
}

// A thread's two rows' sums over their quad (l) and the factor that normalises them (1 / l; 0 for
// a row that saw no key).
struct RowTotals {
  float l[2], inv[2];
};
__device__ __forceinline__ RowTotals row_totals(const RowState& st) {
  RowTotals t;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    t.l[r] = quad_sum(st.sum[r]);
    t.inv[r] = t.l[r] > 0.f ? 1.f / t.l[r] : 0.f;
  }
  return t;
}

// Row r's lse (natural log; -inf for a row that saw no key).
__device__ __forceinline__ float row_lse(const RowState& st, const RowTotals& t, int r) {
  return t.l[r] > 0.f ? st.max[r] * kLn2 + logf(t.l[r]) : -INFINITY;
}

// Row r's lse (token t0 + row_in_tile[r], head h), by the quad's first lane, where the row is live.
__device__ __forceinline__ void store_lse(const VarlenParams& p, const RowState& st, const RowTotals& t,
                                          const int (&row_in_tile)[2], int rows, int64_t t0, int h) {
  if (p.lse == nullptr || threadIdx.x % 4 != 0) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t tok = t0 + row_in_tile[r];
    if (row_in_tile[r] < rows) p.lse[h * p.total_q + tok] = row_lse(st, t, r);
  }
}

// Writes this thread's two rows: row_in_tile[r] (skipped when >= rows), token index of tile row 0
// = t0, head h; 16-byte stores where the output's rows allow them (store_fragment_row: on an H200
// the tiny-sequence forward's epilogue stalled behind 4-byte ones, queued ahead of the row sums'
// shuffles; benchmarks/NOTES.md).
template <class T, int DT>
__device__ __forceinline__ void store_rows(const VarlenParams& p, const float (&o)[DT][4], const RowState& st,
                                           const RowTotals& t, const int (&row_in_tile)[2], int rows, int64_t t0,
                                           int h) {
  // Uniform over the grid, so the quad's shuffles below run in every lane or in none.
  const bool vector = DT % 4 == 0 && rows_16b(p.out, p.out_row_stride, p.out_head_stride);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    T* out = static_cast<T*>(p.out) + (t0 + row_in_tile[r]) * p.out_row_stride + h * p.out_head_stride;
    store_fragment_row<T>(out, o, r, t.inv[r], row_in_tile[r] < rows, vector);
  }
  store_lse(p, st, t, row_in_tile, rows, t0, h);
}
// store_rows for a head-grouped tile (sm90/head_group_tiles.h): tile row i is token t0 + i / group
// of head h0 + i % group.
template <class T, int DT>
__device__ __forceinline__ void store_grouped_rows(const VarlenParams& p, const float (&o)[DT][4], const RowState& st,
                                                   const RowTotals& t, const int (&row_in_tile)[2], int rows,
                                                   int64_t t0, int h0, int group) {
  const bool vector = DT % 4 == 0 && rows_16b(p.out, p.out_row_stride, p.out_head_stride);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t tok = t0 + row_in_tile[r] / group;
    const int h = h0 + row_in_tile[r] % group;
    const bool live = row_in_tile[r] < rows;
    T* out = static_cast<T*>(p.out) + tok * p.out_row_stride + h * p.out_head_stride;
    store_fragment_row<T>(out, o, r, t.inv[r], live, vector);
    if (p.lse != nullptr && threadIdx.x % 4 == 0 && live) p.lse[h * p.total_q + tok] = row_lse(st, t, r);
  }
}

template <class T, int DT>
__device__ __forceinline__ void store_rows(const VarlenParams& p, const float (&o)[DT][4], const RowState& st,
                                           const int (&row_in_tile)[2], int rows, int64_t t0, int h) {
  store_rows<T>(p, o, st, row_totals(st), row_in_tile, rows, t0, h);
}

}  // namespace scree::cuda_attention

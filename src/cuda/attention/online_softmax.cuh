// The per-thread softmax of the forward kernels (sm80 and sm90), written once. A thread holds two
// query rows (r = 0, 1: rows lane/4 and lane/4 + 8 of a 16-row tile) of a score tile s[NT][4] in
// the m16n8 accumulator layout (n-tile j, element e: row e / 2, key 8j + 2(lane % 4) + e % 2),
// and the matching output rows o[DT][4]. step(): scores -> scale/softcap -> mask -> running
// max -> probabilities in s (ready to be packed as the A operand of P V) and O rescaled
// (softmax_scores + rescale, which the Hopper kernel calls apart).
// store(): O / l and lse = max + log(l); a row that saw no key gets 0 and -inf.
#pragma once

#include <cmath>
#include <cstdint>

#include "mma.cuh"
#include "scores.cuh"
#include "varlen_tile.cuh"

namespace scree::cuda_attention {

struct RowState {
  float max[2] = {-INFINITY, -INFINITY};
  float sum[2] = {0.f, 0.f};  // per-thread partial sums; the 4 lanes of a row are added in store()
};

// n0: key index (in the sequence) of column 0 of s; full: no key of the tile is masked for any row.
// Turns the scores in s into probabilities against the new running max and returns in alpha the
// factor that rescales everything accumulated so far (output rows and sums); the sums are
// rescaled here, the output by rescale() — separately, so that the Hopper kernel can compute the
// next probabilities while the previous P V product is still in flight.
template <int NT>
__device__ __forceinline__ void softmax_scores(float (&s)[NT][4], RowState& st, const KeyRange (&vis)[2], bool full,
                                               int n0, const ScoreMap& score, float (&alpha)[2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = score(s[nt][e]);
      if (!full) {
        const int col = n0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        const KeyRange& r = vis[e >> 1];
        if (col < r.lo || col >= r.hi) x = -INFINITY;
      }
      s[nt][e] = x;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = st.max[r];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
    mx = quad_max(mx);
    // A row that has seen no key yet keeps max -inf; subtract 0 then so exp gives 0, not NaN.
    const float base = mx == -INFINITY ? 0.f : mx * kLog2e;
    alpha[r] = exp2f(st.max[r] * kLog2e - base);
    st.max[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        s[nt][e] = exp2f(s[nt][e] * kLog2e - base);
        sum += s[nt][e];
      }
    }
    st.sum[r] = st.sum[r] * alpha[r] + sum;
  }
}

template <int DT>
__device__ __forceinline__ void rescale(float (&o)[DT][4], const float (&alpha)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int dt = 0; dt < DT; ++dt) o[dt][2 * r] *= alpha[r], o[dt][2 * r + 1] *= alpha[r];
}

template <int NT, int DT>
__device__ __forceinline__ void softmax_step(float (&s)[NT][4], float (&o)[DT][4], RowState& st,
                                             const KeyRange (&vis)[2], bool full, int n0, const ScoreMap& score) {
  float alpha[2];
  softmax_scores(s, st, vis, full, n0, score, alpha);
  rescale(o, alpha);
}

// Writes this thread's two rows: row_in_tile[r] (skipped when >= rows), token index of tile row 0
// = t0, head h.
template <class T, int DT>
__device__ __forceinline__ void store_rows(const VarlenParams& p, const float (&o)[DT][4], const RowState& st,
                                           const int (&row_in_tile)[2], int rows, int64_t t0, int h) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(st.sum[r]);
    if (row_in_tile[r] >= rows) continue;
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int64_t tok = t0 + row_in_tile[r];
    T* out = static_cast<T*>(p.out) + tok * p.out_row_stride + h * p.out_head_stride + (lane % 4) * 2;
#pragma unroll
    for (int dt = 0; dt < DT; ++dt)
      *reinterpret_cast<uint32_t*>(out + dt * 8) = pack2<T>(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    if (p.lse != nullptr && lane % 4 == 0) p.lse[h * p.total_q + tok] = l > 0.f ? st.max[r] + logf(l) : -INFINITY;
  }
}

}  // namespace scree::cuda_attention

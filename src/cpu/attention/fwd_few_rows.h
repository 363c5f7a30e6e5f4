// The CPU forward of an item with few query rows (decoding: one new token over a long cache; the
// last rows of a chunk): each score is a dot product across the head dim, and P V adds each key's
// value row into the item's few output rows. fwd.cpp's blocked kernel puts query rows across the
// vector lanes, so an item of r rows computes a whole vector of W columns (16 with AVX-512 fp32):
// W / r times the work; a one-token decode step ran at 0.33-0.45x padded SDPA (the 2-core AMX
// Xeon VM, benchmarks/diag/cpu_decode.py). Here the work is what the rows need, and under GQA the
// query heads of one kv head share an item (group_few_rows_heads), so K and V are read once for
// them: decode 1.7-2.8x faster, 0.8-1.0x padded SDPA over MHA and 3.3x over GQA 32/8 (NOTES.md,
// session 47). Compiled in every ISA build (the vector width is the build's); the online softmax is
// fwd.cpp's, in the same units (natural log, Q scaled first), so both paths give the same lse.
#pragma once

#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "convert.h"
#include "fwd_common.h"
#include "prefetch.h"
#include "scree/attention/params.h"
#include "simd.h"

SCREE_CPU_NAMESPACE_BEGIN

// Whether an item of `rows` query rows takes this path: the blocked kernel's S^T then fills at most
// a quarter of its W query lanes (AVX-512 fp32: up to 4 rows; AVX2: 2; fp64 AVX-512: 2).
template <class C>
inline bool few_rows(int64_t rows) {
  return rows * 4 <= Simd<C>::width;
}

// Only where the call asks for no lse, i.e. no backward reads this forward: the backward
// recomputes the scores with the blocked kernel's sums, and P = exp(s - lse) from another
// summation order is off by exp(the two sums' rounding difference) on sharp softmaxes. Measured
// (tools/fuzz_attention_kernels.py --device cpu --seed 4703 --replay 11: fp32, one-query rows, GQA
// 12/3, d128, scale 0.79, "ones" values): the FA rule's dk ratio 1.33 with the blocked forward, 3.04
// with this one (dv 0.55 -> 2.04), though this forward's own output was closer (0.86 -> 0.22).
// So inference (no grad, no return_lse: decode steps, paged attention) takes this path.
inline bool few_rows_allowed(const attention::VarlenParams& p) { return p.lse == nullptr && p.lse64 == nullptr; }

// Under GQA, the items of one (sequence, query block) whose query heads share a kv head, merged
// into items of several heads where their rows together are few (few_rows): each then reads its
// keys and values once for all its heads, not once a head. items as forward_items lists them
// (a (sequence, block)'s heads in order); costs and order otherwise kept.
template <class C>
std::vector<WorkItem> group_few_rows_heads(const attention::VarlenParams& p, QueryBlocks qb,
                                           const std::vector<WorkItem>& items) {
  const int64_t group = p.heads_q / p.heads_k;
  if (group <= 1) return items;
  std::vector<WorkItem> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size();) {
    const WorkItem& it = items[i];
    const int64_t Lq = p.cu_seqlens_q[it.seq + 1] - p.cu_seqlens_q[it.seq];
    const int64_t rows = qb.rows(Lq, it.block);
    const int64_t per = few_rows<C>(rows) ? Simd<C>::width / 4 / rows : 1;  // heads an item
    WorkItem merged = it;
    size_t j = i + 1;
    for (; j < items.size() && merged.heads < per; ++j) {
      const WorkItem& w = items[j];
      if (w.seq != it.seq || w.block != it.block || w.head != merged.head + merged.heads ||
          w.head / group != it.head / group)
        break;
      merged.heads += 1, merged.cost += w.cost;
    }
    out.push_back(merged);
    i = j;
  }
  return out;
}

// Scratch of forward_few_rows (the blocked kernel's buffers lend it): q (rows x D), s (rows x
// kKeys), o (rows x Dv_pad), k (kKeys x D) and v (kKeys x Dv_pad) for converted or paged rows, m and
// l (rows).
template <class C>
struct FewRowsScratch {
  C *q, *s, *o, *k, *v, *m, *l;
};

// Keys a block: a multiple of every build's vector width, so a row's scores fill whole vectors.
inline constexpr int64_t kFewRowsKeys = 96;

// o[0, NV W) += sum over keys j in [j0, j1) of p[j] v_j[0, NV W), v_j at v + j ldv: the NV vectors
// of o held in registers over the keys (through memory, each key's add waited for the last one's
// store: 8 x 2048 keys, 8 heads d64, 2485 -> 2234 us).
template <int NV, class C>
inline void add_pv(C* o, const C* p, const C* v, int64_t ldv, int64_t j0, int64_t j1) {
  using V = vec_t<C>;
  constexpr int W = Simd<C>::width;
  V acc[NV];
  for (int u = 0; u < NV; ++u) acc[u] = load<C>(o + u * W);
  for (int64_t j = j0; j < j1; ++j) {
    const V pj = splat<C>(p[j]);
    const C* vr = v + j * ldv;
    for (int u = 0; u < NV; ++u) acc[u] += pj * load<C>(vr + u * W);
  }
  for (int u = 0; u < NV; ++u) store<C>(o + u * W, acc[u]);
}

// The item's rows [g.i0, g.i0 + g.rows) of sequence g.b: out rows and lse as fwd.cpp's forward_block
// writes them. qscale: the score scale (divided by the softcap when capping).
// heads: query heads g.h .. g.h + heads - 1 (one kv head's), g.rows rows each.
template <class T, class C>
void forward_few_rows(const attention::VarlenParams& p, const ItemGeometry& g, int64_t heads, const KvRows<T>& kv,
                      C qscale, FewRowsScratch<C> buf) {
  using V = vec_t<C>;
  constexpr int W = Simd<C>::width;
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  static_assert(kFewRowsKeys % W == 0, "a block's scores fill whole vectors");
  static_assert(W / 4 <= 4, "few_rows admits at most 4 rows (vis below)");
  const int64_t D = p.head_dim, Dv = p.head_dim_v, Dv_pad = round_up(Dv, W), rows = heads * g.rows;
  const bool capped = p.softcap > 0.0;
  const C cap = C(p.softcap);
  // fp32 rows are read where they lie; other types and paged rows are converted block by block.
  const bool in_place = std::is_same_v<T, C> && !p.paged;

  // Row i is query row i % g.rows of head g.h + i / g.rows.
  auto at_head = [&](int64_t i) {
    ItemGeometry gh = g;
    gh.h += i / g.rows;
    return gh;
  };
  attention::KeyRange vis[4];  // (few_rows: at most 4 rows)
  for (int64_t r = 0; r < rows; ++r) {
    to_compute(q_row<T>(p, at_head(r), r % g.rows), buf.q + r * D, D, qscale);
    vis[r] = attention::visible_keys(p, g.i0 + r % g.rows, g.Lq, g.Lk);
    buf.m[r] = kNegInf, buf.l[r] = C(0);
    std::fill(buf.o + r * Dv_pad, buf.o + (r + 1) * Dv_pad, C(0));
  }
  // The bounds grow with the row: the item needs keys [first.lo, last.hi).
  for (int64_t kb = g.first.lo; kb < g.last.hi; kb += kFewRowsKeys) {
    const int64_t n = std::min(kFewRowsKeys, g.last.hi - kb);
    // The block's key (value) rows as the compute type and their stride: in place, or converted
    // into `scratch` (ld apart).
    auto rows_as_compute = [&](auto row, int64_t width, int64_t stride, C* scratch, int64_t ld) {
      if (in_place) return std::pair<const C*, int64_t>{reinterpret_cast<const C*>(row(kb)), stride};
      for (int64_t j = 0; j < n; ++j) {
        if (j + kRowsAhead < n) prefetch_row(row(kb + j + kRowsAhead), width * int64_t(sizeof(T)));
        to_compute(row(kb + j), scratch + j * ld, width, C(1));
      }
      return std::pair<const C*, int64_t>{scratch, ld};
    };
    const auto [kblk, ldk] = rows_as_compute([&](int64_t t) { return kv.key(t); }, D, p.k_row_stride, buf.k, D);
    // Row r's visible keys relative to the block, clipped to it.
    auto visible = [&](int64_t r) {
      const int64_t j0 = std::clamp<int64_t>(vis[r].lo - kb, 0, n);
      return std::pair<int64_t, int64_t>{j0, std::clamp<int64_t>(vis[r].hi - kb, j0, n)};
    };
    // Scores of each row's visible keys in the block (-inf elsewhere, up to a whole vector).
    for (int64_t r = 0; r < rows; ++r) {
      C* s = buf.s + r * kFewRowsKeys;
      const auto [j0, j1] = visible(r);
      std::fill(s, s + j0, kNegInf);
      std::fill(s + j1, s + round_up(n, W), kNegInf);
      const C* q = buf.q + r * D;
      for (int64_t j = j0; j < j1; ++j) {
        if (in_place && r == 0 && j + kRowsAhead < j1) prefetch_row(kblk + (j + kRowsAhead) * ldk, D * int64_t(sizeof(C)));
        s[j] = dot<C>(q, kblk + j * ldk, D);
      }
      if (capped)
        for (int64_t j = j0 / W * W; j < j1; j += W) {
          // (the -inf lanes stay -inf: cap * tanh(-inf) = -cap would make them visible)
          const V x = load<C>(s + j);
          store<C>(s + j, x == splat<C>(kNegInf) ? x : cap * vtanh<C>(x));
        }
    }
    const auto [vblk, ldv] =
        rows_as_compute([&](int64_t t) { return kv.value(t); }, Dv, p.v_row_stride, buf.v, Dv_pad);
    // Online softmax of each row over the block, then O += P V.
    for (int64_t r = 0; r < rows; ++r) {
      C* s = buf.s + r * kFewRowsKeys;
      V mx = splat<C>(kNegInf);
      for (int64_t j = 0; j < n; j += W) mx = vmax<C>(mx, load<C>(s + j));
      const C m_new = std::max(buf.m[r], hmax<C>(mx));
      if (m_new == kNegInf) continue;  // no key of the row seen yet: nothing to add
      const V shift = splat<C>(m_new);
      V sum{};
      for (int64_t j = 0; j < n; j += W) {
        const V e = vexp<C, true>(load<C>(s + j) - shift);
        store<C>(s + j, e);
        sum += e;
      }
      const C alpha = std::exp(buf.m[r] - m_new);  // 0 on the row's first visible block
      buf.l[r] = buf.l[r] * alpha + hsum<C>(sum);
      buf.m[r] = m_new;
      C* o = buf.o + r * Dv_pad;
      if (alpha != C(1))
        for (int64_t d = 0; d < Dv_pad; d += W) store<C>(o + d, load<C>(o + d) * alpha);
      const auto [j0, j1] = visible(r);
      const int64_t dv = Dv / W * W;  // whole vectors of each value row; the rest one value at a time
      int64_t d = 0;
      for (; d + 4 * W <= dv; d += 4 * W) add_pv<4>(o + d, s, vblk + d, ldv, j0, j1);
      for (; d < dv; d += W) add_pv<1>(o + d, s, vblk + d, ldv, j0, j1);
      for (; d < Dv; ++d)
        for (int64_t j = j0; j < j1; ++j) o[d] += s[j] * vblk[j * ldv + d];
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    write_output_row<T>(p, at_head(r), r % g.rows, buf.o + r * Dv_pad, buf.m[r], buf.l[r]);
}

SCREE_CPU_NAMESPACE_END

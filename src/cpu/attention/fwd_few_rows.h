// The CPU forward of an item with few query rows (decoding: one new token over a long cache; the
// last rows of a chunk): each score is a dot product across the head dim, and P V adds each key's
// value row into the item's few output rows. fwd.cpp's blocked kernel puts query rows across the
// vector lanes, so an item of r rows computes a whole vector of W columns (16 with AVX-512 fp32):
// W / r times the work; a one-token decode step ran at 0.33-0.45x padded SDPA (the 2-core AMX
// Xeon VM, benchmarks/diag/cpu_decode.py). Here the work is what the rows need (session 47: decode
// 1.7-2.8x faster). Since session 48 an item holds up to 16 rows of adjacent query heads, reads the
// cache token by token (all its heads' rows of a token together; the query heads of one kv head in
// runs that convert each K and V vector once), reads K and V as stored (bf16 in pair layout,
// convert.h), and a long item is split over its keys on as many threads as it needs, the parts
// combined after: decode another 1.03-1.4x fp32, 1.3-1.7x bf16 (x best 0.87-1.01 over MHA fp32;
// NOTES.md, session 48). Compiled in every ISA build (the vector width is the build's); the online
// softmax is fwd.cpp's, in the same units (natural log, Q scaled first).
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

// Rows of one item at most (its heads' rows together): the blocked kernel's buffers lend q 16 rows.
inline constexpr int64_t kFewRowsMaxRows = 16;
// Keys a block: a multiple of every build's vector width, so a row's scores fill whole vectors.
inline constexpr int64_t kFewRowsKeys = 96;
// Keys a step of P V.
inline constexpr int64_t kPvKeys = 8;

// Only where the call asks for no lse, i.e. no backward reads this forward: the backward
// recomputes the scores with the blocked kernel's sums, and P = exp(s - lse) from another
// summation order is off by exp(the two sums' rounding difference) on sharp softmaxes. Measured
// (tools/fuzz_attention_kernels.py --device cpu --seed 4703 --replay 11: fp32, one-query rows, GQA
// 12/3, d128, scale 0.79, "ones" values): the FA rule's dk ratio 1.33 with the blocked forward, 3.04
// with this one (dv 0.55 -> 2.04), though this forward's own output was closer (0.86 -> 0.22).
// So inference (no grad, no return_lse: decode steps, paged attention) takes this path.
inline bool few_rows_allowed(const attention::VarlenParams& p) { return p.lse == nullptr && p.lse64 == nullptr; }

// The items of one (sequence, query block) with few rows, merged across adjacent query heads into
// items of up to kFewRowsMaxRows rows: an item then reads each key's (and value's) rows of all its
// heads, which lie side by side in the cache, token after token, and the query heads of one kv
// head read them once for all. Per head, a key row was D values in every H D (2 KiB at 8 heads x
// 64 fp32; 8 KiB at 16 x 128: each row on its own page), which the hardware prefetchers do not
// follow: MHA decode read 16-28 GB/s where a plain sum reads ~47 (the 2-core AMX Xeon VM). The
// threads' share of the work comes back by splitting long items over their keys
// (split_few_rows_keys). items as forward_items lists them (a (sequence, block)'s heads in order);
// costs and order kept.
template <class C>
std::vector<WorkItem> group_few_rows_heads(const attention::VarlenParams& p, QueryBlocks qb,
                                           const std::vector<WorkItem>& items) {
  std::vector<WorkItem> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size();) {
    const WorkItem& it = items[i];
    const int64_t Lq = p.cu_seqlens_q[it.seq + 1] - p.cu_seqlens_q[it.seq];
    const int64_t rows = qb.rows(Lq, it.block);
    const int64_t per = few_rows<C>(rows) ? kFewRowsMaxRows / rows : 1;  // heads an item
    WorkItem merged = it;
    size_t j = i + 1;
    for (; j < items.size() && merged.heads < per; ++j) {
      const WorkItem& w = items[j];
      if (w.seq != it.seq || w.block != it.block || w.head != merged.head + merged.heads) break;
      merged.heads += 1, merged.cost += w.cost;
    }
    out.push_back(merged);
    i = j;
  }
  return out;
}

// Keys a part of a split item at least, and the unit its parts' bounds fall on (kFewRowsKeys).
inline constexpr int64_t kFewRowsMinPartKeys = 384;

// The partial results of a call's split items: slot s holds rows x Dv_pad outputs (unnormalised),
// then the rows' maxima and sums.
template <class C>
struct FewRowsParts {
  C* data = nullptr;
  int64_t Dv_pad = 0;
  int64_t stride() const { return kFewRowsMaxRows * (Dv_pad + 2); }
  C* o(int64_t slot) const { return data + slot * stride(); }
  C* m(int64_t slot) const { return o(slot) + kFewRowsMaxRows * Dv_pad; }
  C* l(int64_t slot) const { return m(slot) + kFewRowsMaxRows; }
};

// Keys a part of an item of `keys` keys split `splits` ways: whole blocks, so every part but the last
// starts and ends on one.
inline int64_t few_rows_part_size(int64_t keys, int64_t splits) {
  return round_up((keys + splits - 1) / splits, kFewRowsKeys);
}

// The key range [lo, hi) of part `split` of an item (all of [first.lo, last.hi) when whole): parts of
// equal whole blocks of keys, the last one shorter.
inline attention::KeyRange few_rows_part_keys(const ItemGeometry& g, const WorkItem& item) {
  const int64_t keys = g.last.hi - g.first.lo;
  if (item.splits <= 1) return {g.first.lo, g.last.hi};
  const int64_t chunk = few_rows_part_size(keys, item.splits);
  return {g.first.lo + std::min(keys, item.split * chunk), g.first.lo + std::min(keys, (item.split + 1) * chunk)};
}

// Items of few rows that cost more than a share of the call (half a thread's), split over their
// keys into parts of at least kFewRowsMinPartKeys keys: one long sequence's decode step (one item
// once its heads merge) then runs on every thread, each reading its part of the cache, and the
// parts' results are combined after (combine_few_rows_parts). `items` as group_few_rows_heads left
// them; returns the split items' first parts (their slots start at .slot) and sets `slots`.
template <class C>
std::vector<WorkItem> split_few_rows_keys(const attention::VarlenParams& p, QueryBlocks qb,
                                          std::vector<WorkItem>& items, int threads, int64_t& slots) {
  std::vector<WorkItem> split;
  slots = 0;
  if (threads <= 1) return split;
  double total = 0;
  for (const WorkItem& it : items) total += it.cost;
  const double share = total / (2.0 * threads);
  const size_t n = items.size();
  for (size_t i = 0; i < n; ++i) {
    WorkItem& it = items[i];
    if (it.cost <= share) continue;
    const ItemGeometry g(p, it, qb);
    if (!few_rows<C>(g.rows)) continue;
    const int64_t keys = g.last.hi - g.first.lo;
    int64_t splits = std::min<int64_t>(int64_t(std::ceil(it.cost / share)), keys / kFewRowsMinPartKeys);
    if (splits < 2) continue;
    const int64_t chunk = few_rows_part_size(keys, splits);
    splits = (keys + chunk - 1) / chunk;  // every part holds keys
    it.cost /= double(splits);
    it.splits = splits, it.slot = slots;
    const WorkItem first = it;  // (items grows below)
    split.push_back(first);
    for (int64_t s = 1; s < splits; ++s) {
      WorkItem part = first;
      part.split = s, part.slot = slots + s;
      items.push_back(part);
    }
    slots += splits;
  }
  return split;
}

// Scratch of forward_few_rows (the blocked kernel's buffers lend it): q (rows x D), s (rows x
// kKeys), o (rows x Dv_pad), m and l (rows).
template <class C>
struct FewRowsScratch {
  C *q, *s, *o, *m, *l;
};


// Scores of R query rows (ldq apart at q, pair layout as dot_as) against one key row k, as stored:
// each vector of k converted once for the R rows (under GQA, the query heads of one kv head).
// out[r ldo].
template <int R, class C, class T>
inline void dot_rows(const C* q, int64_t ldq, const T* k, int64_t n, int64_t n2, C* out, int64_t ldo) {
  if constexpr (R == 1) {
    out[0] = dot_as<C>(q, k, n, n2);
  } else {
    constexpr int W = Simd<C>::width;
    vec_t<C> acc[R] = {};
    int64_t i = 0;
    if constexpr (kPairLayout<T, C>) {
      for (; i < n2; i += 2 * W) {
        vec_t<C> e, o;
        load_pair<C>(k + i, e, o);
        for (int r = 0; r < R; ++r) acc[r] += load<C>(q + r * ldq + i) * e + load<C>(q + r * ldq + i + W) * o;
      }
    }
    for (; i + W <= n; i += W) {
      const vec_t<C> kv = load_as<C>(k + i);
      for (int r = 0; r < R; ++r) acc[r] += load<C>(q + r * ldq + i) * kv;
    }
    for (int r = 0; r < R; ++r) {
      C x = hsum<C>(acc[r]);
      for (int64_t t = i; t < n; ++t) x += q[r * ldq + t] * as_compute<C>(k[t]);
      out[r * ldo] = x;
    }
  }
}

// o_r[0, NV W) += sum over keys j in [j0, j1) of p_r[j] v_j[0, NV W) for R rows (o_r at o + r ldo,
// p_r at p + r ldp), v_j at vrow[j] + off, as stored (Paired: o in pair layout, v read as pairs,
// NV even): the R x NV vectors of o held in registers over the keys (through memory, each key's
// add waited for the last one's store: 8 x 2048 keys, 8 heads d64, 2485 -> 2234 us), each vector
// of v converted once for the R rows.
template <int NV, int R, bool Paired, class C, class T>
inline void add_pv(C* o, int64_t ldo, const C* p, int64_t ldp, const T* const* vrow, int64_t off, int64_t j0,
                   int64_t j1) {
  using V = vec_t<C>;
  constexpr int W = Simd<C>::width;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) acc[r][u] = load<C>(o + r * ldo + u * W);
  for (int64_t j = j0; j < j1; ++j) {
    const T* vr = vrow[j] + off;
    V v[NV];
    if constexpr (Paired) {
      static_assert(NV % 2 == 0, "pairs of vectors");
      for (int u = 0; u < NV; u += 2) load_pair<C>(vr + u * W, v[u], v[u + 1]);
    } else {
      for (int u = 0; u < NV; ++u) v[u] = load_as<C>(vr + u * W);
    }
    for (int r = 0; r < R; ++r) {
      const V pj = splat<C>(p[r * ldp + j]);
      for (int u = 0; u < NV; ++u) acc[r][u] += pj * v[u];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) store<C>(o + r * ldo + u * W, acc[r][u]);
}

// O += P V over keys [j0, j1) for R rows: whole vectors in register blocks (4 vectors a row for
// one or two rows, 2 for three or four: at most 8 accumulators with AVX2's 16 registers... 16 with
// AVX-512's 32), the first pair_span values of each row in pair layout, the rest of each value
// row one value at a time.
template <int R, class C, class T>
inline void add_pv_rows(C* o, int64_t ldo, const C* p, int64_t ldp, const T* const* vrow, int64_t off, int64_t Dv,
                        int64_t j0, int64_t j1) {
  constexpr int W = Simd<C>::width;
  constexpr int NV = R <= 2 ? 4 : 2;
  const int64_t dv = Dv / W * W, dv2 = pair_span<T, C>(Dv);
  int64_t d = 0;
  if constexpr (kPairLayout<T, C>) {
    for (; d + NV * W <= dv2; d += NV * W) add_pv<NV, R, true>(o + d, ldo, p, ldp, vrow, off + d, j0, j1);
    for (; d < dv2; d += 2 * W) add_pv<2, R, true>(o + d, ldo, p, ldp, vrow, off + d, j0, j1);
  }
  for (; d + NV * W <= dv; d += NV * W) add_pv<NV, R, false>(o + d, ldo, p, ldp, vrow, off + d, j0, j1);
  for (; d < dv; d += W) add_pv<1, R, false>(o + d, ldo, p, ldp, vrow, off + d, j0, j1);
  for (; d < Dv; ++d)
    for (int r = 0; r < R; ++r)
      for (int64_t j = j0; j < j1; ++j) o[r * ldo + d] += p[r * ldp + j] * as_compute<C>(vrow[j][off + d]);
}

// Runs of up to kRunRows adjacent rows that read the same key and value rows over the same keys of
// a block (the query heads of one kv head at one query row): run i is rows [start[i], start[i + 1]).
inline constexpr int64_t kRunRows = 4;
inline int64_t shared_row_runs(int64_t rows, const int64_t* koff, const int64_t* voff, const int64_t* j0,
                               const int64_t* j1, int64_t* start) {
  int64_t runs = 0;
  for (int64_t r = 0; r < rows;) {
    int64_t e = r + 1;
    while (e < rows && e - r < kRunRows && koff[e] == koff[r] && voff[e] == voff[r] && j0[e] == j0[r] && j1[e] == j1[r])
      ++e;
    start[runs++] = r;
    r = e;
  }
  start[runs] = rows;
  return runs;
}

// The item's rows [g.i0, g.i0 + g.rows) of sequence g.b for query heads g.h .. g.h + heads - 1:
// out rows and lse as fwd.cpp's forward_block writes them. qscale: the score scale (divided by
// the softcap when capping). Keys and values are read token by token, each token's rows of the
// item's heads together (group_few_rows_heads says why), where they lie or through the page table.
template <class T, class C>
void forward_few_rows(const attention::VarlenParams& p, const ItemGeometry& g, const WorkItem& item,
                      const KvRows<T>& kv, C qscale, FewRowsScratch<C> buf, const FewRowsParts<C>& parts) {
  const int64_t heads = item.heads;
  using V = vec_t<C>;
  constexpr int W = Simd<C>::width;
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  static_assert(kFewRowsKeys % W == 0, "a block's scores fill whole vectors");
  const int64_t D = p.head_dim, Dv = p.head_dim_v, Dv_pad = round_up(Dv, W), rows = heads * g.rows;
  const int64_t group = p.heads_q / p.heads_k;
  const int64_t D2 = pair_span<T, C>(D);  // q's and k's values taken in pair layout (bf16; convert.h)
  const bool capped = p.softcap > 0.0;
  const C cap = C(p.softcap);

  // Row i is query row i % g.rows of head g.h + i / g.rows, whose key (value) row of token t is
  // kv's row t plus koff[i] (voff[i]).
  auto at_head = [&](int64_t i) {
    ItemGeometry gh = g;
    gh.h += i / g.rows;
    return gh;
  };
  attention::KeyRange vis[kFewRowsMaxRows];
  int64_t koff[kFewRowsMaxRows], voff[kFewRowsMaxRows];
  for (int64_t r = 0; r < rows; ++r) {
    to_compute(q_row<T>(p, at_head(r), r % g.rows), buf.q + r * D, D, qscale);
    to_pair_layout(buf.q + r * D, pair_span<T, C>(D));
    vis[r] = attention::visible_keys(p, g.i0 + r % g.rows, g.Lq, g.Lk);
    const int64_t kvh = (g.h + r / g.rows) / group - g.kvh;
    koff[r] = kvh * p.k_head_stride, voff[r] = kvh * p.v_head_stride;
    buf.m[r] = kNegInf, buf.l[r] = C(0);
    std::fill(buf.o + r * Dv_pad, buf.o + (r + 1) * Dv_pad, C(0));
  }
  // The item's heads' span of a token's key (value) row (from row 0's kv head, koff[0] = 0), asked
  // for kRowsAhead tokens ahead, past the block's end too. (16 and 32 KiB ahead instead: no gain,
  // session 48.)
  const int64_t kspan = (koff[rows - 1] + D) * int64_t(sizeof(T)), vspan = (voff[rows - 1] + Dv) * int64_t(sizeof(T));
  constexpr int64_t ahead = kRowsAhead;
  // Not where the item reads whole rows of a contiguous cache (MHA, all heads merged): the hardware
  // streams those, and the prefetches were work (128 an 8 KiB token at 16 heads x 128 fp32). Without
  // them there: MHA d64 decode -5..-10% fp32, -10..-12% bf16; GQA items (part of each row) lost
  // 10-15% without them (the VM, session 48).
  const bool k_ahead = p.paged || kspan < p.k_row_stride * int64_t(sizeof(T));
  const bool v_ahead = p.paged || vspan < p.v_row_stride * int64_t(sizeof(T));
  const T* krow[kFewRowsKeys];
  const T* vrow[kFewRowsKeys];
  // The bounds grow with the row: the item needs keys [first.lo, last.hi), a part of it its share.
  const attention::KeyRange keys = few_rows_part_keys(g, item);
  for (int64_t kb = keys.lo; kb < keys.hi; kb += kFewRowsKeys) {
    const int64_t n = std::min(kFewRowsKeys, keys.hi - kb);
    for (int64_t j = 0; j < n; ++j) krow[j] = kv.key(kb + j), vrow[j] = kv.value(kb + j);
    // Row r's visible keys relative to the block, clipped to it; the block's keys any row sees.
    int64_t j0[kFewRowsMaxRows], j1[kFewRowsMaxRows], lo = n, hi = 0;
    for (int64_t r = 0; r < rows; ++r) {
      j0[r] = std::clamp<int64_t>(vis[r].lo - kb, 0, n);
      j1[r] = std::clamp<int64_t>(vis[r].hi - kb, j0[r], n);
      if (j0[r] < j1[r]) lo = std::min(lo, j0[r]), hi = std::max(hi, j1[r]);
      std::fill(buf.s + r * kFewRowsKeys, buf.s + r * kFewRowsKeys + round_up(n, W), kNegInf);
    }
    // Scores of each row's visible keys in the block (-inf elsewhere, up to a whole vector).
    int64_t run[kFewRowsMaxRows + 1];
    const int64_t runs = shared_row_runs(rows, koff, voff, j0, j1, run);
    for (int64_t j = lo; j < hi; ++j) {
      if (k_ahead && kb + j + ahead < keys.hi) prefetch_row(kv.key(kb + j + ahead), kspan);
      for (int64_t i = 0; i < runs; ++i) {
        const int64_t r = run[i];
        if (j < j0[r] || j >= j1[r]) continue;
        const C* q = buf.q + r * D;
        const T* k = krow[j] + koff[r];
        C* out = buf.s + r * kFewRowsKeys + j;
        switch (run[i + 1] - r) {
          case 1: dot_rows<1>(q, D, k, D, D2, out, kFewRowsKeys); break;
          case 2: dot_rows<2>(q, D, k, D, D2, out, kFewRowsKeys); break;
          case 3: dot_rows<3>(q, D, k, D, D2, out, kFewRowsKeys); break;
          default: dot_rows<4>(q, D, k, D, D2, out, kFewRowsKeys); break;
        }
      }
    }
    if (capped)
      for (int64_t r = 0; r < rows; ++r) {
        C* s = buf.s + r * kFewRowsKeys;
        for (int64_t j = j0[r] / W * W; j < j1[r]; j += W) {
          // (the -inf lanes stay -inf: cap * tanh(-inf) = -cap would make them visible)
          const V x = load<C>(s + j);
          store<C>(s + j, x == splat<C>(kNegInf) ? x : cap * vtanh<C>(x));
        }
      }
    // Online softmax of each row over the block (P in place of S); a row that has seen no key yet
    // adds nothing (its range emptied).
    for (int64_t r = 0; r < rows; ++r) {
      C* s = buf.s + r * kFewRowsKeys;
      V mx = splat<C>(kNegInf);
      for (int64_t j = 0; j < n; j += W) mx = vmax<C>(mx, load<C>(s + j));
      const C m_new = std::max(buf.m[r], hmax<C>(mx));
      if (m_new == kNegInf) {
        j1[r] = j0[r];
        continue;
      }
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
    }
    // O += P V, kPvKeys tokens at a time (their value rows of all the item's heads stay in L1), run
    // by run within them, its outputs in registers. The runs again: a row that has seen no key yet
    // (all its scores -inf: only from infinite inputs where its keys are visible) has an empty range
    // now and leaves its run.
    const int64_t pv_runs = shared_row_runs(rows, koff, voff, j0, j1, run);
    for (int64_t jc = lo; jc < hi; jc += kPvKeys) {
      for (int64_t t = kb + jc + ahead; v_ahead && t < std::min(kb + jc + ahead + kPvKeys, keys.hi); ++t)
        prefetch_row(kv.value(t), vspan);
      for (int64_t i = 0; i < pv_runs; ++i) {
        const int64_t r = run[i];
        const int64_t a = std::max(j0[r], jc), e = std::min(j1[r], jc + kPvKeys);
        if (a >= e) continue;
        C* o = buf.o + r * Dv_pad;
        const C* pr = buf.s + r * kFewRowsKeys;
        switch (run[i + 1] - r) {
          case 1: add_pv_rows<1>(o, Dv_pad, pr, kFewRowsKeys, vrow, voff[r], Dv, a, e); break;
          case 2: add_pv_rows<2>(o, Dv_pad, pr, kFewRowsKeys, vrow, voff[r], Dv, a, e); break;
          case 3: add_pv_rows<3>(o, Dv_pad, pr, kFewRowsKeys, vrow, voff[r], Dv, a, e); break;
          default: add_pv_rows<4>(o, Dv_pad, pr, kFewRowsKeys, vrow, voff[r], Dv, a, e); break;
        }
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) from_pair_layout(buf.o + r * Dv_pad, pair_span<T, C>(Dv));
  if (item.splits > 1) {  // a part: its rows' partial results, combined after
    for (int64_t r = 0; r < rows; ++r) {
      std::copy(buf.o + r * Dv_pad, buf.o + r * Dv_pad + Dv, parts.o(item.slot) + r * parts.Dv_pad);
      parts.m(item.slot)[r] = buf.m[r], parts.l(item.slot)[r] = buf.l[r];
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    write_output_row<T>(p, at_head(r), r % g.rows, buf.o + r * Dv_pad, buf.m[r], buf.l[r]);
}

// The output rows of the split items (split_few_rows_keys's list): each row's parts rescaled to
// their common maximum and summed (the online softmax's step, once a part).
template <class T, class C>
void combine_few_rows_parts(const attention::VarlenParams& p, QueryBlocks qb, const std::vector<WorkItem>& split,
                            const FewRowsParts<C>& parts) {
  const int64_t Dv = p.head_dim_v;
  for (const WorkItem& it : split) {
    ItemGeometry g(p, it, qb);
    const int64_t h0 = g.h;
    for (int64_t r = 0; r < it.heads * g.rows; ++r) {
      C m = -std::numeric_limits<C>::infinity();
      for (int64_t s = 0; s < it.splits; ++s) m = std::max(m, parts.m(it.slot + s)[r]);
      C* o = parts.o(it.slot) + r * parts.Dv_pad;  // the sum, in part 0's row
      C l = C(0);
      if (m == -std::numeric_limits<C>::infinity()) {
        std::fill(o, o + Dv, C(0));  // no key seen: as a whole item writes it
      } else {
        for (int64_t s = 0; s < it.splits; ++s) {
          const C ms = parts.m(it.slot + s)[r];
          const C a = ms == -std::numeric_limits<C>::infinity() ? C(0) : std::exp(ms - m);
          const C* os = parts.o(it.slot + s) + r * parts.Dv_pad;
          l += a * parts.l(it.slot + s)[r];
          if (s == 0) {
            for (int64_t d = 0; d < Dv; ++d) o[d] = a * os[d];
          } else {
            for (int64_t d = 0; d < Dv; ++d) o[d] += a * os[d];
          }
        }
      }
      g.h = h0 + r / g.rows;
      write_output_row<T>(p, g, r % g.rows, o, m, l);
    }
  }
}

SCREE_CPU_NAMESPACE_END

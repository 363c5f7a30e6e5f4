// A forward work item of the CPU attention, as both forward kernels see it: the fp32 kernel
// (fwd.cpp, every ISA build) and the AMX bf16 kernel (fwd_amx.cpp, the amx build only). Here:
// the item list (sequence x query head x query block, most expensive first), an item's place in
// the batch, key/value row lookup (in place or through the page table), and the output epilogue
// (normalise by the row sum, store in the output type, write lse). What differs between the two
// kernels (operand layouts, the products, the softmax's orientation) stays in their files.
#pragma once

#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "convert.h"
#include "prefetch.h"
#include "scree/attention/params.h"
#include "work.h"

SCREE_CPU_NAMESPACE_BEGIN

// A sequence's query blocks: `block` rows each, the last taking the rest of the rows up to `tail`
// (>= block; tail = block: the remainder is a block of its own).
struct QueryBlocks {
  int64_t block, tail;
  int64_t count(int64_t Lq) const {
    return Lq <= 0 ? 0 : std::max<int64_t>(1, (Lq - (tail - block) + block - 1) / block);
  }
  int64_t rows(int64_t Lq, int64_t j) const { return j + 1 == count(Lq) ? Lq - j * block : block; }
};

// Items of a forward over query blocks `qb`; `flops` gets their total (2 x cost).
// Cost = rows x visible keys x (D + Dv): what the two products of the item do.
inline std::vector<WorkItem> forward_items(const attention::VarlenParams& p, QueryBlocks qb, double& flops) {
  std::vector<WorkItem> items;
  flops = 0;
  for (int64_t b = 0; b < p.num_sequences; ++b) {
    const int64_t Lq = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    const int64_t Lk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    for (int64_t blk = 0, n = qb.count(Lq); blk < n; ++blk) {
      const int64_t i0 = blk * qb.block, rows = qb.rows(Lq, blk);
      const attention::KeyRange first = attention::visible_keys(p, i0, Lq, Lk);
      const attention::KeyRange last = attention::visible_keys(p, i0 + rows - 1, Lq, Lk);
      const double cost = double(rows) * double(std::max<int64_t>(last.hi - first.lo, 1)) *
                          double(p.head_dim + p.head_dim_v);
      for (int64_t h = 0; h < p.heads_q; ++h) {
        items.push_back({b, h, blk, cost});
        flops += 2 * cost;
      }
    }
  }
  return items;
}

// Where an item sits: sequence b, query head h (kv head kvh under GQA), its sequence's first
// query / key rows q0 / k0 and lengths, and its query rows [i0, i0 + rows) of the sequence.
// Keys it needs: [first.lo, last.hi) (both bounds of visible_keys grow with the row).
struct ItemGeometry {
  int64_t b, h, kvh, q0, k0, Lq, Lk, i0, rows;
  attention::KeyRange first, last;
  ItemGeometry(const attention::VarlenParams& p, const WorkItem& item, QueryBlocks qb)
      : b(item.seq), h(item.head), kvh(item.head / (p.heads_q / p.heads_k)) {
    q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
    Lq = p.cu_seqlens_q[b + 1] - q0, Lk = p.cu_seqlens_k[b + 1] - k0;
    i0 = item.block * qb.block, rows = qb.rows(Lq, item.block);
    first = attention::visible_keys(p, i0, Lq, Lk);
    last = attention::visible_keys(p, i0 + rows - 1, Lq, Lk);
  }
};

// Key and value rows of one (sequence, kv head): row t of the sequence in place (rows in
// cu_seqlens_k order) or, with p.paged, through the page table (page ids clamped into the rows,
// as the entry point's check allows).
template <class T>
struct KvRows {
  const attention::VarlenParams& p;
  int64_t b, Lk;
  const T *K, *V;    // the sequence's first key / value row (null without keys: validate allows it)
  const T *Kp, *Vp;  // row 0 of the paged cache for this kv head
  int64_t num_pages;
  KvRows(const attention::VarlenParams& p_, int64_t b_, int64_t kvh, int64_t k0, int64_t Lk_)
      : p(p_), b(b_), Lk(Lk_) {
    // No keys: k and v may be null, and an offset on a null pointer is undefined.
    K = Lk == 0 ? nullptr : static_cast<const T*>(p.k) + k0 * p.k_row_stride + kvh * p.k_head_stride;
    V = Lk == 0 ? nullptr : static_cast<const T*>(p.v) + k0 * p.v_row_stride + kvh * p.v_head_stride;
    Kp = static_cast<const T*>(p.k) + kvh * p.k_head_stride;
    Vp = static_cast<const T*>(p.v) + kvh * p.v_head_stride;
    num_pages = p.paged ? p.kv_rows / p.page_size : 0;
  }
  int64_t paged_row(int64_t t) const {
    const int64_t col = std::min(t / p.page_size, p.page_table_width - 1);
    const int64_t at = b * p.page_table_stride + col;
    int64_t page = p.page_table_int64 ? static_cast<const int64_t*>(p.page_table)[at]
                                      : static_cast<const int32_t*>(p.page_table)[at];
    page = std::min(std::max(page, int64_t(0)), num_pages - 1);
    return page * p.page_size + t % p.page_size;
  }
  const T* key(int64_t t) const { return p.paged ? Kp + paged_row(t) * p.k_row_stride : K + t * p.k_row_stride; }
  const T* value(int64_t t) const { return p.paged ? Vp + paged_row(t) * p.v_row_stride : V + t * p.v_row_stride; }
};

// Row r of the item in the queries, and in the output.
template <class T>
inline const T* q_row(const attention::VarlenParams& p, const ItemGeometry& g, int64_t r) {
  return static_cast<const T*>(p.q) + (g.q0 + g.i0 + r) * p.q_row_stride + g.h * p.q_head_stride;
}
template <class T>
inline T* out_row(const attention::VarlenParams& p, const ItemGeometry& g, int64_t r) {
  return static_cast<T*>(p.out) + (g.q0 + g.i0 + r) * p.out_row_stride + g.h * p.out_head_stride;
}

// Query row r of the item: orow (Dv values, O = sum P V unnormalised, in the compute type C,
// scratch that may be overwritten) divided by the row sum l, stored in the output type T; lse =
// m + log(l) (m the row's running max, in natural-log units). A row that saw no key (l = 0) outputs
// 0, lse -inf.
template <class T, class C>
inline void write_output_row(const attention::VarlenParams& p, const ItemGeometry& g, int64_t r, C* orow, C m, C l) {
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  const C inv = l > C(0) ? C(1) / l : C(0);
  T* out = out_row<T>(p, g, r);
#if defined(__AVX512BF16__)
  // bf16 out (the amx build): 16 values per VCVTNEPS2BF16 (nearest even, NaN kept; it flushes
  // denormal results to 0, |x| < 1.2e-38), not from_compute's scalar rounding: AMX forward
  // +2.5-4.6% on D 128 causal / 64-token sequences, 0 elsewhere (interleaved A/B, same bits).
  if constexpr (std::is_same_v<T, bfloat16>) {
    const __m512 vinv = _mm512_set1_ps(inv);
    for (int64_t d = 0; d < p.head_dim_v; d += 16) {
      const __mmask16 m = p.head_dim_v - d >= 16 ? __mmask16(0xffff) : __mmask16((1u << (p.head_dim_v - d)) - 1);
      const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, orow + d), vinv);
      _mm256_mask_storeu_epi16(out + d, m, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)));
    }
  } else
#endif
  if constexpr (std::is_same_v<T, C>) {
    for (int64_t d = 0; d < p.head_dim_v; ++d) out[d] = orow[d] * inv;  // one pass: fp32 / fp64 out
  } else {
    for (int64_t d = 0; d < p.head_dim_v; ++d) orow[d] *= inv;
    from_compute(orow, out, p.head_dim_v);
  }
  // No lse asked for (a call that neither returns nor keeps it): no log, which the compiler keeps
  // otherwise (std::log may set errno): logf held ~5% of a short-sequence forward's samples (perf, this Xeon).
  bool want64 = false;
  if constexpr (std::is_same_v<C, double>) want64 = p.lse64 != nullptr;  // float64 inputs: lse in their precision
  if (p.lse == nullptr && !want64) return;
  const C lse = l > C(0) ? m + std::log(l) : kNegInf;
  const int64_t at = g.h * p.total_q + g.q0 + g.i0 + r;
  if (p.lse != nullptr) p.lse[at] = float(lse);
  if constexpr (std::is_same_v<C, double>)
    if (want64) p.lse64[at] = lse;
}

SCREE_CPU_NAMESPACE_END

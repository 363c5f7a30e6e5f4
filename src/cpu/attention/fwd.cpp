// CPU varlen attention forward: flash-style blocked attention with online softmax in the compute
// type (fp32; fp64 for fp64 inputs). Work item = (sequence, query head, block of block_rows() query
// rows, the last up to query_blocks()'s tail); for each block of kBlockK keys: S = Q K^T (gemm),
// softcap, mask, online softmax, O += P V.
// Compiled once per ISA (CMake: generic, avx2, avx512, avx512bf16, amx); the namespace SCREE_CPU_ISA
// keeps the copies apart and attention_cpu.cpp picks one at run time. bfloat16 inputs: in the amx
// build fwd_amx.cpp (tile products); in the avx512bf16 build this file's code with both products
// on VDPBF16PS (bf16_pairs.h: Q, K as they are, P rounded to bf16 as the AMX and GPU kernels do);
// elsewhere converted to fp32. Every other type runs the fp32 / fp64 code in every build.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "aligned.h"
#include "bf16_pairs.h"
#include "convert.h"
#include "fwd_common.h"
#include "fwd_few_rows.h"
#if defined(SCREE_CPU_AMX)
#include "fwd_amx.h"
#endif
#include "gemm.h"
#include "scree/attention/params.h"
#include "simd.h"
#include "work.h"
#include "workspace.h"

#ifndef SCREE_CPU_ISA
#error "SCREE_CPU_ISA must name the instruction-set variant this file is compiled for"
#endif

namespace scree::cpu::SCREE_CPU_ISA {

using attention::KeyRange;
using attention::VarlenParams;
using attention::visible_keys;

namespace {

// Block sizes: multiples of 6 (the micro-kernel's rows) and of 16 (its columns), so no block leaves
// a short remainder tile. Per-thread working set for D = Dv = 128 in fp32, 192 query rows: Q^T
// 128x192 (96 KiB) + K 96x128 (48 KiB, only when converted) + V 96x128 (48 KiB, idem) + S^T 96x192
// (72 KiB) + O 192x128 (96 KiB) = at most 360 KiB, inside the L2 (2 MiB on the Xeon, 512 KiB on
// the EPYC VM).
constexpr int64_t kBlockK = 96;
constexpr int64_t kBlockQMax = 192;

// Query rows per item: 192 (each row tile of K, read by broadcasts, then serves 6 column panels of
// S^T instead of 3): +4.6-10.6% on long and mixed lengths (A/B, this Xeon, after gemm's
// row-tiles-outermost order). Under a causal mask 96 rows won while masked blocks were computed
// whole; with their masked tiles skipped (gemm_panel_rows / gemm_rows_keys), 192 measured +2..6%
// there too (benchmarks/NOTES.md, issue 20). Calls whose sequences are all <= 192 rows keep 96
// (8..128-token sequences: D 64 +6%, D 128 -5%).
inline int64_t block_rows(const VarlenParams& p) { return p.max_seqlen_q <= kBlockQMax ? 96 : kBlockQMax; }
// A sequence's last 96-row block takes up to 32 more rows: the bench's 8..128-token `short` then
// computes a sequence of 97..128 as one item, not 96 rows and 1..32 (an item of 1..32 rows runs
// S^T on one or two column panels, each K row tile's broadcasts serving little).
inline QueryBlocks query_blocks(const VarlenParams& p) {
  const int64_t block = block_rows(p);
  return {block, block < kBlockQMax ? block + 32 : block};
}

// bfloat16 on VDPBF16PS (the avx512bf16 build; bf16_pairs.h).
#if defined(SCREE_CPU_BF16_PAIRS)
template <class T>
inline constexpr bool kPairsFor = std::is_same_v<T, bfloat16>;
#else
template <class T>
inline constexpr bool kPairsFor = false;
#endif

// On a line (aligned.h): Q^T is read by zmm loads for every FMA pair of S^T, S^T and O are the
// products' C; from std::vector every such load split a line (16-byte aligned).
template <class T>
struct Buffers {
  using C = compute_t<T>;
  LineVector<C> qt, k, v, st, o, m, mx, l, lo, hi, row, vrow;
  LineVector<uint32_t> p2, v2;  // with pairs: P^T (key pairs x queries), V (key pairs x Dv_pad)
  std::vector<int64_t> key_lo, key_hi, panel_lo, panel_hi;  // visible keys per row / per S^T column panel
  Buffers(int64_t D, int64_t Dv_pad, int64_t rows) {
    if constexpr (kPairsFor<T>) {  // qt, k and row then hold Q^T, K and Q rows as words
      p2.resize(kBlockK / 2 * rows);
      v2.resize(kBlockK / 2 * Dv_pad);
    }
    qt.resize(D * rows);
    k.resize(kBlockK * D);
    v.resize(kBlockK * Dv_pad);
    st.resize(kBlockK * rows);
    o.resize(rows * Dv_pad);
    m.resize(rows);
    mx.resize(rows);
    l.resize(rows);
    lo.resize(rows);
    hi.resize(rows);
    row.resize(16 * D);
    vrow.resize(Dv_pad);
    key_lo.resize(rows);
    key_hi.resize(rows);
    panel_lo.resize(rows);
    panel_hi.resize(rows);
  }
};

// One work item. The scores are computed transposed, S^T = K Q^T (keys x queries): the K block is
// then the broadcast operand and is read in place (fp32) or converted row by row (fp16/bf16),
// never transposed, and the online softmax runs across query columns, one vector per key row, with
// no horizontal reductions. Q^T is packed once per item and reused by every key block.
template <class T>
void forward_block(const VarlenParams& p, const WorkItem& item, Buffers<T>& buf,
                   const FewRowsParts<compute_t<T>>& parts) {
  using C = compute_t<T>;
  using V = vec_t<C>;
  constexpr int W = Simd<C>::width;
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  const int64_t D = p.head_dim, Dv = p.head_dim_v, Dv_pad = round_up(Dv, 2 * W);
  const ItemGeometry g(p, item, query_blocks(p));
  const int64_t i0 = g.i0, rows = g.rows, Lq = g.Lq, Lk = g.Lk;
  // Query columns of S^T, zero-padded to whole vectors (gemm's last column panel may be one vector
  // wide): a 16-row item computes 16 columns, not 32 (AVX-512 fp32).
  const int64_t cols = round_up(rows, W);
  const bool capped = p.softcap > 0.0;
  const C cap = C(p.softcap);
  const bool band = attention::banded(p);
  // fp32 K and V are used where they lie (row strides as given); other types, and rows read
  // through a page table, are converted (copied) row by row.
  const bool k_in_place = std::is_same_v<T, C> && !p.paged;
  const bool v_in_place = k_in_place && Dv == Dv_pad;
  // An item of more than 4 row tiles copies each V block panel by panel (the n rows of each
  // 2-vector column panel in one run, gemm.h's b_panel), reading V's rows once. Read in place,
  // every row tile of P V went through all of a block's V rows again, each on its own line 2-4 KiB
  // from the last (8 heads x 64-128), a stride the prefetchers do not follow: those loads held 46%
  // of P V's samples (perf, 2 x 2048 d128 causal). A/B (one thread, this Ice Lake VM, rows 4 KiB
  // apart): 2 x 2048 d128 causal -13..-22%, not causal -11..-32%, d64 causal -7..-19%, 64 x 96 d128
  // -5..-13%, 128 x 48 (4 row tiles) even, 4 x 16 +9%; rows 2 KiB apart gain less (0.95-1.2x,
  // cpu_attn_ab.sh at hidden 512; benchmarks/NOTES.md, issue 20).
  const bool v_panels = rows > 4 * kTileRows;
  const KvRows<T> kv(p, g.b, g.kvh, g.k0, Lk);
  if (item.heads > 1 || (few_rows<C>(rows) && few_rows_allowed(p))) {  // (fwd_few_rows.h)
    static_assert(kFewRowsKeys <= kBlockK, "the few-rows path's blocks fit the buffers");
    return forward_few_rows<T, C>(p, g, item, kv, capped ? C(p.scale / p.softcap) : C(p.scale),
                                  {buf.row.data(), buf.st.data(), buf.o.data(), buf.m.data(), buf.l.data()}, parts);
  }
  auto q_at = [&](int64_t r) { return q_row<T>(p, g, r); };

  // Q^T (D x cols), pre-multiplied by scale (and 1/softcap when capping, so tanh sees s / softcap).
  const C qscale = capped ? C(p.scale / p.softcap) : C(p.scale);
  C* qt = buf.qt.data();
  // 8 rows at a time into a row-major block, then each d's 8 values as one contiguous run of Q^T:
  // the rows' loads are issued together and Q^T gets 8-value runs instead of single values. Row by
  // row, Q^T's packing was 23% of a 64-token sequence's item (D 64, rdtsc); this: short sequences
  // +9-14%, long +2.4-5% (A/B, this Xeon, benchmarks/NOTES.md issue 20 step 7).
  constexpr int64_t kGroup = 8;
  // float where the build has register transposes (simd.h's transpose_block: 16 x 16 with
  // AVX-512, 8 x 8 with AVX2, as the backward's pack_keys uses them): kT rows at a time. A/B
  // against 8-row runs (AVX-512, this Xeon): short d64 +8.5%, short causal +13%, long +0-3%. The
  // groups run over all cols (a multiple of 2 vectors, so of kT), rows past the item's as zero
  // rows, so the transposes write Q^T's padding columns too, instead of a fill per d (a memset
  // call each: 7% of a 16-token sequence's item, perf, the Ice Lake Xeon of benchmarks/NOTES.md's
  // fifteenth session).
  constexpr int64_t kT = kTransposeRows;
  constexpr bool kTransposed = std::is_same_v<C, float> && kT > 1;
  constexpr bool kPairs = kPairsFor<T>;
  // With pairs: Q^T as words, D2 pairs of d x cols, unscaled (the scale is applied to S in the
  // softmax's passes: a scaled Q would be rounded to bf16 again).
  [[maybe_unused]] const int64_t D2 = (D + 1) / 2;
  [[maybe_unused]] uint32_t* qt2 = reinterpret_cast<uint32_t*>(qt);
#if defined(SCREE_CPU_BF16_PAIRS)
  if constexpr (kPairs) {
    for (int64_t r0 = 0; r0 < cols; r0 += kT) {
      const int64_t nr = std::clamp<int64_t>(rows - r0, 0, kT);
      uint32_t* blk = reinterpret_cast<uint32_t*>(buf.row.data());  // kT rows of D2 words
      for (int64_t r = 0; r < nr; ++r) {
        if (r0 + r + kRowsAhead < rows) prefetch_row(q_at(r0 + r + kRowsAhead), D * int64_t(sizeof(T)));
        row_pairs(q_at(r0 + r), D, blk + r * D2);
      }
      if (nr < kT) std::fill(blk + nr * D2, blk + kT * D2, 0u);
      int64_t w0 = 0;
      for (; w0 + kT <= D2; w0 += kT) transpose_block(blk + w0, D2 * 4, qt2 + w0 * cols + r0, cols);
      for (int64_t w = w0; w < D2; ++w)
        for (int64_t r = 0; r < kT; ++r) qt2[w * cols + r0 + r] = blk[r * D2 + w];
    }
  } else
#endif
  if constexpr (kTransposed) {
    for (int64_t r0 = 0; r0 < cols; r0 += kT) {
      const int64_t nr = std::clamp<int64_t>(rows - r0, 0, kT);  // the group's rows
      C* blk = buf.row.data();
      for (int64_t r = 0; r < nr; ++r) {
        if (r0 + r + kRowsAhead < rows) prefetch_row(q_at(r0 + r + kRowsAhead), D * int64_t(sizeof(T)));
        to_compute(q_at(r0 + r), blk + r * D, D, qscale);
      }
      if (nr < kT) std::fill(blk + nr * D, blk + kT * D, C(0));
      int64_t d0 = 0;
      for (; d0 + kT <= D; d0 += kT)
        transpose_block(blk + d0, D * int64_t(sizeof(C)), reinterpret_cast<uint32_t*>(qt + d0 * cols + r0), cols);
      for (int64_t d = d0; d < D; ++d)
        for (int64_t r = 0; r < kT; ++r) qt[d * cols + r0 + r] = blk[r * D + d];
    }
  } else
  for (int64_t r0 = 0; r0 < rows; r0 += kGroup) {
    const int64_t nr = std::min(kGroup, rows - r0);
    C* blk = buf.row.data();
    for (int64_t r = 0; r < nr; ++r) {
      if (r0 + r + kRowsAhead < rows) prefetch_row(q_at(r0 + r + kRowsAhead), D * int64_t(sizeof(T)));
      to_compute(q_at(r0 + r), blk + r * D, D, qscale);
    }
    if (nr == kGroup) {
      for (int64_t d = 0; d < D; ++d) {
        C* dst = qt + d * cols + r0;
        for (int64_t r = 0; r < kGroup; ++r) dst[r] = blk[r * D + d];
      }
    } else {
      for (int64_t d = 0; d < D; ++d)
        for (int64_t r = 0; r < nr; ++r) qt[d * cols + r0 + r] = blk[r * D + d];
    }
  }
  if constexpr (!kTransposed)
    for (int64_t d = 0; d < D; ++d) std::fill(qt + d * cols + rows, qt + (d + 1) * cols, C(0));
  // (O needs no zeros: the first key block's P V stores it; see the products below.)
  if (g.first.lo >= g.last.hi) std::fill(buf.o.begin(), buf.o.begin() + rows * Dv_pad, C(0));  // no key: rows of 0
  std::fill(buf.m.begin(), buf.m.begin() + cols, kNegInf);
  std::fill(buf.l.begin(), buf.l.begin() + cols, C(0));

  // Each row's visible keys [lo, hi): both bounds grow with the row, so the block needs keys
  // [lo(first), hi(last)) and sees all of them in every row only inside [lo(last), hi(first)).
  const KeyRange first = g.first, last = g.last;
  for (int64_t r = 0; r < cols; ++r) {
    const KeyRange kr = r < rows ? visible_keys(p, i0 + r, Lq, Lk) : KeyRange{0, 0};
    buf.lo[r] = C(kr.lo);
    buf.hi[r] = C(kr.hi);
    if (r < rows) buf.key_lo[r] = kr.lo, buf.key_hi[r] = kr.hi;
  }
  constexpr int64_t kPanel = 2 * W;  // S^T's column panel (gemm.h)

  C* st = buf.st.data();
  for (int64_t kb = first.lo; kb < last.hi; kb += kBlockK) {
    const int64_t n = std::min(kBlockK, last.hi - kb);
    const C* kblk = nullptr;
    int64_t ldk = 0;
    [[maybe_unused]] const uint32_t* k2 = nullptr;  // with pairs: the block's K rows as words, ldk words apart
#if defined(SCREE_CPU_BF16_PAIRS)
    if constexpr (kPairs) {
      if (!p.paged && D % 2 == 0 && p.k_row_stride % 2 == 0) {  // in place: whole pairs, rows on words
        k2 = reinterpret_cast<const uint32_t*>(kv.key(kb)), ldk = p.k_row_stride / 2;
      } else {
        uint32_t* kc = reinterpret_cast<uint32_t*>(buf.k.data());
        for (int64_t j = 0; j < n; ++j) row_pairs(kv.key(kb + j), D, kc + j * D2);
        k2 = kc, ldk = D2;
      }
    } else
#endif
    if (k_in_place) {
      kblk = reinterpret_cast<const C*>(kv.key(kb)), ldk = p.k_row_stride;
    } else {
      for (int64_t j = 0; j < n; ++j) to_compute(kv.key(kb + j), buf.k.data() + j * D, D, C(1));
      kblk = buf.k.data(), ldk = D;
    }
    // V row j of the block as the compute type, zero-padded to Dv_pad, written to dst.
    auto convert_v_row = [&](int64_t j, C* dst) {
      to_compute(kv.value(kb + j), dst, Dv, C(1));
      std::fill(dst + Dv, dst + Dv_pad, C(0));
    };
    const C* vblk = nullptr;
    int64_t ldv = 0, vpanel = 0;
    [[maybe_unused]] const int64_t n2 = (n + 1) / 2;  // key pairs
#if defined(SCREE_CPU_BF16_PAIRS)
    if constexpr (kPairs) {  // V as words (key 2i, key 2i + 1) x Dv_pad, an odd last key's partner 0
      uint32_t* v2 = buf.v2.data();
      for (int64_t i = 0; i < n2; ++i) {
        if (2 * i + kRowsAhead < n) prefetch_row(kv.value(kb + 2 * i + kRowsAhead), Dv * int64_t(sizeof(T)));
        if (2 * i + 1 + kRowsAhead < n) prefetch_row(kv.value(kb + 2 * i + 1 + kRowsAhead), Dv * int64_t(sizeof(T)));
        interleave_rows(kv.value(kb + 2 * i), 2 * i + 1 < n ? kv.value(kb + 2 * i + 1) : nullptr, Dv,
                        v2 + i * Dv_pad, Dv_pad);
      }
    } else
#endif
    if (v_panels) {
      constexpr int64_t W2 = 2 * W;
      vpanel = kBlockK * W2;
      C* vp = buf.v.data();
      for (int64_t j = 0; j < n; ++j) {
        // A row ahead asked for: the copy waited on each row's first load (42% of the copy's
        // samples; prefetched 4 rows ahead into L1: 2 x 2048 fp32 -3..-25%, 64 x 96 d128 -10..-16%,
        // one thread, this Ice Lake VM; now prefetch.h's prefetch_row, as the Q and output rows).
        if (j + kRowsAhead < n) prefetch_row(kv.value(kb + j + kRowsAhead), Dv * int64_t(sizeof(T)));
        const C* row;
        if (v_in_place) {
          row = reinterpret_cast<const C*>(kv.value(kb + j));
        } else {
          convert_v_row(j, buf.vrow.data());
          row = buf.vrow.data();
        }
        for (int64_t c = 0; c < Dv_pad; c += W2) {
          C* dst = vp + c / W2 * vpanel + j * W2;
          store<C>(dst, load<C>(row + c));
          store<C>(dst + W, load<C>(row + c + W));
        }
      }
      vblk = vp, ldv = W2;
    } else if (v_in_place) {
      vblk = reinterpret_cast<const C*>(kv.value(kb)), ldv = p.v_row_stride;
    } else {
      for (int64_t j = 0; j < n; ++j) convert_v_row(j, buf.v.data() + j * Dv_pad);
      vblk = buf.v.data(), ldv = Dv_pad;
    }
    const bool full = last.lo <= kb && kb + n <= first.hi && rows == cols;
    // A block under a causal mask or a window skips its wholly masked tiles and score runs (a block
    // that is only short of columns keeps the plain products: on short sequences without a mask
    // the trimmed ones measured 3-9% slower).
    const bool trimmed = !full && band;
    // Unmasked and uncapped, the block's column maxima come out of the product's registers (with
    // pairs, of the unscaled scores: the scale, > 0 there, is applied to the maxima).
    const bool max_in_gemm = full && !capped && (!kPairs || qscale > 0);
    if (max_in_gemm) {
      if constexpr (kPairs) std::fill(buf.mx.begin(), buf.mx.begin() + cols, kNegInf);
      else std::copy(buf.m.begin(), buf.m.begin() + cols, buf.mx.begin());
    }
    // Masked: only the tiles that meet a visible key (the bounds grow with the row, so a panel's
    // first row has its smallest lo and its last live row its largest hi).
    if (trimmed)
      for (int64_t c = 0; c < cols; c += kPanel) {
        const int64_t r1 = std::min(c + kPanel, rows) - 1;
        const bool live = c < rows;
        buf.panel_lo[c / kPanel] = live ? buf.key_lo[c] - kb : 0;
        buf.panel_hi[c / kPanel] = live ? buf.key_hi[r1] - kb : 0;
      }
#if defined(SCREE_CPU_BF16_PAIRS)
    if constexpr (kPairs) {  // S^T over D2 pairs of d
      if (!trimmed)
        gemm<C, false, Bf16PairProduct>(n, cols, D2, k2, ldk, qt2, cols, st, cols, false,
                                        max_in_gemm ? buf.mx.data() : nullptr);
      else
        gemm_panel_rows<C, Bf16PairProduct>(n, cols, D2, k2, ldk, qt2, cols, st, cols, buf.panel_lo.data(),
                                            buf.panel_hi.data());
    } else
#endif
    if (!trimmed) {
      gemm<C>(n, cols, D, kblk, ldk, qt, cols, st, cols, false, max_in_gemm ? buf.mx.data() : nullptr);  // S^T
    } else {
      gemm_panel_rows<C>(n, cols, D, kblk, ldk, qt, cols, st, cols, buf.panel_lo.data(), buf.panel_hi.data());
    }
    // Softcap and mask in the max pass below (one pass over S^T less; none at all for a full block).
    // Online softmax across query columns: new running max, rescale factor, exp and row sums.
    for (int64_t c = 0; c < cols; c += W) {
      const V m_old = load<C>(buf.m.data() + c);
      V m_new = m_old;
      // Masked: the keys [j0, j1) the P V row tiles holding these columns' rows read (gemm_rows_keys;
      // the bounds grow with the row); beyond them no score here is visible or read.
      int64_t j0 = 0, j1 = n;
      if (trimmed) {
        const int64_t t0 = c / kTileRows * kTileRows, t1 = std::min(((c + W - 1) / kTileRows + 1) * kTileRows, rows);
        j0 = t0 < rows ? std::clamp<int64_t>(buf.key_lo[t0] - kb, 0, n) : 0;
        j1 = t0 < rows ? std::clamp<int64_t>(buf.key_hi[t1 - 1] - kb, j0, n) : j0;
      }
      if (max_in_gemm) {
        m_new = kPairs ? vmax<C>(m_old, load<C>(buf.mx.data() + c) * qscale) : load<C>(buf.mx.data() + c);
      } else {
        const V lo = load<C>(buf.lo.data() + c), hi = load<C>(buf.hi.data() + c);
        // Score row j's vector s, capped already: masked, stored, into the running max.
        auto finish = [&](int64_t j, V s) {
          if (!full) {
            const V key = splat<C>(C(kb + j));
            s = (key >= lo) & (key < hi) ? s : splat<C>(kNegInf);
          }
          store<C>(st + j * cols + c, s);
          m_new = vmax<C>(m_new, s);
        };
        int64_t j = j0;
        if (capped)  // kExpLanes rows' tanh at once (simd.h's vtanh_lanes)
          for (; j + kExpLanes <= j1; j += kExpLanes) {
            V s[kExpLanes];
            for (int u = 0; u < kExpLanes; ++u) {
              s[u] = load<C>(st + (j + u) * cols + c);
              if constexpr (kPairs) s[u] *= qscale;
            }
            vtanh_lanes<C, kExpLanes>(s);
            for (int u = 0; u < kExpLanes; ++u) finish(j + u, cap * s[u]);
          }
        for (; j < j1; ++j) {
          V s = load<C>(st + j * cols + c);
          if constexpr (kPairs) s *= qscale;
          if (capped) s = cap * vtanh<C>(s);
          finish(j, s);
        }
      }
      // A column that has seen no key yet keeps max -inf; shifting by 0 keeps its exps at 0.
      const V shift = m_new == kNegInf ? splat<C>(C(0)) : m_new;
      V sum = V{};
#if defined(SCREE_CPU_BF16_PAIRS)
      if constexpr (kPairs) {
        // P^T as key pairs, in bf16 (keys outside [j0, j1) 0); the scores of a full block are
        // still unscaled (max_in_gemm).
        const V mul = splat<C>(max_in_gemm ? qscale : C(1));
        for (int64_t i = j0 / 2; i < (j1 + 1) / 2; ++i) {
          const int64_t j = 2 * i;
          const V e0 = j >= j0 ? vexp<C, true>(load<C>(st + j * cols + c) * mul - shift) : V{};
          const V e1 = j + 1 < j1 ? vexp<C, true>(load<C>(st + (j + 1) * cols + c) * mul - shift) : V{};
          store_pairs(buf.p2.data() + i * cols + c, e0, e1);
          sum += e0 + e1;
        }
      } else
#endif
      {
        // kExpLanes key rows' exps at once (simd.h's vexp_lanes: in lockstep on AVX2, the
        // pass 11.8 -> 7.1 ns a vector on the EPYC; forward +3..13%, short causal the most).
        int64_t j = j0;
        for (; j + kExpLanes <= j1; j += kExpLanes) {
          V e[kExpLanes];
          for (int u = 0; u < kExpLanes; ++u) e[u] = load<C>(st + (j + u) * cols + c) - shift;
          vexp_lanes<C, kExpLanes, true>(e);
          for (int u = 0; u < kExpLanes; ++u) store<C>(st + (j + u) * cols + c, e[u]), sum += e[u];
        }
        for (; j < j1; ++j) {
          const V e = vexp<C, true>(load<C>(st + j * cols + c) - shift);
          store<C>(st + j * cols + c, e);
          sum += e;
        }
      }
      const V alpha = vexp<C, true>(m_old - shift);  // 0 on a column's first visible block
      store<C>(buf.l.data() + c, load<C>(buf.l.data() + c) * alpha + sum);
      store<C>(buf.m.data() + c, m_new);
      // (The item's first block finds O zero: nothing to rescale.)
      for (int64_t w = 0; w < W && c + w < rows && kb != first.lo; ++w) {
        const C a = alpha[w];
        if (a != C(1)) {
          C* orow = buf.o.data() + (c + w) * Dv_pad;
          for (int64_t d = 0; d < Dv_pad; d += W) store<C>(orow + d, load<C>(orow + d) * a);
        }
      }
    }
    // O += P V; the item's first block stores O = P V instead: no zero fill of O per item (a
    // short-sequence item's O is ~48 KiB) and no loads of C in that block's products.
    const bool acc = kb != first.lo;
#if defined(SCREE_CPU_BF16_PAIRS)
    if constexpr (kPairs) {  // over key pairs
      if (!trimmed)
        gemm<C, true, Bf16PairProduct>(rows, Dv_pad, n2, buf.p2.data(), cols, buf.v2.data(), Dv_pad, buf.o.data(),
                                       Dv_pad, acc);
      else
        gemm_rows_keys<C, true, Bf16PairProduct>(rows, Dv_pad, n, buf.p2.data(), cols, buf.v2.data(), Dv_pad,
                                                 buf.o.data(), Dv_pad, buf.key_lo.data(), buf.key_hi.data(), kb, 0,
                                                 acc);
    } else
#endif
    if (!trimmed) {
      gemm<C, true>(rows, Dv_pad, n, st, cols, vblk, ldv, buf.o.data(), Dv_pad, acc, nullptr, vpanel);
    } else {
      gemm_rows_keys<C, true>(rows, Dv_pad, n, st, cols, vblk, ldv, buf.o.data(), Dv_pad, buf.key_lo.data(),
                              buf.key_hi.data(), kb, vpanel, acc);
    }
  }

  for (int64_t r = 0; r < rows; ++r) {
    if (r + kRowsAhead < rows) prefetch_row(out_row<T>(p, g, r + kRowsAhead), Dv * int64_t(sizeof(T)), true);
    write_output_row<T>(p, g, r, buf.o.data() + r * Dv_pad, buf.m[r], buf.l[r]);
  }
}

template <class T>
void forward(const VarlenParams& p) {
  using C = compute_t<T>;
  const int64_t Dv_pad = round_up(p.head_dim_v, 2 * Simd<C>::width);
  double flops = 0;
  std::vector<WorkItem> items = forward_items(p, query_blocks(p), flops);
  // Items of few rows (fwd_few_rows.h): adjacent heads merged, long ones split over their keys.
  std::vector<WorkItem> split;
  FewRowsParts<C> parts;
  thread_local LineVector<C> parts_kept;  // (grown only: a decode step per layer reuses it)
  if (few_rows_allowed(p)) {
    items = group_few_rows_heads<C>(p, query_blocks(p), items);
    int64_t slots = 0;
    split = split_few_rows_keys<C>(p, query_blocks(p), items, num_threads(), slots);
    parts.Dv_pad = Dv_pad;
    if (parts_kept.size() < size_t(slots * parts.stride())) parts_kept.resize(size_t(slots * parts.stride()));
    parts.data = parts_kept.data();
  }
  std::vector<Buffers<T>>& buffers = kept_buffers<Buffers<T>>(std::max(1, num_threads()), p.head_dim, Dv_pad,
                                                               query_blocks(p).tail);
  run_items(items, flops, [&](int t, const WorkItem& item) { forward_block<T>(p, item, buffers[t], parts); });
  combine_few_rows_parts<T, C>(p, query_blocks(p), split, parts);
}

}  // namespace

void varlen_fwd(const VarlenParams& p) {
  switch (p.dtype) {
    case DType::Float32: forward<float>(p); break;
    case DType::Float64: forward<double>(p); break;
    case DType::Float16: forward<float16>(p); break;
    case DType::BFloat16:
#if defined(SCREE_CPU_AMX)
      // The amx build: both products on the tiles (fwd_amx.cpp), but a call whose every item has few
      // rows (decode steps, no lse) goes to fwd_few_rows.h through this file's kernel: the tiles
      // would pad each row to 32 and first pack every key and value (a decode step at 0.30-0.52x
      // padded SDPA; NOTES.md, session 47).
      if (few_rows_allowed(p) && few_rows<float>(p.max_seqlen_q))
        forward<bfloat16>(p);
      else
        forward_bf16_amx(p);
#else
      forward<bfloat16>(p);
#endif
      break;
    default: break;  // rejected by the caller's validation
  }
}

}  // namespace scree::cpu::SCREE_CPU_ISA

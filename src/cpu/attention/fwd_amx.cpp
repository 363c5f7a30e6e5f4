// CPU varlen attention forward for bfloat16 inputs on AMX tiles (the amx build only): both
// products of each key block on the tiles in bf16 with fp32 accumulation, S = Q K^T and O += P V
// with P rounded to bf16 (as FlashAttention does on GPUs: P in the input precision), the scale,
// softcap, mask and online softmax in fp32 (AVX-512) between them. Items, geometry, key rows and
// the output epilogue are fwd_common.h's, shared with the fp32 kernel (fwd.cpp).
//
// Layout (why S and not fwd.cpp's S^T): with S = Q K^T the query block is the A operand, packed
// once per item; P comes out of the softmax row-major, which is again an A operand, so it is
// written straight in bf16 with no transpose. The B operands (K^T and V in VNNI pairs) depend on
// keys only: one pass per call packs them for every (kv head, sequence) and all query blocks and
// the query heads of a GQA group reuse them. Packing K^T per item instead (a 16 x 16 32-bit
// transpose per 16 keys x 32 dims, ~48 cycles) would cost about half of that block's 64-query
// product (~94 cycles at the measured ~700 bf16 FLOP/cycle); per call it is 1/(query blocks x
// group size) of that. The packed keys are zero padded to 32 keys per sequence and to d multiple
// of 32, so head dims that are not multiples of 32 (40: padded to 64, 37% more work on the S
// product) and sequences of any length run the same tiles; paged keys are read through the page
// table once, in the packing. No case falls back to the fp32 kernel.
// Softmax orientation: rows of S are queries, so each row's max and sum are horizontal; the sum is
// kept as 16 lanes per row (one add per row and block) and reduced once at the end, the max is
// reduced once per row and block (~10 instructions against the 16 x ~14 of a 256-key block's
// exponential pass).
// Where the time goes (1 thread, 4 x 1024 tokens, D = 128, rdtsc per phase): the two products
// ~2/3 and the softmax ~1/3. A 16 x 16 x 32 tile product takes 22-26 ns here against 9.5 ns when
// its operands sit in L1 (a standalone loop): each needs ~1 KiB of tile loads, and tile loads
// from L2 run at ~60 GB/s on this machine. Tried and not kept: prefetching the next product's B
// tiles into L1 (+0-7%), TILELOADDT1 for B (-15%), interleaving the next block's S product with
// this block's softmax rows so that the tile unit and the vector units overlap (-6%).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "amx_tiles.h"
#include "fwd_amx.h"
#include "fwd_common.h"
#include "simd.h"
#include "vec512.h"
#include "workspace.h"
#include "work.h"

namespace scree::cpu::SCREE_CPU_ISA {

using attention::KeyRange;
using attention::VarlenParams;
using attention::visible_keys;

namespace {

// Keys per block, and query rows per item (block_rows). Measured on this Xeon (4 x 1024 tokens,
// heads x D = 512, bf16), GFLOP/s by (query rows, keys), 1 thread:
//   D = 128: (32, 128) 476, (32, 256) 469, (64, 128) 476, (128, 256) 442, (256, 256) 550, (256, 512) 535
//   D =  64: (32, 128) 366, (32, 256) 408, (32, 512) 380, (64, 128) 357, (256, 256) 313
// and with both cores, keys 256 (what a call gets):
//   D = 128: rows 32: 1010 (causal 702), 64: 1014 (766), 128: 826 (651), 256: 890 (645)
//   D =  64: rows 32: 652 (507), 64: 586 (482)
// so 64 rows from Dp = 128 up, 32 below. Working set at D = 128: Q 16 KiB, S 64 KiB, P 32 KiB, O 32
// KiB, this block's packed K and V 64 KiB each: the L2 (2 MiB) holds it, the L1 (48 KiB) does not;
// the tile products reuse each key and value tile over the item's row tiles (the second and later
// from L1).
constexpr int64_t kBlockK = 256;
inline int64_t block_rows(int64_t Dp) { return Dp >= 128 ? 64 : 32; }
constexpr int64_t kGranule = 32;  // keys per packed V tile (the k extent of one P tile)
static_assert(kBlockK % kGranule == 0, "2 x 2 tile groups need multiples of 32 keys");

// Keys and values of the whole call in the B-operand layouts, per kv head h and sequence b
// (granules of 32 keys, sequence b's first at gk0[b], keys past its length zero):
//   k: key tile (16 keys) t of head h at k + (h G 2 + t) Dp 8 (uint32): Dp / 2 rows of 16 pairs;
//   v: granule g, value chunk e (16 columns) at v + ((h G + g) Dvp / 16 + e) 256: 16 rows x 16 pairs.
// Size: heads_k x keys (rounded to 32 per sequence) x (Dp + Dvp) x 2 bytes, the size of K and V.
struct PackedKv {
  int64_t Dp, Dvp, G;
  std::vector<int64_t> gk0;
  uint32_t *k, *v;
  uint32_t* key_tile(int64_t h, int64_t b, int64_t key) const {
    return k + (h * G * 2 + gk0[b] * 2 + key / 16) * Dp * 8;
  }
  uint32_t* value_granule(int64_t h, int64_t b, int64_t key) const {
    return v + ((h * G + gk0[b] + key / kGranule) * (Dvp / 16)) * 256;
  }
};

// The packed K and V live in a Workspace (workspace.h: kept between calls).

void pack_kv(const VarlenParams& p, PackedKv& pk) {
  const int64_t D = p.head_dim, Dv = p.head_dim_v, Dp = pk.Dp, Dvp = pk.Dvp;
  std::vector<WorkItem> items;
  double flops = 0;
  for (int64_t b = 0; b < p.num_sequences; ++b) {
    const int64_t Lk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    if (Lk == 0) continue;
    for (int64_t h = 0; h < p.heads_k; ++h) {
      items.push_back({b, h, 0, double(Lk)});
      flops += double(Lk) * double(D + Dv) * 16;  // ~16 ops per packed value: threads only when it pays
    }
  }
  const int threads = std::max(1, num_threads());
  std::vector<std::vector<uint16_t>> tmp(threads, std::vector<uint16_t>(kGranule * std::max(Dp, Dvp)));
  run_items(items, flops, [&](int t, const WorkItem& it) {
    const int64_t b = it.seq, h = it.head, k0 = p.cu_seqlens_k[b], Lk = p.cu_seqlens_k[b + 1] - k0;
    const KvRows<bfloat16> kv(p, b, h, k0, Lk);
    uint16_t* rows = tmp[t].data();
    const auto* K = reinterpret_cast<const uint16_t*>(kv.K);
    const auto* V = reinterpret_cast<const uint16_t*>(kv.V);
    for (int64_t g0 = 0; g0 < Lk; g0 += kGranule) {
      const int64_t n = std::min(kGranule, Lk - g0);
      // A whole granule of rows in place with no padding needed is packed from where it lies;
      // otherwise (the sequence's last keys, d not a multiple of 32, pages) its 32 rows are
      // gathered, zero padded to Dp columns and 32 rows, first.
      const bool in_place = !p.paged && n == kGranule;
      if (in_place && D == Dp) {
        tiles::pack_keys(K + g0 * p.k_row_stride, p.k_row_stride, Dp, pk.key_tile(h, b, g0));
        tiles::pack_keys(K + (g0 + 16) * p.k_row_stride, p.k_row_stride, Dp, pk.key_tile(h, b, g0 + 16));
      } else {
        for (int64_t j = 0; j < kGranule; ++j)
          tiles::copy_row(rows + j * Dp, reinterpret_cast<const uint16_t*>(kv.key(std::min(g0 + j, Lk - 1))),
                          j < n ? D : 0, Dp);
        tiles::pack_keys(rows, Dp, Dp, pk.key_tile(h, b, g0));
        tiles::pack_keys(rows + 16 * Dp, Dp, Dp, pk.key_tile(h, b, g0 + 16));
      }
      uint32_t* vg = pk.value_granule(h, b, g0);
      if (in_place && Dv == Dvp) {
        for (int64_t e = 0; e < Dvp / 16; ++e)
          tiles::pack_values(V + g0 * p.v_row_stride + 16 * e, p.v_row_stride, vg + e * 256);
        continue;
      }
      for (int64_t j = 0; j < kGranule; ++j)
        tiles::copy_row(rows + j * Dvp, reinterpret_cast<const uint16_t*>(kv.value(std::min(g0 + j, Lk - 1))),
                        j < n ? Dv : 0, Dvp);
      for (int64_t e = 0; e < Dvp / 16; ++e) tiles::pack_values(rows + 16 * e, Dvp, vg + e * 256);
    }
  });
}

struct Buffers {
  std::vector<uint16_t> q, p;  // Q block (bq x Dp), P (bq x kBlockK), bf16 bits
  std::vector<float> s, o, m, l;  // S (bq x kBlockK), O (bq x Dvp), row max, 16-lane row sums
  std::vector<int64_t> lo, hi;    // each row's visible keys
  Buffers(int64_t bq, int64_t Dp, int64_t Dvp)
      : q(bq * Dp), p(bq * kBlockK), s(bq * kBlockK), o(bq * Dvp), m(bq), l(bq * 16), lo(bq), hi(bq) {}
};

using V = vec_t<float>;
static_assert(Simd<float>::width == 16, "the amx build has 64-byte vectors");

// Scale (and softcap), mask and online softmax of one query row over a key block of nk keys, in
// log2 units (scores times log2(e), so the exponentials are powers of 2): s (nk unscaled q.k; with
// a softcap overwritten by the capped scores) -> prow (nk bf16 of 2^(score - max)); updates the
// row's max m (log2 units) and its 16-lane sum l, and rescales its output row o (Dvp values) when
// the max moved. Keys outside [lo, hi) (block-relative) are masked.
// Without a softcap the max is taken on the unscaled scores (the scale is positive) and scaling
// and shifting are one FMA in the exponential's pass: 2 + 12 instructions per 16 scores.
template <bool kCapped>
inline void softmax_row(float* s, uint16_t* prow, int64_t nk, int64_t lo, int64_t hi, float sscale, float cap,
                        float& m, float* l, float* o, int64_t Dvp) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr float kLog2e = 1.4426950408889634f;
  const bool full = lo == 0 && hi == nk;
  __m512 mx = _mm512_set1_ps(kNegInf);
  for (int64_t j = 0; j < nk; j += 16) {
    __m512 x = _mm512_loadu_ps(s + j);
    if constexpr (kCapped) {
      x = _mm512_mul_ps(x, _mm512_set1_ps(sscale));
      x = _mm512_mul_ps(reinterpret_cast<__m512>(vtanh<float>(reinterpret_cast<V>(x))), _mm512_set1_ps(cap * kLog2e));
      _mm512_storeu_ps(s + j, x);
    }
    mx = full ? _mm512_max_ps(mx, x) : _mm512_mask_max_ps(mx, visible_lanes(j, lo, hi), mx, x);
  }
  // The block's max in log2 units (capped scores are stored so already).
  const float bmax = kCapped ? _mm512_reduce_max_ps(mx) : _mm512_reduce_max_ps(mx) * (sscale * kLog2e);
  const float m_new = std::max(m, bmax);
  // A row that has seen no key yet keeps max -inf; shifting by 0 keeps its exponentials at 0.
  const float shift = m_new == kNegInf ? 0.f : m_new;
  const __m512 mul = _mm512_set1_ps(kCapped ? 1.f : sscale * kLog2e), nshift = _mm512_set1_ps(-shift);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < nk; j += 32) {
    __m512 e0 = exp2_nonpositive(_mm512_fmadd_ps(_mm512_loadu_ps(s + j), mul, nshift));
    __m512 e1 = exp2_nonpositive(_mm512_fmadd_ps(_mm512_loadu_ps(s + j + 16), mul, nshift));
    if (!full) {  // masked keys (and a masked -inf's NaN from exp2) give 0
      e0 = _mm512_maskz_mov_ps(visible_lanes(j, lo, hi), e0);
      e1 = _mm512_maskz_mov_ps(visible_lanes(j + 16, lo, hi), e1);
    }
    sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
    // Round to bf16, nearest even (VCVTNE2PS2BF16): e1 to the high half, e0 to the low.
    _mm512_storeu_si512(prow + j, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(e1, e0)));
  }
  if (m_new == m) {  // the max did not move (the usual case after a row's first blocks): no rescale
    _mm512_storeu_ps(l, _mm512_add_ps(_mm512_loadu_ps(l), sum));
    return;
  }
  const float alpha = std::exp2(m - shift);  // 0 on the row's first visible block (m = -inf)
  _mm512_storeu_ps(l, _mm512_fmadd_ps(_mm512_loadu_ps(l), _mm512_set1_ps(alpha), sum));
  const bool first = m == kNegInf;  // o is still all zeros: nothing to rescale
  m = m_new;
  if (first) return;
  const __m512 a = _mm512_set1_ps(alpha);
  for (int64_t d = 0; d < Dvp; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), a));
}

void forward_block(const VarlenParams& p, const PackedKv& pk, const WorkItem& item, Buffers& buf) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t D = p.head_dim, Dp = pk.Dp, Dvp = pk.Dvp;
  const ItemGeometry g(p, item, block_rows(Dp));
  const int64_t rows = g.rows, rows32 = round_up(rows, 32);
  const bool capped = p.softcap > 0.0;
  // Softcap: s -> cap tanh(scale s / cap), so the row pass multiplies by scale / cap first.
  const float sscale = capped ? float(p.scale / p.softcap) : float(p.scale), cap = float(p.softcap);

  // Q block, bf16 as stored (scaling it would round it a second time), zero padded to rows32 x Dp.
  const bfloat16* Q = static_cast<const bfloat16*>(p.q);
  uint16_t* q = buf.q.data();
  for (int64_t r = 0; r < rows32; ++r)
    tiles::copy_row(q + r * Dp,
                    reinterpret_cast<const uint16_t*>(Q + (g.q0 + g.i0 + std::min(r, rows - 1)) * p.q_row_stride +
                                                      g.h * p.q_head_stride),
                    r < rows ? D : 0, Dp);
  std::fill(buf.o.begin(), buf.o.begin() + rows32 * Dvp, 0.f);
  std::fill(buf.m.begin(), buf.m.end(), kNegInf);
  std::fill(buf.l.begin(), buf.l.end(), 0.f);
  for (int64_t r = 0; r < rows; ++r) {  // each row's visible keys, once per item
    const KeyRange kr = visible_keys(p, g.i0 + r, g.Lq, g.Lk);
    buf.lo[r] = kr.lo, buf.hi[r] = kr.hi;
  }

  float* s = buf.s.data();
  uint16_t* P = buf.p.data();
  // Key blocks start on a granule (the packing's 32-key alignment); keys outside a row's visible
  // range, the packing's zero keys past the sequence's end included, are masked (left out of the
  // row max, their exponentials zeroed).
  for (int64_t kb = g.first.lo / kGranule * kGranule; kb < g.last.hi; kb += kBlockK) {
    const int64_t nk = std::min(kBlockK, round_up(g.last.hi - kb, kGranule));
    // S (rows32 x nk) = Q K^T: A = Q rows, B = packed key tiles; steps along d.
    tiles::gemm<false>(rows32 / 16, nk / 16, Dp / 32, s, kBlockK * 4, q, Dp * 2, 64, pk.key_tile(g.kvh, g.b, kb),
                       Dp * 32, 1024);
    for (int64_t r = 0; r < rows; ++r) {
      // The row's visible keys relative to the block, clipped to it (so they fit the int32 lanes).
      const int64_t lo = std::max<int64_t>(buf.lo[r] - kb, 0), hi = std::min<int64_t>(buf.hi[r] - kb, nk);
      uint16_t* prow = P + r * kBlockK;
      if (lo >= hi) {  // nothing visible in this block: P row 0, O unchanged
        std::fill(prow, prow + nk, uint16_t(0));
        continue;
      }
      float* o = buf.o.data() + r * Dvp;
      if (capped)
        softmax_row<true>(s + r * kBlockK, prow, nk, lo, hi, sscale, cap, buf.m[r], buf.l.data() + r * 16, o, Dvp);
      else
        softmax_row<false>(s + r * kBlockK, prow, nk, lo, hi, sscale, cap, buf.m[r], buf.l.data() + r * 16, o, Dvp);
    }
    // O (rows32 x Dvp) += P V: A = P rows (steps: 32 keys), B = packed value tiles.
    tiles::gemm<true>(rows32 / 16, Dvp / 16, nk / kGranule, buf.o.data(), Dvp * 4, P, kBlockK * 2, 64,
                      pk.value_granule(g.kvh, g.b, kb), 1024, Dvp / 16 * 1024);
  }
  // The row max is in log2 units: lse = m ln 2 + log(l).
  constexpr float kLn2 = 0.6931471805599453f;
  for (int64_t r = 0; r < rows; ++r)
    write_output_row<bfloat16>(p, g, r, buf.o.data() + r * Dvp, buf.m[r] * kLn2,
                               _mm512_reduce_add_ps(_mm512_loadu_ps(buf.l.data() + r * 16)));
}

}  // namespace

void forward_bf16_amx(const VarlenParams& p) {
  PackedKv pk;
  pk.Dp = round_up(p.head_dim, 32);
  pk.Dvp = round_up(p.head_dim_v, 32);  // 2 x 2 groups of 16-column C tiles
  pk.gk0.resize(p.num_sequences + 1);
  pk.gk0[0] = 0;
  for (int64_t b = 0; b < p.num_sequences; ++b)
    pk.gk0[b + 1] = pk.gk0[b] + (p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b] + kGranule - 1) / kGranule;
  pk.G = pk.gk0[p.num_sequences];
  const size_t k_words = size_t(p.heads_k * pk.G * kGranule * pk.Dp / 2);
  const size_t v_words = size_t(p.heads_k * pk.G * kGranule * pk.Dvp / 2);
  Workspace ws(k_words + v_words);
  pk.k = ws.data;
  pk.v = pk.k + k_words;
  pack_kv(p, pk);

  double flops = 0;
  const int64_t bq = block_rows(pk.Dp);
  std::vector<WorkItem> items = forward_items(p, bq, flops);
  const int threads = std::max(1, num_threads());
  std::vector<Buffers> buffers;
  buffers.reserve(threads);
  for (int t = 0; t < threads; ++t) buffers.emplace_back(bq, pk.Dp, pk.Dvp);
  run_items(
      items, flops, [&](int t, const WorkItem& item) { forward_block(p, pk, item, buffers[t]); },
      [](int) { return tiles::TileScope(); });
}

}  // namespace scree::cpu::SCREE_CPU_ISA

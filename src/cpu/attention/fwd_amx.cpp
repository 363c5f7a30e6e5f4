// CPU varlen attention forward for bfloat16 inputs on AMX tiles (the amx build only): both
// products of each key block on the tiles in bf16 with fp32 accumulation, S = Q K^T and O += P V
// with P rounded to bf16 (as FlashAttention does on GPUs: P in the input precision), the scale,
// softcap, mask and online softmax in fp32 (AVX-512) between them. Items, geometry, key rows and
// the output epilogue are fwd_common.h's, shared with the fp32 kernel (fwd.cpp).
//
// Layout (why S and not fwd.cpp's S^T): with S = Q K^T the query block is the A operand, packed
// once per item; P comes out of the softmax row-major, which is again an A operand, so it is
// written straight in bf16 with no transpose. The B operands (K^T and V in VNNI pairs) depend on
// keys only: one pass per call packs them for every (kv head, sequence) whose keys serve several
// items, and all its query blocks and the query heads of a GQA group reuse them; a sequence whose
// keys serve one item is packed by that item (PackedKv). Packing K^T per item instead (a 16 x 16
// 32-bit transpose per 16 keys x 32 dims, ~48 cycles) would cost about half of that block's
// 64-query product (~94 cycles at the measured ~700 bf16 FLOP/cycle); per call it is 1/(query
// blocks x group size) of that. The packed keys are zero padded to 32 keys per sequence and to d
// multiple of 32, so head dims that are not multiples of 32 (40: padded to 64, 37% more work on
// the S product) and sequences of any length run the same tiles; paged keys are read through the
// page table once, in the packing. No case falls back to the fp32 kernel.
// Softmax orientation: rows of S are queries, so each row's max and sum are horizontal; the sum is
// kept as 16 lanes per row (one add per row and block) and reduced once at the end; a row's max is
// computed on its first visible block only (and under a softcap), later blocks take one pass with
// the max they have (row_exp_stale).
// Where the time goes (1 thread, 2 x 2048 tokens, rdtsc per phase, after issue 20 step 4):
// D = 128 (4 heads, 16.5 ms): S = Q K^T 30%, softmax 25%, O += P V 30%, K/V packing 6%, Q copy and
// setup 4%, output 5%; D = 64 (8 heads, 24.7 ms): 30 / 35 / 23 / 5 / 3 / 4%. A 16 x 16 x 32 tile
// product takes ~5 ns here with its operands in L1 or streaming from L2 (a standalone loop); what
// costs more are the C tiles: a 1 KiB tile store to lines not in L1 takes ~14 ns (~5 in L1), and S
// stores one C tile per Dp / 32 products (4 at D = 128, 2 at D = 64), O += P V loads and stores 4
// per 32 products. In situ S runs ~9 ns per product at D = 128, 12-14 at D = 64, O += P V ~9-11.
// Tried and not kept (measured): prefetching the next product's B tiles into L1 (+0-7%),
// TILELOADDT1 for B (-15%); a software pipeline that issues the tile steps of the next block's S
// and the previous block's P V between the softmax's rows (amx_tiles.h's GemmJob style, S and P
// double buffered): -2 to -11%, although a standalone loop of 4 products and 8 exponential vectors
// interleaved ran 27 ns against 37 ns one after the other: with C-tile stores in the loop the
// overlap goes; S one row pair at a time (32 rows, 32 KiB, rewritten while in L1): D = 64 +2-3%,
// D = 128 -1 to -3%.
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

// Keys per block, and query rows per item (kBlockQ). Measured on this Xeon (4 x 1024 and 2 x
// 2048 tokens, heads x D = 512, bf16, both cores), GFLOP/s by (query rows, keys), eq1024 d64 /
// eq1024 d128 / eq2048 d64 / eq2048 d128:
//   (32, 128) 860/1286/986/1481, (32, 256) 979/1375/1108/1672, (32, 512) 925/1380/1046/1617,
//   (64, 128) 980/1404/1134/1670, (64, 256) 979/1467/1136/1747, (64, 512) 999/1449/1122/1742,
//   (128, 128) 978/1382/1103/1638, (128, 256) 1017/1471/1172/1747, (128, 512) 995/1522/1150/1752;
// then (A/B, 5 rounds) 128 rows against 64: +2-6% without causal masks (+4-8% on 64-token
// sequences), 0 to -4% causal while the diagonal items computed their masked triangle whole. Since
// a 32-row group skips the granules it does not meet (tiles::Band), causal takes 128 rows too:
// mix d128 causal +9.5%, eq1024 / eq2048 d128 causal +2-3%, short causal +3%, the 4 x 16 call -3%
// (medians of 6 alternated rounds, cpu_attn_ab, 2 threads; benchmarks/NOTES.md, session 49).
// Working set at D = 128, 128 rows: Q 32 KiB, S 128 KiB, P 64 KiB, O 64 KiB, the block's packed K
// and V 64 KiB each: the L2 (2 MiB) holds it; the tile products reuse each key and value tile over
// the item's row tiles (the second and later from L1).
constexpr int64_t kBlockK = 256;
constexpr int64_t kBlockQ = 128;
constexpr int64_t kGranule = 32;  // keys per packed V tile (the k extent of one P tile)
static_assert(kBlockK % kGranule == 0, "2 x 2 tile groups need multiples of 32 keys");

// The keys and values of one (kv head, sequence) in the B-operand layouts (granules of 32 keys,
// keys past the sequence's length zero):
//   k: key tile (16 keys) t at k + t Dp 8 (uint32): Dp / 2 rows of 16 pairs;
//   v: granule g, value chunk e (16 columns) at v + (g Dvp / 16 + e) 256: 16 rows x 16 pairs.
struct KvTiles {
  uint32_t *k, *v;
  int64_t Dp, Dvp;
  uint32_t* key_tile(int64_t key) const { return k + key / 16 * Dp * 8; }
  uint32_t* value_granule(int64_t key) const { return v + key / kGranule * (Dvp / 16) * 256; }
};

// Packs keys and values [0, Lk) of sequence b, kv head h into out; rows: 32 x max(Dp, Dvp) bf16 of
// scratch.
void pack_sequence(const VarlenParams& p, int64_t b, int64_t h, const KvTiles& out, uint16_t* rows) {
  const int64_t D = p.head_dim, Dv = p.head_dim_v, Dp = out.Dp, Dvp = out.Dvp;
  const int64_t k0 = p.cu_seqlens_k[b], Lk = p.cu_seqlens_k[b + 1] - k0;
  const KvRows<bfloat16> kv(p, b, h, k0, Lk);
  const auto* K = reinterpret_cast<const uint16_t*>(kv.K);
  const auto* V = reinterpret_cast<const uint16_t*>(kv.V);
  for (int64_t g0 = 0; g0 < Lk; g0 += kGranule) {
    const int64_t n = std::min(kGranule, Lk - g0);
    // A whole granule of rows in place with no padding needed is packed from where it lies;
    // otherwise (the sequence's last keys, d not a multiple of 32, pages) its 32 rows are
    // gathered, zero padded to Dp columns and 32 rows, first.
    const bool in_place = !p.paged && n == kGranule;
    if (in_place && D == Dp) {
      tiles::pack_keys(K + g0 * p.k_row_stride, p.k_row_stride, Dp, out.key_tile(g0));
      tiles::pack_keys(K + (g0 + 16) * p.k_row_stride, p.k_row_stride, Dp, out.key_tile(g0 + 16));
    } else {
      for (int64_t j = 0; j < kGranule; ++j)
        tiles::copy_row(rows + j * Dp, reinterpret_cast<const uint16_t*>(kv.key(std::min(g0 + j, Lk - 1))),
                        j < n ? D : 0, Dp);
      tiles::pack_keys(rows, Dp, Dp, out.key_tile(g0));
      tiles::pack_keys(rows + 16 * Dp, Dp, Dp, out.key_tile(g0 + 16));
    }
    uint32_t* vg = out.value_granule(g0);
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
}

// Where the keys and values are packed. A sequence whose keys serve one item only (MHA, its queries
// in one item, at most kLocalKeys keys) is packed by that item into its own buffer and read while
// still in L1/L2: sequences of 8-128 tokens +18-25% (2 threads; packed by the call's pass, their
// keys came from L3, S at ~28 ns per product). The others are packed once per call for all their
// items (query blocks, the query heads of a GQA group), in the Workspace (workspace.h: kept between
// calls), per kv head h and sequence b: (h, b)'s first granule at h G + gk0[b] (keys rounded to 32
// per sequence; size heads_k x G x 32 x (Dp + Dvp) x 2 bytes, about the size of K and V).
constexpr int64_t kLocalKeys = 512;

struct PackedKv {
  int64_t Dp, Dvp, G;
  std::vector<int64_t> gk0;
  std::vector<bool> local;
  uint32_t *k, *v;
  KvTiles of(int64_t h, int64_t b) const {
    return {k + (h * G + gk0[b]) * kGranule * Dp / 2, v + (h * G + gk0[b]) * kGranule * Dvp / 2, Dp, Dvp};
  }
};

void pack_kv(const VarlenParams& p, const PackedKv& pk) {
  std::vector<WorkItem> items;
  double flops = 0;
  for (int64_t b = 0; b < p.num_sequences; ++b) {
    const int64_t Lk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    if (Lk == 0 || pk.local[b]) continue;
    for (int64_t h = 0; h < p.heads_k; ++h) {
      items.push_back({b, h, 0, double(Lk)});
      // ~16 ops per packed value: threads only when it pays
      flops += double(Lk) * double(p.head_dim + p.head_dim_v) * 16;
    }
  }
  const int threads = std::max(1, num_threads());
  std::vector<LineVector<uint16_t>> rows(threads, LineVector<uint16_t>(kGranule * std::max(pk.Dp, pk.Dvp)));
  run_items(items, flops, [&](int t, const WorkItem& it) {
    pack_sequence(p, it.seq, it.head, pk.of(it.head, it.seq), rows[t].data());
  });
}

struct Buffers {
  LineVector<uint16_t> q, p;       // Q block (bq x Dp), P (bq x kBlockK), bf16 bits
  LineVector<float> s, o;          // S (bq x kBlockK), O (bq x Dvp)
  std::vector<float> m, m_new, l;  // row max, the block's new row max, 16-lane row sums
  std::vector<int64_t> lo, hi;     // each row's visible keys
  std::vector<int64_t> blo, bhi;   // the same relative to the key block, clipped to it
  std::vector<int64_t> glo, ghi;   // granules of the block each 32-row group meets (tiles::Band)
  LineVector<uint32_t> kv;         // a local sequence's packed keys and values (kLocalKeys)
  LineVector<uint16_t> rows;       // pack_sequence's scratch
  Buffers(int64_t bq, int64_t Dp, int64_t Dvp)
      : q(bq * Dp), p(bq * kBlockK), s(bq * kBlockK), o(bq * Dvp), m(bq), m_new(bq), l(bq * 16), lo(bq), hi(bq),
        blo(bq), bhi(bq), glo(bq / 32), ghi(bq / 32), kv(kLocalKeys * (Dp + Dvp) / 2),
        rows(kGranule * std::max(Dp, Dvp)) {}
};

using V = vec_t<float>;
static_assert(Simd<float>::width == 16, "the amx build has 64-byte vectors");

// The online softmax of a key block of nk keys, in log2 units (scores times log2(e), so the
// exponentials are powers of 2). Rows that need a max for the block (their first visible block,
// or a softcap) get it in a first pass over the block's rows, before any row's exponentials: per
// row, the exponentials wait for the max (a chain of maxima and a horizontal reduction, ~60
// cycles); row after row in one pass that latency was exposed on every row (the scheduler holds
// one row's ~200 exponential uops, not the next row's max): ~12.6 cycles per 16 scores against ~6
// for the instructions (+3-10% for the two passes). Keys outside [lo, hi) (block-relative) are
// masked.

// Pass 1 of a row: the block's max of the visible scores in log2 units (-inf if none). s holds nk
// unscaled q.k; with a softcap they are overwritten by the capped scores in log2 units. Without
// one the max is taken on the unscaled scores (the scale is positive) and scaling and shifting are
// one FMA in pass 2.
template <bool kCapped>
inline float row_max(float* s, int64_t nk, int64_t lo, int64_t hi, float sscale, float cap) {
  constexpr float kLog2e = 1.4426950408889634f;
  const bool full = lo == 0 && hi == nk;
  // Two running maxima (nk is a multiple of 32): a single chain of dependent maxima over a 256-key
  // row is 16 x 4 cycles of latency (+3-5% measured).
  __m512 mx[2] = {_mm512_set1_ps(-std::numeric_limits<float>::infinity()),
                  _mm512_set1_ps(-std::numeric_limits<float>::infinity())};
  for (int64_t j = 0; j < nk; j += 32) {
    for (int u = 0; u < 2; ++u) {
      __m512 x = _mm512_loadu_ps(s + j + 16 * u);
      if constexpr (kCapped) {
        x = _mm512_mul_ps(x, _mm512_set1_ps(sscale));
        x = _mm512_mul_ps(reinterpret_cast<__m512>(vtanh<float>(reinterpret_cast<V>(x))), _mm512_set1_ps(cap * kLog2e));
        _mm512_storeu_ps(s + j + 16 * u, x);
      }
      mx[u] = full ? _mm512_max_ps(mx[u], x) : _mm512_mask_max_ps(mx[u], visible_lanes(j + 16 * u, lo, hi), mx[u], x);
    }
  }
  const float rmax = _mm512_reduce_max_ps(_mm512_max_ps(mx[0], mx[1]));
  return kCapped ? rmax : rmax * (sscale * kLog2e);
}

// prow (nk bf16) = 2^(s x mul - shift) for the visible keys, 0 for the others; returns their sum
// in 16 lanes. 2 + 11 instructions per 16 scores.
inline __m512 exp_row(const float* s, uint16_t* prow, int64_t nk, int64_t lo, int64_t hi, float mul, float shift) {
  const bool full = lo == 0 && hi == nk;
  const __m512 vmul = _mm512_set1_ps(mul), nshift = _mm512_set1_ps(-shift);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < nk; j += 32) {
    __m512 e0 = exp2_nonpositive</*kCubic=*/true>(_mm512_fmadd_ps(_mm512_loadu_ps(s + j), vmul, nshift));
    __m512 e1 = exp2_nonpositive</*kCubic=*/true>(_mm512_fmadd_ps(_mm512_loadu_ps(s + j + 16), vmul, nshift));
    if (!full) {  // masked keys (and a masked -inf's NaN from exp2) give 0
      e0 = _mm512_maskz_mov_ps(visible_lanes(j, lo, hi), e0);
      e1 = _mm512_maskz_mov_ps(visible_lanes(j + 16, lo, hi), e1);
    }
    sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
    // Round to bf16, nearest even (VCVTNE2PS2BF16): e1 to the high half, e0 to the low.
    _mm512_storeu_si512(prow + j, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(e1, e0)));
  }
  return sum;
}

// Pass 2 of a row with its new max m_new (pass 1's): prow = 2^(scores in log2 units - m_new), the
// scores being s x mul; adds their sum to the row's 16-lane sum l, after rescaling l and the row's
// output o (Dvp values) from the old max m to m_new when it moved; m becomes m_new.
inline void row_exp(const float* s, uint16_t* prow, int64_t nk, int64_t lo, int64_t hi, float mul, float m_new,
                    float& m, float* l, float* o, int64_t Dvp) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // A row that has seen no key yet keeps max -inf; shifting by 0 keeps its exponentials at 0.
  const float shift = m_new == kNegInf ? 0.f : m_new;
  const __m512 sum = exp_row(s, prow, nk, lo, hi, mul, shift);
  if (m_new == m) {  // the max did not move: no rescale
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

// The one-pass exponentials of a row that has a max m from earlier blocks (no softcap): prow =
// 2^(scores - m), with no max pass over the block. The result does not depend on the shift as long
// as nothing overflows, so scores above m are taken as they come: values above 1 keep their
// relative precision in bf16 and fp32, and bounded by 2^12 they keep O and l within 2^12 x their
// usual size. Each of the sum's 16 lanes adds nk / 16 <= 16 values: all lanes <= 2^12 bound every
// value by 2^12; a lane above (or NaN) means some score may be more than 8 above m, and the row is
// redone with its new max (row_max, row_exp; under randomly growing keys ~7% of rows, see
// tests/python/test_cpu_rising_maxima.py). Returns false then, having left l untouched; true after adding
// the sum to l. Against the two passes on every block: +4-9% on 1-2k-token sequences (A/B, 2
// threads; D = 64 +6-9%), 0 on 8-128 tokens (one block per row).
inline bool row_exp_stale(const float* s, uint16_t* prow, int64_t nk, int64_t lo, int64_t hi, float mul, float m,
                          float* l) {
  const __m512 sum = exp_row(s, prow, nk, lo, hi, mul, m);
  if (_mm512_cmp_ps_mask(sum, _mm512_set1_ps(4096.f), _CMP_NLE_UQ) != 0) return false;
  _mm512_storeu_ps(l, _mm512_add_ps(_mm512_loadu_ps(l), sum));
  return true;
}

void forward_block(const VarlenParams& p, const KvTiles& kv, const WorkItem& item, Buffers& buf) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t D = p.head_dim, Dp = kv.Dp, Dvp = kv.Dvp;
  const ItemGeometry g(p, item, {kBlockQ, kBlockQ});
  const int64_t rows = g.rows, rows32 = round_up(rows, 32);
  const bool capped = p.softcap > 0.0;
  // Softcap: s -> cap tanh(scale s / cap), so the row pass multiplies by scale / cap first.
  const float sscale = capped ? float(p.scale / p.softcap) : float(p.scale), cap = float(p.softcap);
  // Pass 2's factor to log2 units (capped scores are stored so already).
  const float mul = capped ? 1.f : sscale * 1.4426950408889634f;

  // Q block, bf16 as stored (scaling it would round it a second time), zero padded to rows32 x Dp.
  uint16_t* q = buf.q.data();
  for (int64_t r = 0; r < rows32; ++r) {
    // (prefetch.h: the rows' stride)
    if (r + kRowsAhead < rows) prefetch_row(q_row<bfloat16>(p, g, r + kRowsAhead), D * 2);
    tiles::copy_row(q + r * Dp, reinterpret_cast<const uint16_t*>(q_row<bfloat16>(p, g, std::min(r, rows - 1))),
                    r < rows ? D : 0, Dp);
  }
  // (The row maxima and sums of the item's rows only: the whole buffers, 128 rows of 16-lane sums,
  // were an 8.5 KB fill per item, most of a one-token item's own work.)
  // (O needs no zeros: the first key block's P V stores it, 0 where a row sees none of its keys.)
  std::fill(buf.m.begin(), buf.m.begin() + rows, kNegInf);
  std::fill(buf.l.begin(), buf.l.begin() + rows * 16, 0.f);
  for (int64_t r = 0; r < rows; ++r) {  // each row's visible keys, once per item
    const KeyRange kr = visible_keys(p, g.i0 + r, g.Lq, g.Lk);
    buf.lo[r] = kr.lo, buf.hi[r] = kr.hi;
  }

  float* s = buf.s.data();
  uint16_t* P = buf.p.data();
  // Key blocks start on a granule (the packing's 32-key alignment); keys outside a row's visible
  // range, the packing's zero keys past the sequence's end included, are masked (left out of the
  // row max, their exponentials zeroed).
  const int64_t k_first = g.first.lo / kGranule * kGranule;
  if (k_first >= g.last.hi) std::fill(buf.o.begin(), buf.o.begin() + rows32 * Dvp, 0.f);  // no key block: rows of 0
  for (int64_t kb = k_first; kb < g.last.hi; kb += kBlockK) {
    const int64_t nk = std::min(kBlockK, round_up(g.last.hi - kb, kGranule));
    // The rows' visible keys relative to the block, clipped to it (so they fit the int32 lanes), and
    // the granules [glo, ghi) each 32-row group meets: under a mask (a causal diagonal, a window)
    // the products, the softmax and P skip the granules no row of the group sees.
    bool banded = false;
    for (int64_t r0 = 0; r0 < rows32; r0 += 32) {
      int64_t lo_g = nk, hi_g = 0;
      for (int64_t r = r0; r < std::min(r0 + 32, rows); ++r) {
        const int64_t lo = std::max<int64_t>(buf.lo[r] - kb, 0), hi = std::min<int64_t>(buf.hi[r] - kb, nk);
        buf.blo[r] = lo, buf.bhi[r] = hi;
        if (lo < hi) lo_g = std::min(lo_g, lo), hi_g = std::max(hi_g, hi);
      }
      const int64_t g0 = lo_g < hi_g ? lo_g / kGranule : 0, g1 = lo_g < hi_g ? (hi_g + kGranule - 1) / kGranule : 0;
      buf.glo[r0 / 32] = g0, buf.ghi[r0 / 32] = g1;
      banded |= g0 > 0 || g1 < nk / kGranule;
    }
    const tiles::Band band{buf.glo.data(), buf.ghi.data()};
    // S (rows32 x nk) = Q K^T: A = Q rows, B = packed key tiles; steps along d.
    tiles::gemm<false>(rows32 / 16, nk / 16, Dp / 32, s, kBlockK * 4, q, Dp * 2, 64, kv.key_tile(kb), Dp * 32, 1024,
                       banded ? &band : nullptr);
    // Row r's granules: its group's, [j0, j1) keys of the block.
    auto group_keys = [&](int64_t r) { return std::pair{buf.glo[r / 32] * kGranule, buf.ghi[r / 32] * kGranule}; };
    // The new maxima (pass 1) of the rows that need one: a row's first visible block (no max yet)
    // and every block under a softcap (pass 1 also caps the scores). Other rows take one pass
    // (row_exp_stale).
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t lo = buf.blo[r], hi = buf.bhi[r];
      const auto [j0, j1] = group_keys(r);
      float* srow = s + r * kBlockK + j0;
      if (lo < hi && (capped || buf.m[r] == kNegInf))
        buf.m_new[r] = std::max(buf.m[r], capped ? row_max<true>(srow, j1 - j0, lo - j0, hi - j0, sscale, cap)
                                                 : row_max<false>(srow, j1 - j0, lo - j0, hi - j0, sscale, cap));
    }
    for (int64_t r = 0; r < rows; ++r) {  // pass 2
      const auto [j0, j1] = group_keys(r);
      const int64_t lo = buf.blo[r] - j0, hi = buf.bhi[r] - j0, n = j1 - j0;
      float* srow = s + r * kBlockK + j0;
      uint16_t* prow = P + r * kBlockK + j0;
      if (lo >= hi) {  // nothing visible in this block: P row 0, O unchanged
        std::fill(prow, prow + n, uint16_t(0));
        continue;
      }
      if (!capped && buf.m[r] != kNegInf) {
        if (row_exp_stale(srow, prow, n, lo, hi, mul, buf.m[r], buf.l.data() + r * 16)) continue;
        buf.m_new[r] = std::max(buf.m[r], row_max<false>(srow, n, lo, hi, sscale, cap));
      }
      row_exp(srow, prow, n, lo, hi, mul, buf.m_new[r], buf.m[r], buf.l.data() + r * 16, buf.o.data() + r * Dvp,
              Dvp);
    }
    // O (rows32 x Dvp) += P V: A = P rows (steps: 32 keys), B = packed value tiles; the first block
    // stores O = P V (no zero fill of O per item and no C-tile loads: a 64 KiB memset was 6% of a
    // short-sequence forward's samples, perf).
    if (kb == k_first)
      tiles::gemm<false>(rows32 / 16, Dvp / 16, nk / kGranule, buf.o.data(), Dvp * 4, P, kBlockK * 2, 64,
                         kv.value_granule(kb), 1024, Dvp / 16 * 1024, nullptr, banded ? &band : nullptr);
    else
      tiles::gemm<true>(rows32 / 16, Dvp / 16, nk / kGranule, buf.o.data(), Dvp * 4, P, kBlockK * 2, 64,
                        kv.value_granule(kb), 1024, Dvp / 16 * 1024, nullptr, banded ? &band : nullptr);
  }
  // The row max is in log2 units: lse = m ln 2 + log(l).
  constexpr float kLn2 = 0.6931471805599453f;
  for (int64_t r = 0; r < rows; ++r) {
    if (r + kRowsAhead < rows) prefetch_row(out_row<bfloat16>(p, g, r + kRowsAhead), p.head_dim_v * 2, true);
    write_output_row<bfloat16>(p, g, r, buf.o.data() + r * Dvp, buf.m[r] * kLn2,
                               _mm512_reduce_add_ps(_mm512_loadu_ps(buf.l.data() + r * 16)));
  }
}

// Causal items in pairs: query block j of a sequence-head with block nb - 1 - j (nb blocks), so
// that their costs are about equal. Ordered most expensive first, single causal blocks run the
// largest block of every (sequence, head) before the next size: consecutive items then read other
// keys and values (1 MiB per head at 2048 tokens, D = 128), from L3. Equal costs keep a (sequence,
// head)'s items together (run_items breaks ties in batch order), its keys and values in L2.
// Measured, 2 threads, D = 128, causal: 4 x 1024 tokens 939 -> 1058 GFLOP/s, 2 x 2048 1238 -> 1393.
std::vector<WorkItem> pair_causal_blocks(const VarlenParams& p, int64_t bq, const std::vector<WorkItem>& items) {
  // forward_items lists a sequence's items block-major: item (b, j, h) at its first + j heads_q + h.
  std::vector<WorkItem> paired;
  size_t first = 0;
  for (int64_t b = 0; b < p.num_sequences; ++b) {
    const int64_t nb = (p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b] + bq - 1) / bq;
    for (int64_t j = 0; j < (nb + 1) / 2; ++j)
      for (int64_t h = 0; h < p.heads_q; ++h) {
        WorkItem it = items[first + j * p.heads_q + h];
        if (nb - 1 - j != j) it.cost += items[first + (nb - 1 - j) * p.heads_q + h].cost;
        paired.push_back(it);
      }
    first += size_t(nb * p.heads_q);
  }
  return paired;
}

}  // namespace

void forward_bf16_amx(const VarlenParams& p) {
  PackedKv pk;
  pk.Dp = round_up(p.head_dim, 32);
  pk.Dvp = round_up(p.head_dim_v, 32);  // 2 x 2 groups of 16-column C tiles
  const int64_t bq = kBlockQ;
  // Query blocks of a sequence that one item runs: one, two under causal (pair_causal_blocks).
  const int64_t item_blocks = p.causal ? 2 : 1;
  pk.gk0.assign(p.num_sequences + 1, 0);
  pk.local.assign(p.num_sequences, false);
  for (int64_t b = 0; b < p.num_sequences; ++b) {
    const int64_t Lq = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b], Lk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    pk.local[b] = p.heads_q == p.heads_k && Lq <= item_blocks * bq && Lk <= kLocalKeys;
    pk.gk0[b + 1] = pk.gk0[b] + (pk.local[b] ? 0 : (Lk + kGranule - 1) / kGranule);
  }
  pk.G = pk.gk0[p.num_sequences];
  const size_t k_words = size_t(p.heads_k * pk.G * kGranule * pk.Dp / 2);
  const size_t v_words = size_t(p.heads_k * pk.G * kGranule * pk.Dvp / 2);
  Workspace ws(k_words + v_words);
  pk.k = ws.data;  // on a line (workspace.h), and so is every packed tile (its size is 1 KiB)
  pk.v = pk.k + k_words;
  pack_kv(p, pk);

  double flops = 0;
  std::vector<WorkItem> items = forward_items(p, {bq, bq}, flops);
  if (p.causal) items = pair_causal_blocks(p, bq, items);
  std::vector<Buffers>& buffers = kept_buffers<Buffers>(std::max(1, num_threads()), bq, pk.Dp, pk.Dvp);
  run_items(
      items, flops,
      [&](int t, const WorkItem& item) {
        Buffers& buf = buffers[t];
        const int64_t b = item.seq, kvh = item.head / (p.heads_q / p.heads_k);
        KvTiles kv = pk.of(kvh, b);
        if (pk.local[b]) {
          kv = {buf.kv.data(), buf.kv.data() + kLocalKeys * pk.Dp / 2, pk.Dp, pk.Dvp};
          pack_sequence(p, b, kvh, kv, buf.rows.data());
        }
        forward_block(p, kv, item, buf);
        const int64_t nb = (p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b] + bq - 1) / bq;
        if (p.causal && nb - 1 - item.block != item.block)
          forward_block(p, kv, {b, item.head, nb - 1 - item.block, 0.0}, buf);
      },
      [](int) { return tiles::TileScope(); });
}

}  // namespace scree::cpu::SCREE_CPU_ISA

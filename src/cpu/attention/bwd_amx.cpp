// CPU varlen attention backward for bfloat16 inputs on AMX tiles (the amx build only): the five
// products of each (query tile, key block) on the tiles in bf16 with fp32 accumulation,
//   S = Q K^T,  dP = dO V^T,  dV^T += dO^T P,  dK^T += Q^T dS,  dQ += dS K,
// with P and dS rounded to bf16 as operands (as FlashAttention does on GPUs), and in fp32 AVX-512
// between them: P = exp((scale s - row_max) - log_sum), dS = P (dP - delta) [(1 - tanh^2) cap],
// masks; delta = rowsum(dO * O) in fp32. The schedule (items (sequence, kv head, chunk of key
// blocks), dK/dV owned per item and summed over the GQA group with no atomics, dQ in fp32 with
// chunk partials reduced in a fixed order, which rows need recomputed softmax statistics) is
// bwd_schedule.h's, shared with the fp32 kernel (bwd.cpp): same determinism, same treatment of a
// too-coarse lse (|lse| >= 32: the rows' max and log-sum recomputed here from S on the tiles, so
// the S of the statistics and of the gradients are the same bits). No case falls back to the fp32
// kernel (the backward takes no paged keys: only forwards do).
//
// Operand layouts (why dV^T and dK^T, not dV and dK): an A tile is 16 rows x 32 bf16 along k, a B
// tile 16 pairs of rows along k interleaved (VNNI). The fp32 pass produces P and dS a query row
// at a time; two rows at once interleave into the VNNI form directly (5 instructions per 16 keys),
// so P and dS are B operands over queries, and the products that consume them as "transposed"
// take the other factor transposed instead: dO^T and Q^T, which depend on the queries only and are
// transposed once per call (not once per key block), like Q and dO row-major (A of S and dP). The
// key side (K^T and V^T in VNNI pairs for S and dP, K in VNNI over keys for dQ) is packed once per
// key block by the item that owns it. dS is also stored row-major (the A operand of dQ).
//
// Measured (expectation, then outcome; 4 x 1024 tokens, 4 heads x D 128, a C++ loop over
// varlen_bwd_cpu, rdtsc per phase in a temporary build). Expected ~800-1000 GFLOP/s on 2 threads
// (5 tile products against the forward's 2, a heavier fp32 pass). First version: 1 thread 338,
// 2 threads ~650; the dV^T / dK^T products took 43% of the time, the dK/dV write-out 13%.
// - Q^T and dO^T stored per 32-query granule (each A tile 1 KiB contiguous) instead of as rows of
//   all NQ queries: those rows were 8 KiB apart, so a tile's 16 rows fell in one L1 set: 338 -> 390.
// - The write-out by 16 x 16 transposes and an AVX-512 bf16 rounding instead of a column walk
//   with scalar conversion: 13% -> ~3% of the time.
// - The query-side operands in the kept Workspace (16 MiB of fresh pages a call were faulted in):
//   2 threads 800 -> 880-960 GFLOP/s, 64-token sequences 150 -> 286.
// - Block sizes (2 threads; D 128 / D 64 / D 128 causal / 64-token sequences, GFLOP/s):
//   rows x keys 64 x 128: 877 / 755 / 730 / 286; 128 x 128: 959 / 796 / 750 / 287; 128 x 256:
//   918 / 808 / 696 / 268; 256 x 128: 959 / 778 / 746 / 293 (about the noise): 128 x 128.
// - Tried, no gain measurable: a one-FMA P argument for rows whose lse is used as is (kept: it is
//   shorter), skipping the lane mask of fully visible rows (kept).
// - Under a mask each 32-row group of a query tile skips the key granules it does not meet, in the
//   five products and the P / dS pass (tile_band; the forward's band, fwd_amx.cpp): causal
//   backward +2-6% (eq1024 d128 +5.8%, mix d128 +3.9%, short +2.3%; medians of 5 alternated
//   rounds, cpu_attn_ab, 2 threads; benchmarks/NOTES.md, session 49).
// Now (1 thread, 128 x 256 before the Workspace change, shares of the time): S and dP 25%, dV^T and dK^T 37%, dQ 12%, the
// P / dS pass 14%, packing the key block 5%, the write-out 5%. Backward alone against the fp32
// kernel on the same bf16 inputs (SCREE_CPU_ISA=avx512), 2 threads: 2.8-3.3x on long and mixed
// lengths (770-1010 against 260-330 GFLOP/s), 1.5-1.9x on 64-token sequences.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "aligned.h"
#include "amx_tiles.h"
#include "bwd_amx.h"
#include "bwd_schedule.h"
#include "fwd_common.h"
#include "simd.h"
#include "vec512.h"
#include "work.h"
#include "workspace.h"

namespace scree::cpu::SCREE_CPU_ISA {

using attention::KeyRange;
using attention::VarlenBackwardParams;
using attention::visible_keys;
using bwd::Chunk;
using bwd::KeyBlock;
using bwd::Sequence;

namespace {

// Keys per block and query rows per tile, both multiples of 32 (2 x 2 groups of 16 x 16 C tiles,
// and 32 queries / keys per A-tile row along k); the sweep is in the header. Working set per
// thread at D = Dv = 128: the block's K^T, V^T, K tiles (3 x 32 KiB), dK^T, dV^T (2 x 64 KiB), per
// query tile S, dP (2 x 64 KiB), P, dS in VNNI and dS rows (3 x 32 KiB), Q, dO, Q^T, dO^T (4 x 32
// KiB), dQ (64 KiB): ~640 KiB, in the 2 MiB L2. 128 query rows give the dV^T / dK^T products 4
// steps along k per load and store of their C tiles (64 rows: 2).
constexpr int64_t kBlockK = 128;
constexpr int64_t kBlockQ = 128;
constexpr int64_t kAlign = 32;

using V = vec_t<float>;

// The schedule plus the per-call operands: bf16 Q and dO row-major (Hq, NQ, Dp / Dvp) and
// transposed per 32-query granule (Hq, NQ / 32, Dp / Dvp, 32), where NQ counts each sequence's
// rows rounded up to 32 (zeros after its last row, so tiles never read another sequence's rows),
// sequence b from qbase[b].
struct Plan : bwd::Schedule {
  bool capped;
  float cap, sscale;  // s -> scale s, or cap tanh(sscale s) with sscale = scale / cap
  int64_t NQ = 0;
  std::vector<int64_t> qbase;
  std::unique_ptr<Workspace> ws;  // q, qt, dout, doutt (kept between calls: workspace.h)
  uint16_t *q, *qt, *dout, *doutt;
  std::vector<float> delta;             // (Hq, total_q): dO . O
  std::vector<float> row_max, log_sum;  // (Hq, total_q), as in bwd.cpp's Plan
  LineArray<float> scratch;             // partial dQ of chunked sequences
  explicit Plan(const VarlenBackwardParams& params) : bwd::Schedule(params, kBlockK, kAlign, 32, sizeof(float)) {
    capped = p.softcap > 0.0;
    cap = float(p.softcap);
    sscale = capped ? float(p.scale / p.softcap) : float(p.scale);
    qbase.resize(seqs.size());
    for (size_t b = 0; b < seqs.size(); ++b) {
      qbase[b] = NQ;
      NQ += round_up(seqs[b].Lq, kAlign);
    }
    const size_t n = size_t(p.heads_q * NQ);  // rows; D_pad and Dv_pad are even: whole words
    ws = std::make_unique<Workspace>(std::max<size_t>(n * size_t(D_pad + Dv_pad), 1));
    q = reinterpret_cast<uint16_t*>(ws->data);
    qt = q + n * D_pad;
    dout = qt + n * D_pad;
    doutt = dout + n * Dv_pad;
    delta.resize(size_t(p.heads_q * p.total_q));
    if (scratch_elems > 0) scratch = line_array<float>(size_t(scratch_elems));  // zeroed by the items
  }
};

// 16 bf16 (bits) as fp32.
inline __m512 widen(const uint16_t* x) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))), 16));
}

// The query-side operands and delta, one item per (sequence, query head, 32 rows).
void pack_queries(Plan& plan) {
  const auto& p = plan.p;
  const int64_t D = plan.D, Dv = plan.Dv, Dp = plan.D_pad, Dvp = plan.Dv_pad, NQ = plan.NQ;
  std::vector<WorkItem> items;
  double work = 0;
  for (int64_t b = 0; b < p.num_sequences; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i0 = 0; i0 < plan.seqs[b].Lq; i0 += kAlign) {
        items.push_back({b, h, i0, 1.0});
        work += double(kAlign) * double(D + 2 * Dv) * 8;
      }
  const int threads = std::max(1, num_threads());
  std::vector<LineVector<uint16_t>> orow(threads, LineVector<uint16_t>(Dvp));
  run_items(items, work, [&](int t, const WorkItem& it) {
    const Sequence& s = plan.seqs[it.seq];
    const int64_t h = it.head, i0 = it.block, row0 = h * NQ + plan.qbase[it.seq] + i0;
    uint16_t* q = plan.q + row0 * Dp;
    uint16_t* dout = plan.dout + row0 * Dvp;
    for (int64_t r = 0; r < kAlign; ++r) {
      const int64_t i = s.q0 + std::min(i0 + r, s.Lq - 1);  // rows past the end: zeros
      const bool real = i0 + r < s.Lq;
      const auto* Q = static_cast<const bfloat16*>(p.q) + i * p.q_row_stride + h * p.q_head_stride;
      const auto* dO = static_cast<const bfloat16*>(p.dout) + i * p.dout_row_stride + h * p.dout_head_stride;
      const auto* O = static_cast<const bfloat16*>(p.out) + i * p.out_row_stride + h * p.out_head_stride;
      tiles::copy_row(q + r * Dp, reinterpret_cast<const uint16_t*>(Q), real ? D : 0, Dp);
      tiles::copy_row(dout + r * Dvp, reinterpret_cast<const uint16_t*>(dO), real ? Dv : 0, Dvp);
      if (!real) continue;
      uint16_t* o = orow[t].data();
      tiles::copy_row(o, reinterpret_cast<const uint16_t*>(O), Dv, Dvp);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t d = 0; d < Dvp; d += 16) acc = _mm512_fmadd_ps(widen(dout + r * Dvp + d), widen(o + d), acc);
      plan.delta[h * p.total_q + i] = _mm512_reduce_add_ps(acc);
    }
    const int64_t col0 = plan.qbase[it.seq] + i0;
    tiles::transpose_rows(q, Dp, Dp, plan.qt + (h * NQ + col0) * Dp, kAlign);
    tiles::transpose_rows(dout, Dvp, Dvp, plan.doutt + (h * NQ + col0) * Dvp, kAlign);
  });
}

// Every tile operand on a line (aligned.h).
struct Buffers {
  LineVector<uint16_t> krows, vrows, dsr;  // block's key / value rows (zero padded); dS rows (bf16)
  LineVector<uint32_t> kt, vt, kv, pv, dsv;  // K^T, V^T (VNNI over d), K (VNNI over keys); P, dS (VNNI over queries)
  LineVector<float> s, dp, dkt, dvt, dq, row, mx, sum;
  std::vector<int64_t> lo, hi;    // a query tile's rows: their visible keys relative to the tile's columns
  std::vector<int64_t> glo, ghi;  // a query tile's 32-row groups: the granules of its keys each meets
  std::vector<int64_t> slo, shi;  // the same band by granule: the query groups that meet it
  Buffers(int64_t Dp, int64_t Dvp, int64_t dq_elems)
      : krows(kBlockK * Dp), vrows(kBlockK * Dvp), dsr(kBlockQ * kBlockK), kt(kBlockK * Dp / 2),
        vt(kBlockK * Dvp / 2), kv(kBlockK * Dp / 2), pv(kBlockQ * kBlockK / 2), dsv(kBlockQ * kBlockK / 2),
        s(kBlockQ * kBlockK), dp(kBlockQ * kBlockK), dkt(Dp * kBlockK), dvt(Dvp * kBlockK), dq(dq_elems),
        row(std::max(Dp, Dvp)), mx(kBlockQ), sum(kBlockQ), lo(kBlockQ), hi(kBlockQ), glo(kBlockQ / kAlign),
        ghi(kBlockQ / kAlign), slo(kBlockK / kAlign), shi(kBlockK / kAlign) {}
};

// Keys [kb, kb + nk) (nk a multiple of 32; keys at or past Lk zero) of kv head kvh as B operands:
// K^T (16-key tiles of Dp / 2 pair-rows) always, with `all` also V^T and K in VNNI over keys
// (32-key granules x 16-column chunks, the forward's value layout).
void pack_block(const Plan& plan, const Sequence& s, int64_t kvh, int64_t kb, int64_t nk, Buffers& buf, bool all) {
  const int64_t Dp = plan.D_pad, Dvp = plan.Dv_pad;
  const KvRows<bfloat16> kv(plan.p, int64_t(&s - plan.seqs.data()), kvh, s.k0, s.Lk);
  for (int64_t c = 0; c < nk; ++c) {
    const int64_t t = std::min(kb + c, s.Lk - 1);
    const bool real = kb + c < s.Lk;
    tiles::copy_row(buf.krows.data() + c * Dp, reinterpret_cast<const uint16_t*>(kv.key(t)), real ? plan.D : 0, Dp);
    if (all)
      tiles::copy_row(buf.vrows.data() + c * Dvp, reinterpret_cast<const uint16_t*>(kv.value(t)), real ? plan.Dv : 0,
                      Dvp);
  }
  for (int64_t c = 0; c < nk; c += 16) {
    tiles::pack_keys(buf.krows.data() + c * Dp, Dp, Dp, buf.kt.data() + c * Dp / 2);
    if (all) tiles::pack_keys(buf.vrows.data() + c * Dvp, Dvp, Dvp, buf.vt.data() + c * Dvp / 2);
  }
  if (!all) return;
  for (int64_t g = 0; g < nk; g += 32)
    for (int64_t e = 0; e < Dp / 16; ++e)
      tiles::pack_values(buf.krows.data() + g * Dp + 16 * e, Dp, buf.kv.data() + (g / 32 * (Dp / 16) + e) * 256);
}

// S (m x w, row stride kBlockK) = Q K^T for the m query rows at plan row `qrow` (of head h's
// NQ rows) and the packed keys from key column c0 (a multiple of 32) of the block; `band`: only
// each 32-row group's granules (tiles::gemm).
inline void scores(const Plan& plan, int64_t h, int64_t qrow, int64_t m, int64_t c0, int64_t w, Buffers& buf,
                   const tiles::Band* band = nullptr) {
  const int64_t Dp = plan.D_pad;
  tiles::gemm<false>(m / 16, w / 16, Dp / 32, buf.s.data(), kBlockK * 4, plan.q + (h * plan.NQ + qrow) * Dp,
                     Dp * 2, 64, buf.kt.data() + c0 * Dp / 2, Dp * 32, 1024, band);
}

// The band of a query tile (rows [i0, i0 + m) of a sequence, `rows` of them real) over key
// columns [kb + c0, kb + c1) (w of them, a multiple of 32): each 32-row group's granules
// [glo, ghi), made non-decreasing on both sides so that each granule's groups [slo, shi) are
// contiguous (the dV^T and dK^T products step over them); a group that sees no key keeps an empty
// range unless groups on both sides see its granules (then its rows give P = dS = 0 there). Each
// real row's own range, relative to c0, goes to buf.lo / buf.hi (the P / dS pass reads it). Returns
// whether some group skips a granule.
inline bool tile_band(const VarlenBackwardParams& p, int64_t i0, int64_t m, int64_t rows, int64_t Lq, int64_t Lk,
                      int64_t kb, int64_t c0, int64_t c1, int64_t w, Buffers& buf) {
  const int64_t groups = m / kAlign, granules = w / kAlign;
  if (!attention::banded(p)) {  // every row sees every key: no band
    std::fill_n(buf.lo.begin(), rows, 0);
    std::fill_n(buf.hi.begin(), rows, c1 - c0);
    std::fill_n(buf.glo.begin(), groups, 0);
    std::fill_n(buf.ghi.begin(), groups, granules);
    return false;
  }
  for (int64_t gi = 0; gi < groups; ++gi) {
    int64_t lo_g = w, hi_g = 0;
    for (int64_t r = gi * kAlign; r < std::min((gi + 1) * kAlign, rows); ++r) {
      const KeyRange kr = visible_keys(p, i0 + r, Lq, Lk);
      const int64_t lo = std::clamp<int64_t>(kr.lo - kb - c0, 0, c1 - c0);
      const int64_t hi = std::clamp<int64_t>(kr.hi - kb - c0, lo, c1 - c0);
      buf.lo[r] = lo, buf.hi[r] = hi;
      if (lo < hi) lo_g = std::min(lo_g, lo), hi_g = std::max(hi_g, hi);
    }
    buf.glo[gi] = lo_g < hi_g ? lo_g / kAlign : granules;
    buf.ghi[gi] = lo_g < hi_g ? (hi_g + kAlign - 1) / kAlign : 0;
  }
  for (int64_t gi = 1; gi < groups; ++gi) buf.ghi[gi] = std::max(buf.ghi[gi], buf.ghi[gi - 1]);
  for (int64_t gi = groups - 2; gi >= 0; --gi) buf.glo[gi] = std::min(buf.glo[gi], buf.glo[gi + 1]);
  bool banded = false;
  for (int64_t gi = 0; gi < groups; ++gi) {
    buf.glo[gi] = std::min(buf.glo[gi], buf.ghi[gi]);  // empty: [ghi, ghi)
    banded |= buf.glo[gi] > 0 || buf.ghi[gi] < granules;
  }
  for (int64_t j = 0; j < granules; ++j) {
    int64_t lo = groups, hi = 0;
    for (int64_t gi = 0; gi < groups; ++gi)
      if (buf.glo[gi] <= j && j < buf.ghi[gi]) lo = std::min(lo, gi), hi = gi + 1;
    buf.slo[j] = lo < hi ? lo : 0, buf.shi[j] = lo < hi ? hi : 0;
  }
  return banded;
}

// Scores as the softmax sees them (natural-log units): scale s, or cap tanh(sscale s) (then t
// gets the tanh, for the derivative).
inline __m512 scaled(const Plan& plan, __m512 x, __m512& t) {
  if (!plan.capped) return _mm512_mul_ps(x, _mm512_set1_ps(plan.sscale));
  t = reinterpret_cast<__m512>(vtanh<float>(reinterpret_cast<V>(_mm512_mul_ps(x, _mm512_set1_ps(plan.sscale)))));
  return _mm512_mul_ps(t, _mm512_set1_ps(plan.cap));
}

// The rows' softmax statistics where the forward's lse is too coarse (bwd.cpp, softmax_stats:
// why), one item per (sequence, query head, 64-row block) with such a row: an online max and sum
// over the visible key blocks, S on the tiles as in the gradient pass.
void softmax_stats(Plan& plan, std::vector<Buffers>& buffers) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  constexpr float kLog2e = 1.4426950408889634f;
  const auto& p = plan.p;
  double flops = 0;
  std::vector<WorkItem> items = bwd::stats_items(plan, kBlockQ, false, plan.row_max, plan.log_sum, flops);
  if (items.empty()) return;
  run_items(
      items, flops,
      [&](int t, const WorkItem& it) {
        Buffers& buf = buffers[t];
        const Sequence& s = plan.seqs[it.seq];
        const int64_t h = it.head, i0 = it.block * kBlockQ, m = std::min(kBlockQ, s.Lq - i0);
        const int64_t m32 = round_up(m, kAlign), row0 = h * p.total_q + s.q0 + i0;
        std::fill(buf.sum.begin(), buf.sum.end(), 0.f);
        std::fill(buf.mx.begin(), buf.mx.end(), kNegInf);
        const KeyRange first = visible_keys(p, i0, s.Lq, s.Lk), last = visible_keys(p, i0 + m - 1, s.Lq, s.Lk);
        for (int64_t kb = first.lo / kAlign * kAlign; kb < last.hi; kb += kBlockK) {
          const int64_t nk = std::min(kBlockK, round_up(last.hi - kb, kAlign));
          pack_block(plan, s, h / plan.G, kb, nk, buf, false);
          scores(plan, h, plan.qbase[it.seq] + i0, m32, 0, nk, buf);
          for (int64_t r = 0; r < m; ++r) {
            const KeyRange kr = visible_keys(p, i0 + r, s.Lq, s.Lk);
            const int64_t lo = std::clamp<int64_t>(kr.lo - kb, 0, nk), hi = std::clamp<int64_t>(kr.hi - kb, lo, nk);
            if (hi <= lo) continue;
            float* srow = buf.s.data() + r * kBlockK;
            __m512 top = _mm512_set1_ps(buf.mx[r]), t;
            for (int64_t j = 0; j < nk; j += 16) {
              const __m512 x = scaled(plan, _mm512_loadu_ps(srow + j), t);
              _mm512_storeu_ps(srow + j, x);
              top = _mm512_mask_max_ps(top, visible_lanes(j, lo, hi), top, x);
            }
            const float mnew = _mm512_reduce_max_ps(top);
            if (mnew == kNegInf) continue;
            __m512 sum = _mm512_setzero_ps();
            for (int64_t j = 0; j < nk; j += 16) {
              const __m512 x = _mm512_sub_ps(_mm512_loadu_ps(srow + j), _mm512_set1_ps(mnew));
              sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(visible_lanes(j, lo, hi),
                                                           exp2_nonpositive(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)))));
            }
            buf.sum[r] = buf.sum[r] * std::exp(buf.mx[r] - mnew) + _mm512_reduce_add_ps(sum);
            buf.mx[r] = mnew;
          }
        }
        for (int64_t r = 0; r < m; ++r) {
          const bool none = buf.mx[r] == kNegInf || buf.sum[r] == 0.f;  // sees no key (NaN propagates)
          plan.row_max[row0 + r] = none ? kNegInf : buf.mx[r];
          plan.log_sum[row0 + r] = none ? 0.f : std::log(buf.sum[r]);
        }
      },
      [](int) { return tiles::TileScope(); });
}

// The 16 words of VNNI pairs (row a's bf16 low, row b's high) for 16 keys.
inline __m512i pairs(__m512 a, __m512 b) {
  const __m512i lo = _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(a)));
  const __m512i hi = _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(b)));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

// One query row's P and dS over 16 keys at column j (lanes outside [lo, hi) zero).
struct RowState {
  const float *s, *dp;
  __m512 shift, log_sum, delta, shift2;  // shift2 = -shift log2(e)
  int64_t lo, hi;
  bool exact, full;  // exact: |row_max| >= 32 (then recomputed statistics); full: [lo, hi) covers the tile
};
inline void p_ds(const Plan& plan, const RowState& r, int64_t j, __m512& pv, __m512& ds) {
  constexpr float kLog2e = 1.4426950408889634f;
  __m512 t = _mm512_setzero_ps(), arg;
  if (r.exact) {  // (x - max) - log_sum: exact near the max at any magnitude (bwd.cpp, softmax_stats)
    const __m512 x = scaled(plan, _mm512_loadu_ps(r.s + j), t);
    arg = _mm512_mul_ps(_mm512_sub_ps(_mm512_sub_ps(x, r.shift), r.log_sum), _mm512_set1_ps(kLog2e));
  } else if (plan.capped) {  // |row_max| < 32: rounding shift2 costs < 2^-18 relative on P
    arg = _mm512_fmadd_ps(scaled(plan, _mm512_loadu_ps(r.s + j), t), _mm512_set1_ps(kLog2e), r.shift2);
  } else {  // one FMA: s scale log2(e) - lse log2(e)
    arg = _mm512_fmadd_ps(_mm512_loadu_ps(r.s + j), _mm512_set1_ps(plan.sscale * kLog2e), r.shift2);
  }
  // P <= 1 (bwd.cpp: a rounding above the row max must not overflow); min(0, NaN) keeps the NaN.
  arg = _mm512_min_ps(_mm512_setzero_ps(), arg);
  const __mmask16 seen = r.full ? __mmask16(0xffff) : visible_lanes(j, r.lo, r.hi);  // 0 even where dP is not finite
  pv = _mm512_maskz_mov_ps(seen, exp2_nonpositive(arg));
  ds = _mm512_maskz_mul_ps(seen, pv, _mm512_sub_ps(_mm512_loadu_ps(r.dp + j), r.delta));
  if (plan.capped)
    ds = _mm512_mul_ps(ds, _mm512_mul_ps(_mm512_fnmadd_ps(t, t, _mm512_set1_ps(1.f)), _mm512_set1_ps(plan.cap)));
}

// Keys [0, n) of a block's dK^T or dV^T (rows d, row stride kBlockK) times `scale` as bf16 rows
// of d values (out: key 0's, rows row_stride apart): 16 x 16 transposes (pack_keys's, on 32-bit
// values), each row rounded and stored as it comes out. Reading the columns one value at a time
// and converting with from_compute instead was 13% of the backward (1 thread, 4 x 1024 tokens,
// D 128); this is ~3%.
void write_keys(const float* t, int64_t d, int64_t n, float scale, bfloat16* out, int64_t row_stride) {
  alignas(64) uint32_t tile[256];
  const __m512 vs = _mm512_set1_ps(scale);
  for (int64_t c0 = 0; c0 < n; c0 += 16)
    for (int64_t d0 = 0; d0 < d; d0 += 16) {
      tiles::pack_keys(reinterpret_cast<const uint16_t*>(t + d0 * kBlockK + c0), kBlockK * 2, 32, tile);
      const __mmask16 cols = d - d0 >= 16 ? __mmask16(0xffff) : __mmask16((1u << (d - d0)) - 1);
      for (int64_t r = 0; r < std::min<int64_t>(16, n - c0); ++r)
        _mm256_mask_storeu_epi16(out + (c0 + r) * row_stride + d0, cols,
                                 to_bf16_bits(_mm512_mul_ps(_mm512_castsi512_ps(_mm512_load_si512(tile + 16 * r)), vs)));
    }
}

// One item: chunk ci of a sequence, for kv head kvh.
void backward_chunk(const Plan& plan, int64_t ci, int64_t kvh, Buffers& buf) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const auto& p = plan.p;
  const Chunk& ch = plan.chunks[ci];
  const Sequence& s = plan.seqs[ch.seq];
  const int64_t G = plan.G, D = plan.D, Dv = plan.Dv, Dp = plan.D_pad, Dvp = plan.Dv_pad, NQ = plan.NQ;
  const int64_t Lq = s.Lq, Lk = s.Lk, qbase = plan.qbase[ch.seq];

  // dQ accumulator of this item: (G, acc_rows, Dp), zeroed here (first touch on this thread).
  float* dq_acc = ch.scratch >= 0 ? plan.scratch.get() + ch.scratch + kvh * G * ch.acc_rows * Dp : buf.dq.data();
  std::fill(dq_acc, dq_acc + G * ch.acc_rows * Dp, 0.f);

  for (int64_t j = ch.kb_begin; j < ch.kb_end; ++j) {
    const KeyBlock& blk = plan.blocks[s.first_block + j];
    const int64_t kb = j * kBlockK, n = std::min(kBlockK, Lk - kb), n32 = round_up(n, kAlign);
    pack_block(plan, s, kvh, kb, n32, buf, true);
    for (int64_t d = 0; d < Dp; ++d) std::fill_n(buf.dkt.data() + d * kBlockK, n32, 0.f);  // the block's keys only
    for (int64_t d = 0; d < Dvp; ++d) std::fill_n(buf.dvt.data() + d * kBlockK, n32, 0.f);

    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = kvh * G + g;
      for (int64_t i0 = blk.row_lo / kAlign * kAlign; i0 < blk.row_hi; i0 += kBlockQ) {
        const int64_t m = std::min(kBlockQ, round_up(blk.row_hi, kAlign) - i0);  // a multiple of 32
        const int64_t rows = std::min(m, Lq - i0);                               // real rows
        // Columns of the block the tile's rows can see, from a multiple of 32 (exact: P = dS = 0
        // outside each row's range).
        const KeyRange first = visible_keys(p, i0, Lq, Lk), last = visible_keys(p, i0 + rows - 1, Lq, Lk);
        const int64_t c0 = std::clamp<int64_t>(first.lo - kb, 0, n) / kAlign * kAlign;
        const int64_t c1 = std::clamp<int64_t>(last.hi - kb, 0, n);
        if (c1 <= c0) continue;
        const int64_t w = round_up(c1 - c0, kAlign);
        // Under a mask (the diagonal's tile, a window) the products, P and dS leave out what each
        // 32-row group does not meet (tile_band).
        const bool banded = tile_band(p, i0, m, rows, Lq, Lk, kb, c0, c1, w, buf);
        const tiles::Band by_rows{buf.glo.data(), buf.ghi.data()}, by_keys{buf.slo.data(), buf.shi.data(), true};
        scores(plan, h, qbase + i0, m, c0, w, buf, banded ? &by_rows : nullptr);
        tiles::gemm<false>(m / 16, w / 16, Dvp / 32, buf.dp.data(), kBlockK * 4,
                           plan.dout + (h * NQ + qbase + i0) * Dvp, Dvp * 2, 64, buf.vt.data() + c0 * Dvp / 2,
                           Dvp * 32, 1024, banded ? &by_rows : nullptr);

        // P and dS, two rows at a time: VNNI words (pair-row r / 2 of query granule r / 32, key
        // chunk c / 16) and dS rows.
        const int64_t chunks16 = w / 16;
        for (int64_t r = 0; r < m; r += 2) {
          RowState st[2];
          for (int e = 0; e < 2; ++e) {
            const int64_t i = i0 + r + e, at = h * p.total_q + s.q0 + i;
            RowState& x = st[e];
            x.s = buf.s.data() + (r + e) * kBlockK;
            x.dp = buf.dp.data() + (r + e) * kBlockK;
            x.lo = x.hi = 0;
            x.shift = x.log_sum = x.delta = x.shift2 = _mm512_setzero_ps();
            x.exact = x.full = false;
            if (i >= Lq || plan.row_max[at] == kNegInf) continue;  // padding, or a row that sees no key
            x.lo = buf.lo[r + e], x.hi = buf.hi[r + e];  // (tile_band's)
            x.shift = _mm512_set1_ps(plan.row_max[at]);
            x.log_sum = _mm512_set1_ps(plan.log_sum[at]);
            x.delta = _mm512_set1_ps(plan.delta[at]);
            // The one-FMA argument rounds (row_max + log_sum) log2(e): fine below |lse| ~ 64.
            x.shift2 = _mm512_set1_ps(-(plan.row_max[at] + plan.log_sum[at]) * 1.4426950408889634f);
            x.exact = std::abs(plan.row_max[at]) >= bwd::kExactLse;
            x.full = x.lo == 0 && x.hi >= w;
          }
          const int64_t vnni = ((r / 32) * chunks16 * 16 + (r % 32) / 2) * 16;  // words
          for (int64_t c = buf.glo[r / kAlign] * kAlign; c < buf.ghi[r / kAlign] * kAlign; c += 16) {
            __m512 p0, d0, p1, d1;
            p_ds(plan, st[0], c, p0, d0);
            p_ds(plan, st[1], c, p1, d1);
            _mm512_storeu_si512(buf.pv.data() + vnni + c * 16, pairs(p0, p1));
            _mm512_storeu_si512(buf.dsv.data() + vnni + c * 16, pairs(d0, d1));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf.dsr.data() + r * kBlockK + c),
                                reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(d0)));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf.dsr.data() + (r + 1) * kBlockK + c),
                                reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(d1)));
          }
        }
        // dV^T (Dvp x keys) += dO^T P and dK^T (Dp x keys) += Q^T dS: steps of 32 queries.
        tiles::gemm<true>(Dvp / 16, chunks16, m / 32, buf.dvt.data() + c0, kBlockK * 4,
                          plan.doutt + (h * NQ + qbase + i0) * Dvp, 64, Dvp * 64, buf.pv.data(), 1024,
                          chunks16 * 1024, nullptr, banded ? &by_keys : nullptr);
        tiles::gemm<true>(Dp / 16, chunks16, m / 32, buf.dkt.data() + c0, kBlockK * 4,
                          plan.qt + (h * NQ + qbase + i0) * Dp, 64, Dp * 64, buf.dsv.data(), 1024,
                          chunks16 * 1024, nullptr, banded ? &by_keys : nullptr);
        // dQ (m x Dp) += dS K: steps of 32 keys.
        tiles::gemm<true>(m / 16, Dp / 16, w / 32, dq_acc + (g * ch.acc_rows + i0 - ch.acc_lo) * Dp, Dp * 4,
                          buf.dsr.data(), kBlockK * 2, 64, buf.kv.data() + c0 / 32 * (Dp / 16) * 256, 1024,
                          Dp / 16 * 1024, nullptr, banded ? &by_rows : nullptr);
      }
    }
    // This item owns keys [kb, kb + n) of kv head kvh for all its query heads: write dK (times
    // the score scale, as dQ), dV.
    write_keys(buf.dkt.data(), D, n, plan.sscale,
               static_cast<bfloat16*>(p.dk) + (s.k0 + kb) * p.dk_row_stride + kvh * p.dk_head_stride, p.dk_row_stride);
    write_keys(buf.dvt.data(), Dv, n, 1.f,
               static_cast<bfloat16*>(p.dv) + (s.k0 + kb) * p.dv_row_stride + kvh * p.dv_head_stride, p.dv_row_stride);
  }

  if (ch.scratch >= 0) return;  // chunked: the reduction pass writes dq
  plan.write_dq<bfloat16>(ch, kvh, dq_acc, plan.sscale, buf.row.data());  // unchunked: all rows
}

}  // namespace

void backward_bf16_amx(const VarlenBackwardParams& p) {
  Plan plan(p);
  pack_queries(plan);
  std::vector<Buffers> own;
  std::vector<Buffers>& buffers =
      backward_buffers<Buffers, float>(own, std::max(1, num_threads()), plan.thread_dq_elems, plan.D_pad, plan.Dv_pad);
  softmax_stats(plan, buffers);

  double flops = 0;
  std::vector<WorkItem> items = plan.chunk_items(flops);
  run_items(
      items, flops, [&](int t, const WorkItem& it) { backward_chunk(plan, it.seq, it.head, buffers[t]); },
      [](int) { return tiles::TileScope(); });

  if (!plan.scratch) return;
  items = plan.reduce_items(kBlockQ, flops);
  run_items(items, flops, [&](int t, const WorkItem& it) {
    plan.reduce_dq<bfloat16>(plan.scratch.get(), plan.sscale, it.seq, it.head, it.block, kBlockQ,
                             buffers[t].row.data());
  });
}

}  // namespace scree::cpu::SCREE_CPU_ISA

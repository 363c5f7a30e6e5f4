// CPU varlen attention backward: recomputes P = exp(s - lse) from the forward's lse (from row
// statistics it recomputes itself where lse is too coarse for that: softmax_stats), then
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - delta)  [* (1 - tanh^2) under softcap],
//   dQ = scale * dS K,  dK = scale * dS^T Q,   with delta_i = dO_i . O_i,
// all in the compute type (fp32; fp64 for fp64 inputs). Compiled once per ISA like fwd.cpp; in the
// amx build bfloat16 inputs go to bwd_amx.cpp (the products on AMX tiles) instead. The schedule
// below (key blocks, items, chunks, the dq reduction) lives in bwd_schedule.h, shared with it.
//
// Decomposition (why one pass and not FlashAttention-2's two):
// A work item is (sequence, kv head, chunk of key blocks). It walks its key blocks; for each it
// packs K and V once, then for every query head of the group and every query tile that sees the
// block it recomputes S and dP (two GEMMs) and does the three gradient GEMMs: dV += P^T dO and
// dK += dS^T Q into per-thread block accumulators (written out, not accumulated, when the block is
// done: the item owns those keys for all G query heads, so the GQA sum needs no atomics), and
// dQ += dS K into an fp32 dQ accumulator. Per (query row, key) that is 2(3D + 2Dv) FLOPs = 2.5x
// the forward's 2(D + Dv) for D = Dv: nothing is computed twice. The FA2-style split (pass 1 over
// key blocks for dK/dV, pass 2 over query blocks for dQ) recomputes S and dP a second time:
// 2(4D + 3Dv) per pair, 3.5x forward = +40% FLOPs, which its extra parallelism never repays on a
// 2-core CPU (a 4096-token, 8-head sequence already gives 8 equal items). Measured, fp32,
// 4096 tokens x 8 heads x D 128, 2 pinned cores (Xeon, with the ISA namespace fix in the shared
// headers): forward 114 GFLOP/s, this backward 145 GFLOP/s of useful FLOPs (1 core: 54 / 70).
// Parallelism: items are (sequence, kv head) when that gives enough of them, so many short
// sequences cost nothing extra. When a (sequence, kv head) unit costs more than 1/kTargetItems of
// the whole call (one long sequence with few kv heads), its key blocks are cut into up to
// kTargetItems chunks of equal cost; each chunk then writes a partial dQ (fp32, only the rows that
// see the chunk) and a cheap final pass sums the partials in chunk order. Example: one 4096-token
// sequence, Hq = 8, Hk = 1 (MQA), D = 128: 8 items of 21 GFLOP instead of 1, for 8 partial dQ of
// 4096 x 8 x 128 x 4 B = 128 MiB in all (half with causal) and a ~20 ms reduction, against a
// multi-second backward. The scratch is capped (kScratchBudget); past it chunks are merged.
// Operands: Q (pre-scaled) and dO are converted once per call into contiguous fp32 copies
// (Hq, Tq, D_pad) / (Hq, Tq, Dv_pad), total_q x Hq x (D_pad + Dv_pad) x 4 B (the size of q + dO in
// fp32), in the same parallel pass that computes delta. The GEMMs then read query tiles in place.
// Re-gathering each tile from the (token, head) layout per key block cost ~10% of the backward:
// its rows sit heads x D apart (4 KiB at 8 x 128 fp32), so 60-row tiles of Q and dO land in the
// same few L2 sets and evict each other (huge pages did not help; contiguous rows did).
// Determinism: the chunking depends only on the problem, never on the thread count; each output
// element has one owner and a fixed summation order (query heads, then query rows in order, for
// dK/dV; key blocks in order, then chunks in order, for dQ). GEMM rows do not depend on their
// register-tile placement, so bits are identical for any SCREE_NUM_THREADS.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "aligned.h"
#include "bwd_schedule.h"
#include "convert.h"
#include "gemm.h"
#include "prefetch.h"
#include "scree/attention/params.h"
#include "scree/parallel.h"
#include "simd.h"
#include "work.h"
#include "workspace.h"

#if defined(SCREE_CPU_AMX)
#include "bwd_amx.h"
#endif

#ifndef SCREE_CPU_ISA
#error "SCREE_CPU_ISA must name the instruction-set variant this file is compiled for"
#endif

namespace scree::cpu::SCREE_CPU_ISA {

using attention::KeyRange;
using attention::QueryRange;
using attention::VarlenBackwardParams;
using attention::visible_keys;
using attention::visible_queries;

namespace {

// Block sizes. kBlockK is a multiple of 16 (the GEMM's N granularity, so a packed key block needs
// no more columns than it has keys) and of 6 (the GEMM's row tile, for the dK/dV GEMMs whose rows
// are keys); kBlockQ is a multiple of 6 (row tile of the S, dP and dQ GEMMs).
// Per-thread working set at D = Dv = 128, fp32: K^T, V^T, K, dK, dV (5 x 96 x 128 x 4 = 240 KiB)
// + the Q, dO tiles (2 x 60 x 128 x 4 = 60 KiB) + S/P, dP/dS (2 x 60 x 96 x 4 = 45 KiB) + the dQ
// tile (30 KiB) = 375 KiB, inside the 512 KiB L2.
constexpr int64_t kBlockK = 96;
constexpr int64_t kBlockQ = 60;
using bwd::Chunk;
using bwd::KeyBlock;
using bwd::Sequence;

// Every GEMM operand and accumulator on a line (aligned.h; offsets into them are multiples of 2
// vectors), so no zmm load or store splits a line.
template <class T>
struct Buffers {
  using C = compute_t<T>;
  LineVector<C> kt, vt, kr, dk, dv, s, dp, row, sum, mx, dq, vrows;
  // A masked tile's bands: each query row's visible keys, each key's visible queries (tile-relative).
  std::vector<int64_t> row_lo, row_hi, key_lo, key_hi;
  Buffers(int64_t D, int64_t Dv, int64_t D_pad, int64_t Dv_pad, int64_t dq_elems) {
    kt.resize(D * kBlockK);
    vt.resize(Dv * kBlockK);
    kr.resize(kBlockK * D_pad);
    dk.resize(kBlockK * D_pad);
    dv.resize(kBlockK * Dv_pad);
    s.resize(kBlockQ * kBlockK);
    dp.resize(kBlockQ * kBlockK);
    row.resize(std::max(D_pad, Dv_pad));
    vrows.resize(16 * Dv_pad);
    sum.resize(kBlockQ);
    mx.resize(kBlockQ);
    dq.resize(dq_elems);
    row_lo.resize(kBlockQ);
    row_hi.resize(kBlockQ);
    key_lo.resize(kBlockK);
    key_hi.resize(kBlockK);
  }
};

// The schedule (bwd_schedule.h) with this kernel's block sizes, plus its operands.
template <class T>
struct Plan : bwd::Schedule {
  using C = compute_t<T>;
  bool capped = false;
  C cap = 0, qscale = 0;
  // (Hq, total_q, D_pad) Q * qscale and (Hq, total_q, Dv_pad) dO, in the kept Workspace (workspace.h):
  // allocated per call, a 4 x 16-token call's 2 x 128 KiB were page-faulted in every time.
  std::unique_ptr<Workspace> ws;
  C* qp = nullptr;
  C* dop = nullptr;
  std::vector<C> delta;  // (Hq, total_q): dO . O
  // (Hq, total_q), softmax_stats: P = exp((s - row_max) - log_sum); row_max is the forward's lse
  // and log_sum 0 where that is accurate, else the row's max score and the log of its softmax sum;
  // row_max = -inf for a row that sees no key.
  std::vector<C> row_max, log_sum;
  LineArray<C> scratch;  // partial dQ of chunked sequences
  explicit Plan(const VarlenBackwardParams& params)
      : bwd::Schedule(params, kBlockK, 1, 2 * Simd<C>::width, sizeof(C)) {
    capped = p.softcap > 0.f;
    cap = C(p.softcap);
    qscale = capped ? C(p.scale) / cap : C(p.scale);
    if (scratch_elems > 0) scratch = line_array<C>(static_cast<size_t>(scratch_elems));  // zeroed by the items
  }
};

// One pass over the query rows, split over the threads: the packed Q * qscale and dO operands
// (zero-padded to D_pad / Dv_pad) and delta = rowsum(dO * O) in the compute type.
template <class T>
void pack_rows(Plan<T>& plan) {
  using C = compute_t<T>;
  const auto& p = plan.p;
  const int64_t Hq = p.heads_q, D = plan.D, Dv = plan.Dv, D_pad = plan.D_pad, Dv_pad = plan.Dv_pad;
  const size_t n = static_cast<size_t>(Hq * p.total_q);
  plan.delta.resize(n);
  static_assert(sizeof(C) % sizeof(uint32_t) == 0, "the Workspace holds whole words");
  plan.ws = std::make_unique<Workspace>(std::max<size_t>(n * size_t(D_pad + Dv_pad) * (sizeof(C) / 4), 1));
  plan.qp = reinterpret_cast<C*>(plan.ws->data);
  plan.dop = plan.qp + n * D_pad;  // D_pad: whole lines
  const T* Q = static_cast<const T*>(p.q);
  const T* dO = static_cast<const T*>(p.dout);
  const T* O = static_cast<const T*>(p.out);
  const int64_t bytes = p.total_q * Hq * (2 * Dv + D) * int64_t(sizeof(T) + sizeof(C));
  parallel_for(p.total_q, bytes, [&](int64_t begin, int64_t end) {
    std::vector<C> o(Dv);  // once per thread
    for (int64_t i = begin; i < end; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        C* qrow = plan.qp + (h * p.total_q + i) * D_pad;
        to_compute(Q + i * p.q_row_stride + h * p.q_head_stride, qrow, D, plan.qscale);
        std::fill(qrow + D, qrow + D_pad, C(0));
        C* orow = plan.dop + (h * p.total_q + i) * Dv_pad;
        to_compute(dO + i * p.dout_row_stride + h * p.dout_head_stride, orow, Dv, C(1));
        std::fill(orow + Dv, orow + Dv_pad, C(0));
        to_compute(O + i * p.out_row_stride + h * p.out_head_stride, o.data(), Dv, C(1));
        plan.delta[h * p.total_q + i] = dot_as<C>(orow, o.data(), Dv);
      }
  });
}

// K block j of kv head kvh: K^T (D x n_pad) and V^T (Dv x n_pad) for S and dP, K (n x D_pad) for
// dQ; padding zero.
template <class T>
void pack_keys(const Plan<T>& plan, const Sequence& s, int64_t kb, int64_t n, int64_t n_pad, int64_t kvh,
               Buffers<T>& buf, bool with_v) {
  using C = compute_t<T>;
  const auto& p = plan.p;
  const int64_t D = plan.D, Dv = plan.Dv, D_pad = plan.D_pad;
  const T* K = static_cast<const T*>(p.k);
  const T* Vg = static_cast<const T*>(p.v);
  // kT keys at a time, their K^T and V^T columns by register transposes (simd.h) of their rows:
  // float with AVX-512 (16) or AVX2 (8); one key at a time, scalar, otherwise. A scalar store a
  // line apart per element was ~16% of a 4 x 16-token backward's items (perf, this Xeon). Rows
  // past n in the last group (stale) land in the padding columns [n, n_pad), zeroed below; n_pad
  // is a multiple of the vector width (kT keys), so the group fits.
  constexpr int64_t kT = std::is_same_v<C, float> ? kTransposeRows : 1;
  const int64_t Dv_pad = plan.Dv_pad;
  for (int64_t c0 = 0; c0 < n; c0 += kT) {
    const int64_t g = std::min<int64_t>(kT, n - c0);
    for (int64_t c = c0; c < c0 + g; ++c) {
      if (c + kRowsAhead < n) {  // (prefetch.h: the rows' stride)
        prefetch_row(K + (s.k0 + kb + c + kRowsAhead) * p.k_row_stride + kvh * p.k_head_stride, D * int64_t(sizeof(T)));
        if (with_v)
          prefetch_row(Vg + (s.k0 + kb + c + kRowsAhead) * p.v_row_stride + kvh * p.v_head_stride,
                       Dv * int64_t(sizeof(T)));
      }
      C* krow = buf.kr.data() + c * D_pad;
      to_compute(K + (s.k0 + kb + c) * p.k_row_stride + kvh * p.k_head_stride, krow, D, C(1));
      std::fill(krow + D, krow + D_pad, C(0));
      if (with_v)
        to_compute(Vg + (s.k0 + kb + c) * p.v_row_stride + kvh * p.v_head_stride, buf.vrows.data() + (c - c0) * Dv_pad,
                   Dv, C(1));
    }
    auto transpose = [&](const C* rows, int64_t ld, int64_t cols, C* out) {
      int64_t d0 = 0;
      if constexpr (kT > 1)
        for (; d0 + kT <= cols; d0 += kT)
          transpose_block(rows + d0, ld * int64_t(sizeof(C)), reinterpret_cast<uint32_t*>(out + d0 * n_pad + c0), n_pad);
      for (int64_t d = d0; d < cols; ++d)
        for (int64_t c = 0; c < g; ++c) out[d * n_pad + c0 + c] = rows[c * ld + d];
    };
    transpose(buf.kr.data() + c0 * D_pad, D_pad, D, buf.kt.data());
    if (with_v) transpose(buf.vrows.data(), Dv_pad, Dv, buf.vt.data());
  }
  // The padding columns [n, n_pad) a row's run at a time: zeroed a column at a time, they cost as
  // many stores a line apart as the keys themselves (a 16-token sequence pads to 32; perf, this Xeon).
  if (n < n_pad) {
    for (int64_t d = 0; d < D; ++d) std::fill(buf.kt.data() + d * n_pad + n, buf.kt.data() + (d + 1) * n_pad, C(0));
    if (with_v)
      for (int64_t d = 0; d < Dv; ++d) std::fill(buf.vt.data() + d * n_pad + n, buf.vt.data() + (d + 1) * n_pad, C(0));
  }
}

// The softmax statistics of the rows, P = exp((s - row_max) - log_sum), recomputed here where the
// forward's lse cannot give P accurately. One rounded number cannot: P = exp(s - lse) scales a
// whole row by exp(the rounding error of lse), up to half an ulp of |lse|; a row whose scores
// differ by less than that (large scores with a small spread, or ties after rounding) gets P
// summing to up to the number of keys instead of 1. For fp32 lse that is 2^-20 relative below
// |lse| = 32, about the GEMMs' own rounding, but 0.5 at 1e7 (tools/fuzz found gradients far off
// the reference there), and lse overflows past 3.4e38. Kept as (max, log sum), P has relative
// error ~eps wherever the scores lie: s - max is exact near the max and log_sum is small.
// Which rows: every row for fp64 inputs (the fp64 backward never reads lse, so a float64 or a
// float32 lse give the same fp64-accurate gradients; an fp64 lse is off by 1.2e-4 at 1e12);
// for the fp32 compute type, the query blocks with a row whose lse is at least bwd::kExactLse (32)
// in magnitude (or +inf; bwd_schedule.h), the others keep row_max = lse, log_sum = 0, the same bits as before.
// Cost: one extra S = Q K^T pass over those blocks, 2D FLOPs per pair against the backward's
// 2(3D + 2Dv): +20% where it runs, nothing on ordinary inputs (N(0, 1) scores give |lse| ~ 10).
// Items (sequence, query head, query block), the forward's decomposition; an online max over the
// key blocks, as in the forward.
template <class T>
void softmax_stats(Plan<T>& plan, std::vector<Buffers<T>>& buffers) {
  using C = compute_t<T>;
  using V = vec_t<C>;
  constexpr int W = Simd<C>::width;
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  constexpr bool kAll = std::is_same_v<T, double>;
  const auto& p = plan.p;
  const int64_t D = plan.D, D_pad = plan.D_pad;
  double flops = 0;
  std::vector<WorkItem> items = bwd::stats_items(plan, kBlockQ, kAll, plan.row_max, plan.log_sum, flops);
  if (items.empty()) return;
  run_items(items, flops, [&](int t, const WorkItem& it) {
    Buffers<T>& buf = buffers[t];
    const Sequence& s = plan.seqs[it.seq];
    const int64_t h = it.head, i0 = it.block * kBlockQ, m = std::min(kBlockQ, s.Lq - i0);
    const int64_t row0 = h * p.total_q + s.q0 + i0;
    const C* q = plan.qp + row0 * D_pad;
    C* sum = buf.sum.data();
    C* mx = buf.mx.data();
    std::fill(sum, sum + m, C(0));
    std::fill(mx, mx + m, kNegInf);
    const KeyRange first = visible_keys(p, i0, s.Lq, s.Lk), last = visible_keys(p, i0 + m - 1, s.Lq, s.Lk);
    for (int64_t kb = first.lo; kb < last.hi; kb += kBlockK) {
      const int64_t n = std::min(kBlockK, last.hi - kb), n_pad = round_up(n, W);  // whole vectors (gemm.h)
      pack_keys(plan, s, kb, n, n_pad, h / plan.G, buf, false);
      C* S = buf.s.data();
      gemm<C>(m, n_pad, D, q, D_pad, buf.kt.data(), n_pad, S, n_pad, false);
      for (int64_t r = 0; r < m; ++r) {
        const KeyRange kr = visible_keys(p, i0 + r, s.Lq, s.Lk);
        const int64_t lo = std::clamp<int64_t>(kr.lo - kb, 0, n), hi = std::clamp<int64_t>(kr.hi - kb, lo, n);
        if (hi <= lo) continue;
        C* srow = S + r * n_pad;
        if (plan.capped)
          for (int64_t c = 0; c < n_pad; c += W) store<C>(srow + c, plan.cap * vtanh<C>(load<C>(srow + c)));
        C top = mx[r];
        for (int64_t c = lo; c < hi; ++c) top = std::max(top, srow[c]);
        if (top == kNegInf) continue;  // every visible score is -inf: nothing to add yet
        sum[r] *= std::exp(mx[r] - top);  // 0 * 0 on the row's first visible block
        mx[r] = top;
        const V vtop = splat<C>(top);
        for (int64_t c = 0; c < n_pad; c += W) store<C>(srow + c, vexp<C>(load<C>(srow + c) - vtop));
        for (int64_t c = lo; c < hi; ++c) sum[r] += srow[c];
      }
    }
    for (int64_t r = 0; r < m; ++r) {
      const bool none = mx[r] == kNegInf || sum[r] == C(0);  // sees no key (NaN sums propagate)
      plan.row_max[row0 + r] = none ? kNegInf : mx[r];
      plan.log_sum[row0 + r] = none ? C(0) : std::log(sum[r]);
    }
  });
}

// One item: chunk `ci` of a sequence, for kv head `kvh`.
template <class T>
void backward_chunk(const Plan<T>& plan, int64_t ci, int64_t kvh, Buffers<T>& buf) {
  using C = compute_t<T>;
  using V = vec_t<C>;
  constexpr int W = Simd<C>::width;
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  const auto& p = plan.p;
  const Chunk& ch = plan.chunks[ci];
  const Sequence& s = plan.seqs[ch.seq];
  const int64_t G = plan.G, D = plan.D, Dv = plan.Dv, D_pad = plan.D_pad, Dv_pad = plan.Dv_pad;
  const int64_t Lq = s.Lq, Lk = s.Lk, q0 = s.q0, k0 = s.k0;
  const int64_t rows_c = ch.acc_rows;  // = row_hi - row_lo (row_align 1)
  const bool capped = plan.capped;
  const bool band = attention::banded(p);
  const C cap = plan.cap;

  // dQ accumulator of this item: (G, rows_c, D_pad), zeroed here (first touch on this thread).
  C* dq_acc = ch.scratch >= 0 ? plan.scratch.get() + ch.scratch + kvh * G * rows_c * D_pad : buf.dq.data();
  std::fill(dq_acc, dq_acc + G * rows_c * D_pad, C(0));

  for (int64_t j = ch.kb_begin; j < ch.kb_end; ++j) {
    const KeyBlock& blk = plan.blocks[s.first_block + j];
    // Key columns padded to whole vectors, not pairs (gemm.h's last panel may be one vector wide):
    // a 16-key block computes 16 columns, not 32 (AVX-512 fp32).
    const int64_t kb = j * kBlockK, n = std::min(kBlockK, Lk - kb), n_pad = round_up(n, W);
    pack_keys(plan, s, kb, n, n_pad, kvh, buf, true);
    std::fill(buf.dk.begin(), buf.dk.begin() + n * D_pad, C(0));
    std::fill(buf.dv.begin(), buf.dv.begin() + n * Dv_pad, C(0));

    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = kvh * G + g;
      for (int64_t i0 = blk.row_lo; i0 < blk.row_hi; i0 += kBlockQ) {
        const int64_t m = std::min(kBlockQ, blk.row_hi - i0);
        const int64_t row0 = h * p.total_q + q0 + i0;  // first row of the tile in (Hq, total_q)
        const C* q = plan.qp + row0 * D_pad;  // m x D_pad, scaled
        const C* dout = plan.dop + row0 * Dv_pad;
        const C* delta = plan.delta.data() + row0;
        // Columns of the block the tile's rows can see: [first.lo, last.hi) less kb, the start
        // rounded down to the GEMM's column granularity. Near a causal diagonal or inside a
        // window this skips the fully masked part of the block (exact: those P and dS are 0).
        const KeyRange first = visible_keys(p, i0, Lq, Lk), last = visible_keys(p, i0 + m - 1, Lq, Lk);
        const int64_t c0 = std::clamp<int64_t>(first.lo - kb, 0, n) / W * W;
        const int64_t c1 = std::clamp<int64_t>(last.hi - kb, 0, n);
        if (c1 <= c0) continue;
        const int64_t w = round_up(c1 - c0, W), wk = std::min(w, n - c0);  // padded width, keys
        const bool full = last.lo <= kb && kb + n <= first.hi;
        C* S = buf.s.data();
        C* dP = buf.dp.data();
        // Under a causal mask or a window the products skip their wholly masked register tiles
        // (gemm.h): each row's visible columns, each key's visible rows, relative to the tile.
        const bool trimmed = !full && band;
        if (trimmed) {
          for (int64_t r = 0; r < m; ++r) {
            const KeyRange kr = visible_keys(p, i0 + r, Lq, Lk);
            buf.row_lo[r] = std::clamp<int64_t>(kr.lo - kb - c0, 0, wk);
            buf.row_hi[r] = std::clamp<int64_t>(kr.hi - kb - c0, buf.row_lo[r], wk);
          }
          for (int64_t c = 0; c < wk; ++c) {
            const QueryRange qr = visible_queries(p, kb + c0 + c, kb + c0 + c + 1, Lq, Lk);
            buf.key_lo[c] = std::clamp<int64_t>(qr.lo - i0, 0, m);
            buf.key_hi[c] = std::clamp<int64_t>(qr.hi - i0, buf.key_lo[c], m);
          }
          gemm_rows_cols<C>(m, w, D, q, D_pad, buf.kt.data() + c0, n_pad, S, w, buf.row_lo.data(), buf.row_hi.data());
          gemm_rows_cols<C>(m, w, Dv, dout, Dv_pad, buf.vt.data() + c0, n_pad, dP, w, buf.row_lo.data(),
                            buf.row_hi.data());
        } else {
          gemm<C>(m, w, D, q, D_pad, buf.kt.data() + c0, n_pad, S, w, false);
          gemm<C>(m, w, Dv, dout, Dv_pad, buf.vt.data() + c0, n_pad, dP, w, false);
        }

        // P = exp(s - lse) over the visible columns, 0 elsewhere (padding included);
        // dS = P (dP - delta), times d(cap tanh(x / cap)) / dx * cap under softcap.
        for (int64_t r = 0; r < m; ++r) {
          C* prow = S + r * w;
          C* dsrow = dP + r * w;
          int64_t lo = 0, hi = wk;  // visible columns of this row within [c0, c0 + w)
          if (trimmed) {
            lo = buf.row_lo[r], hi = buf.row_hi[r];
          } else if (!full) {
            const KeyRange kr = visible_keys(p, i0 + r, Lq, Lk);
            lo = std::clamp<int64_t>(kr.lo - kb - c0, 0, wk);
            hi = std::clamp<int64_t>(kr.hi - kb - c0, lo, wk);
          }
          // P = exp((s - row_max) - log_sum), see softmax_stats (s - lse where lse is accurate).
          const C shift = plan.row_max[row0 + r];
          if (hi <= lo || shift == kNegInf) {  // row sees nothing here: P = dS = 0
            std::fill(prow, prow + w, C(0));
            std::fill(dsrow, dsrow + w, C(0));
            continue;
          }
          const V vshift = splat<C>(shift), vdelta = splat<C>(delta[r]);
          const V vlog_sum = splat<C>(plan.log_sum[row0 + r]);
          // P <= 1: an exponent above 0 only comes from rounding, when a score here and the row
          // maximum of softmax_stats (another GEMM, other summation order) differ in their last
          // bit, times a huge softcap or scale (1e30: exp(1e14) = inf, then NaN gradients).
          const V zero = splat<C>(C(0));
          // Trimmed: the vectors holding [lo, hi) only (the products skipped some of the others).
          const int64_t v0 = trimmed ? lo / W * W : 0, v1 = trimmed ? round_up(hi, W) : w;
          int64_t c = v0;
          if (!capped) {  // kExpLanes vectors' exps at once (simd.h's vexp_lanes)
            for (; c + kExpLanes * W <= v1; c += kExpLanes * W) {
              V pv[kExpLanes];
              for (int u = 0; u < kExpLanes; ++u)
                pv[u] = vmin<C>((load<C>(prow + c + u * W) - vshift) - vlog_sum, zero);
              vexp_lanes<C, kExpLanes, true>(pv);
              for (int u = 0; u < kExpLanes; ++u) {
                store<C>(prow + c + u * W, pv[u]);
                store<C>(dsrow + c + u * W, pv[u] * (load<C>(dsrow + c + u * W) - vdelta));
              }
            }
          }
          for (; c < v1; c += W) {
            const V x = load<C>(prow + c);
            V pv, ds;
            if (capped) {
              const V t = vtanh<C>(x);
              pv = vexp<C, true>(vmin<C>((cap * t - vshift) - vlog_sum, zero));
              ds = pv * (load<C>(dsrow + c) - vdelta) * ((C(1) - t * t) * cap);
            } else {
              pv = vexp<C, true>(vmin<C>((x - vshift) - vlog_sum, zero));
              ds = pv * (load<C>(dsrow + c) - vdelta);
            }
            store<C>(prow + c, pv);
            store<C>(dsrow + c, ds);
          }
          for (int64_t c = 0; c < lo; ++c) prow[c] = dsrow[c] = C(0);
          for (int64_t c = hi; c < w; ++c) prow[c] = dsrow[c] = C(0);
        }
        C* dq_rows = dq_acc + (g * rows_c + i0 - ch.acc_lo) * D_pad;
        if (trimmed) {
          const int64_t *klo = buf.key_lo.data(), *khi = buf.key_hi.data();
          gemm_rows_keys<C, true>(wk, Dv_pad, m, S, w, dout, Dv_pad, buf.dv.data() + c0 * Dv_pad, Dv_pad, klo, khi, 0);
          gemm_rows_keys<C, true>(wk, D_pad, m, dP, w, q, D_pad, buf.dk.data() + c0 * D_pad, D_pad, klo, khi, 0);
          gemm_rows_keys<C, false>(m, D_pad, wk, dP, w, buf.kr.data() + c0 * D_pad, D_pad, dq_rows, D_pad,
                                   buf.row_lo.data(), buf.row_hi.data(), 0);
        } else {
          gemm<C, true>(wk, Dv_pad, m, S, w, dout, Dv_pad, buf.dv.data() + c0 * Dv_pad, Dv_pad, true);
          gemm<C, true>(wk, D_pad, m, dP, w, q, D_pad, buf.dk.data() + c0 * D_pad, D_pad, true);
          gemm<C>(m, D_pad, wk, dP, w, buf.kr.data() + c0 * D_pad, D_pad, dq_rows, D_pad, true);
        }
      }
    }
    // This item owns keys [kb, kb + n) of kv head kvh for all its query heads: write dK, dV.
    T* dK = static_cast<T*>(p.dk);
    T* dV = static_cast<T*>(p.dv);
    for (int64_t c = 0; c < n; ++c) {
      if (c + kRowsAhead < n) {
        prefetch_row(dK + (k0 + kb + c + kRowsAhead) * p.dk_row_stride + kvh * p.dk_head_stride, D * int64_t(sizeof(T)),
                     true);
        prefetch_row(dV + (k0 + kb + c + kRowsAhead) * p.dv_row_stride + kvh * p.dv_head_stride, Dv * int64_t(sizeof(T)),
                     true);
      }
      from_compute(buf.dk.data() + c * D_pad, dK + (k0 + kb + c) * p.dk_row_stride + kvh * p.dk_head_stride, D);
      from_compute(buf.dv.data() + c * Dv_pad, dV + (k0 + kb + c) * p.dv_row_stride + kvh * p.dv_head_stride, Dv);
    }
  }

  if (ch.scratch >= 0) return;  // chunked: the reduction pass writes dq
  plan.template write_dq<T>(ch, kvh, dq_acc, plan.qscale, buf.row.data());  // unchunked: all rows
}

template <class T>
void backward(const VarlenBackwardParams& p) {
  Plan<T> plan(p);
  pack_rows(plan);

  std::vector<Buffers<T>> own;
  std::vector<Buffers<T>>& buffers = backward_buffers<Buffers<T>, compute_t<T>>(
      own, std::max(1, num_threads()), plan.thread_dq_elems, plan.D, plan.Dv, plan.D_pad, plan.Dv_pad);
  softmax_stats(plan, buffers);

  double flops = 0;
  std::vector<WorkItem> items = plan.chunk_items(flops);
  run_items(items, flops, [&](int t, const WorkItem& it) { backward_chunk<T>(plan, it.seq, it.head, buffers[t]); });

  if (!plan.scratch) return;
  items = plan.reduce_items(kBlockQ, flops);
  run_items(items, flops, [&](int t, const WorkItem& it) {
    plan.template reduce_dq<T>(plan.scratch.get(), plan.qscale, it.seq, it.head, it.block, kBlockQ, buffers[t].row.data());
  });
}

}  // namespace

void varlen_bwd(const VarlenBackwardParams& p) {
  switch (p.dtype) {
    case DType::Float32: backward<float>(p); break;
    case DType::Float64: backward<double>(p); break;
    case DType::Float16: backward<float16>(p); break;
    case DType::BFloat16:
#if defined(SCREE_CPU_AMX)
      backward_bf16_amx(p);  // the amx build: the five products on the tiles (bwd_amx.cpp)
#else
      backward<bfloat16>(p);
#endif
      break;
    default: break;  // rejected by the caller's validation
  }
}

}  // namespace scree::cpu::SCREE_CPU_ISA

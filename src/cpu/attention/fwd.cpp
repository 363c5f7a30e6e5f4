// CPU varlen attention forward: flash-style blocked attention with online softmax in the compute
// type (fp32; fp64 for fp64 inputs). Work item = (sequence, query head, block of kBlockQ query
// rows); for each block of kBlockK keys: S = Q K^T (gemm), softcap, mask, online softmax, O += P V.
// Compiled once per ISA (CMake builds this file with -mavx2 -mfma -mf16c and without); the
// namespace SCREE_CPU_ISA keeps the two copies apart and attention_cpu.cpp picks one at run time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "convert.h"
#include "gemm.h"
#include "scree/attention/params.h"
#include "simd.h"
#include "work.h"

#ifndef SCREE_CPU_ISA
#error "SCREE_CPU_ISA must name the instruction-set variant this file is compiled for"
#endif

namespace scree::cpu::SCREE_CPU_ISA {

using attention::KeyRange;
using attention::VarlenParams;
using attention::visible_keys;

namespace {

// Block sizes, with the per-thread working set for D = Dv = 128 in fp32:
// Q 64x128 (32 KiB) + K^T 128x128 (64 KiB) + V 128x128 (64 KiB) + S 64x128 (32 KiB) + O (32 KiB)
// = 224 KiB, inside the 512 KiB L2 of this machine's cores.
constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 128;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <class T>
struct Buffers {
  using C = compute_t<T>;
  std::vector<C> q, kt, v, s, o, m, l, krow;
  Buffers(int64_t D, int64_t Dv_pad) {
    q.resize(kBlockQ * D);
    krow.resize(D);
    kt.resize(D * kBlockK);
    v.resize(kBlockK * Dv_pad);
    s.resize(kBlockQ * kBlockK);
    o.resize(kBlockQ * Dv_pad);
    m.resize(kBlockQ);
    l.resize(kBlockQ);
  }
};

template <class T>
void forward_block(const VarlenParams& p, const WorkItem& item, Buffers<T>& buf) {
  using C = compute_t<T>;
  using V = vec_t<C>;
  constexpr int W = Simd<C>::width;
  constexpr C kNegInf = -std::numeric_limits<C>::infinity();
  const int64_t D = p.head_dim, Dv = p.head_dim_v, Dv_pad = round_up(Dv, 2 * W);
  const int64_t b = item.seq, h = item.head, kvh = h / (p.heads_q / p.heads_k);
  const int64_t q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
  const int64_t Lq = p.cu_seqlens_q[b + 1] - q0, Lk = p.cu_seqlens_k[b + 1] - k0;
  const int64_t i0 = item.block * kBlockQ, rows = std::min(kBlockQ, Lq - i0);
  const bool capped = p.softcap > 0.0;
  const C cap = C(p.softcap);

  const T* Q = static_cast<const T*>(p.q);
  const T* K = static_cast<const T*>(p.k);
  const T* Vg = static_cast<const T*>(p.v);
  T* O = static_cast<T*>(p.out);

  // Q rows, pre-multiplied by scale (and 1/softcap when capping, so tanh sees s / softcap).
  const C qscale = capped ? C(p.scale) / cap : C(p.scale);
  for (int64_t r = 0; r < rows; ++r)
    to_compute(Q + (q0 + i0 + r) * p.q_row_stride + h * p.q_head_stride, buf.q.data() + r * D, D, qscale);
  std::fill(buf.o.begin(), buf.o.begin() + rows * Dv_pad, C(0));
  std::fill(buf.m.begin(), buf.m.begin() + rows, kNegInf);
  std::fill(buf.l.begin(), buf.l.begin() + rows, C(0));

  // lo and hi of the visible key range grow with the row, so the block's union of ranges is
  // [lo(first row), hi(last row)) and its intersection is [lo(last row), hi(first row)).
  const KeyRange first = visible_keys(p, i0, Lq, Lk), last = visible_keys(p, i0 + rows - 1, Lq, Lk);
  for (int64_t kb = first.lo; kb < last.hi; kb += kBlockK) {
    const int64_t n = std::min(kBlockK, last.hi - kb), n_pad = round_up(n, 2 * W);
    // Pack K^T (D x n_pad) and V (n_pad x Dv_pad), zero-padded so padded columns contribute 0.
    for (int64_t j = 0; j < n_pad; ++j) {
      C* vrow = buf.v.data() + j * Dv_pad;
      if (j < n) {
        // Convert the key row contiguously (vectorised), then scatter it into column j of K^T.
        to_compute(K + (k0 + kb + j) * p.k_row_stride + kvh * p.k_head_stride, buf.krow.data(), D, C(1));
        for (int64_t d = 0; d < D; ++d) buf.kt[d * n_pad + j] = buf.krow[d];
        to_compute(Vg + (k0 + kb + j) * p.v_row_stride + kvh * p.v_head_stride, vrow, Dv, C(1));
        std::fill(vrow + Dv, vrow + Dv_pad, C(0));
      } else {
        for (int64_t d = 0; d < D; ++d) buf.kt[d * n_pad + j] = C(0);
        std::fill(vrow, vrow + Dv_pad, C(0));
      }
    }
    C* S = buf.s.data();
    gemm<C>(rows, n_pad, D, buf.q.data(), D, buf.kt.data(), n_pad, S, n_pad, false);

    const bool full = last.lo <= kb && kb + n <= first.hi;
    for (int64_t r = 0; r < rows; ++r) {
      C* srow = S + r * n_pad;
      if (capped)
        for (int64_t j = 0; j < n_pad; j += W) store<C>(srow + j, cap * vtanh<C>(load<C>(srow + j)));
      int64_t lo = 0, hi = n;  // visible columns of this row within the block
      if (!full) {
        const KeyRange kr = visible_keys(p, i0 + r, Lq, Lk);
        lo = std::clamp<int64_t>(kr.lo - kb, 0, n);
        hi = std::clamp<int64_t>(kr.hi - kb, lo, n);
      }
      for (int64_t j = 0; j < lo; ++j) srow[j] = kNegInf;
      for (int64_t j = hi; j < n_pad; ++j) srow[j] = kNegInf;
      if (hi <= lo) {  // nothing visible here: P row is 0, O and the statistics stay
        std::fill(srow, srow + n_pad, C(0));
        continue;
      }
      V mv = splat<C>(kNegInf);
      for (int64_t j = 0; j < n_pad; j += W) mv = vmax<C>(mv, load<C>(srow + j));
      const C m_old = buf.m[r], m_new = std::max(m_old, hmax<C>(mv));
      const C alpha = std::exp(m_old - m_new);  // 0 on the first visible block (m_old = -inf)
      V sum = V{};
      for (int64_t j = 0; j < n_pad; j += W) {
        const V e = vexp<C>(load<C>(srow + j) - m_new);
        store<C>(srow + j, e);
        sum += e;
      }
      buf.l[r] = buf.l[r] * alpha + hsum<C>(sum);
      buf.m[r] = m_new;
      if (alpha != C(1)) {
        C* orow = buf.o.data() + r * Dv_pad;
        for (int64_t d = 0; d < Dv_pad; d += W) store<C>(orow + d, load<C>(orow + d) * alpha);
      }
    }
    gemm<C>(rows, Dv_pad, n_pad, S, n_pad, buf.v.data(), Dv_pad, buf.o.data(), Dv_pad, true);
  }

  for (int64_t r = 0; r < rows; ++r) {
    const C l = buf.l[r];
    C* orow = buf.o.data() + r * Dv_pad;
    const C inv = l > C(0) ? C(1) / l : C(0);  // a row that saw no key outputs 0
    for (int64_t d = 0; d < Dv; ++d) orow[d] *= inv;
    from_compute(orow, O + (q0 + i0 + r) * p.out_row_stride + h * p.out_head_stride, Dv);
    if (p.lse != nullptr)
      p.lse[h * p.total_q + q0 + i0 + r] =
          l > C(0) ? float(buf.m[r] + std::log(l)) : -std::numeric_limits<float>::infinity();
  }
}

template <class T>
void forward(const VarlenParams& p) {
  using C = compute_t<T>;
  const int64_t Dv_pad = round_up(p.head_dim_v, 2 * Simd<C>::width);
  std::vector<WorkItem> items;
  double flops = 0;
  for (int64_t b = 0; b < p.num_sequences; ++b) {
    const int64_t Lq = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    const int64_t Lk = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    for (int64_t blk = 0; blk * kBlockQ < Lq; ++blk) {
      const int64_t i0 = blk * kBlockQ, rows = std::min(kBlockQ, Lq - i0);
      const KeyRange first = visible_keys(p, i0, Lq, Lk), last = visible_keys(p, i0 + rows - 1, Lq, Lk);
      const double cost = double(rows) * double(std::max<int64_t>(last.hi - first.lo, 1)) *
                          double(p.head_dim + p.head_dim_v);
      for (int64_t h = 0; h < p.heads_q; ++h) {
        items.push_back({b, h, blk, cost});
        flops += 2 * cost;
      }
    }
  }
  std::vector<Buffers<T>> buffers;
  const int threads = std::max(1, num_threads());
  buffers.reserve(threads);
  for (int t = 0; t < threads; ++t) buffers.emplace_back(p.head_dim, Dv_pad);
  run_items(items, flops, [&](int t, const WorkItem& item) { forward_block<T>(p, item, buffers[t]); });
}

}  // namespace

void varlen_fwd(const VarlenParams& p) {
  switch (p.dtype) {
    case DType::Float32: forward<float>(p); break;
    case DType::Float64: forward<double>(p); break;
    case DType::Float16: forward<float16>(p); break;
    case DType::BFloat16: forward<bfloat16>(p); break;
    default: break;  // rejected by the caller's validation
  }
}

}  // namespace scree::cpu::SCREE_CPU_ISA

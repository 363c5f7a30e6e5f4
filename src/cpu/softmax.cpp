// The per-sequence softmax family (include/scree/ops/softmax.h): one work item per sequence, two
// passes over its rows for the column maxima and the shifted exponential sums (kept in
// `features`-long rows per thread chunk), a third to write softmax / log_softmax. The exponentials
// are the attention kernels' polynomial vexp (src/cpu/attention/simd.h, ~2 ulp in float), 4 floats
// at a time in this SSE2 TU: std::exp one element at a time made softmax 6x slower than a Python
// loop over torch.softmax (benchmarks/NOTES.md). For float and double the softmax's exponentials
// are written to the output in the second pass and scaled in the third, not computed twice.
#include "scree/ops/softmax.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "scree/dtypes.h"
#include "scree/parallel.h"

// simd.h's templates in a namespace of their own (isa.h): this TU is built without -mavx2, as the
// generic attention TU is, but need not share its symbols.
#define SCREE_CPU_ISA segment_ops
#include "attention/simd.h"

namespace scree::ops {
namespace {

namespace simd = scree::cpu::segment_ops;

// Per-thread rows: the column shifts and sums, one row as A (16-bit types) and its exponentials.
template <class A>
struct Rows {
  std::vector<A> shift, sum, x, e;
  explicit Rows(int64_t f) : shift(size_t(f)), sum(size_t(f)), x(size_t(f)), e(size_t(f)) {}
};

// row as A: the row itself when T is A, else converted into buf.
template <class T, class A>
const A* as_accum(const T* row, int64_t features, A* buf) {
  if constexpr (std::is_same_v<T, A>) {
    return row;
  } else {
    for (int64_t f = 0; f < features; ++f) buf[f] = Accum<T>::load(row[f]);
    return buf;
  }
}

// e[f] = exp(x[f] - shift[f]), W lanes at a time, kExpLanes vectors in lockstep (simd.h's vexp_lanes:
// for float each exp's dependent chain no longer waits alone); the last partial vector through a
// padded copy, so every column gets the same exp.
template <class A>
void exp_shifted(const A* x, const A* shift, A* e, int64_t features) {
  constexpr int W = simd::Simd<A>::width, U = simd::kExpLanes;
  int64_t f = 0;
  for (; f + U * W <= features; f += U * W) {
    simd::vec_t<A> v[U];
    for (int u = 0; u < U; ++u) v[u] = simd::load(x + f + u * W) - simd::load(shift + f + u * W);
    simd::vexp_lanes<A, U, false>(v);
    for (int u = 0; u < U; ++u) simd::store(e + f + u * W, v[u]);
  }
  for (; f + W <= features; f += W) simd::store(e + f, simd::vexp<A>(simd::load(x + f) - simd::load(shift + f)));
  if (f < features) {
    A xs[W] = {}, ss[W] = {}, out[W];
    for (int64_t k = 0; k < features - f; ++k) xs[k] = x[f + k], ss[k] = shift[f + k];
    simd::store(out, simd::vexp<A>(simd::load(xs) - simd::load(ss)));
    for (int64_t k = 0; k < features - f; ++k) e[f + k] = out[k];
  }
}

// For each feature column of rows [row, row + len): shift = the largest value where it is finite,
// else 0 (a column of -inf then sums exp(-inf) = 0; +inf and NaN propagate through exp), and
// sum = sum(exp(x - shift)); with `exps` (T = A only) the exponentials are written there too.
template <class T, class A>
void shifted_sums(const T* row, int64_t len, int64_t features, Rows<A>& w, T* exps) {
  A* shift = w.shift.data();
  A* sum = w.sum.data();
  for (int64_t f = 0; f < features; ++f) shift[f] = -std::numeric_limits<A>::infinity();
  const T* r = row;
  for (int64_t t = 0; t < len; ++t, r += features) {
    const A* x = as_accum(r, features, w.x.data());
    for (int64_t f = 0; f < features; ++f) shift[f] = (x[f] > shift[f] || x[f] != x[f]) ? x[f] : shift[f];
  }
  for (int64_t f = 0; f < features; ++f) {
    shift[f] = std::isfinite(shift[f]) ? shift[f] : A(0);
    sum[f] = A(0);
  }
  r = row;
  for (int64_t t = 0; t < len; ++t, r += features) {
    A* e = w.e.data();
    if constexpr (std::is_same_v<T, A>) e = exps == nullptr ? e : exps + t * features;
    exp_shifted(as_accum(r, features, w.x.data()), shift, e, features);
    for (int64_t f = 0; f < features; ++f) sum[f] += e[f];
  }
}

// fn(i, rows) for every sequence i, the rows allocated once per thread chunk.
template <class T, class Fn>
void per_sequence(const int64_t* offsets, int64_t n, int64_t features, Fn&& fn) {
  using A = typename Accum<T>::type;
  // No features: nothing to compute, and a sequence's length is not bounded by memory then.
  if (features == 0) return;
  parallel_for(
      n, offsets[n] * features * int64_t(sizeof(T)) * 3,  // three passes over the rows
      [&](int64_t begin, int64_t end) {
        Rows<A> rows(features);
        for (int64_t i = begin; i < end; ++i) fn(i, rows);
      },
      offsets);
}

}  // namespace

template <class T>
void segment_softmax(const T* values, const int64_t* offsets, int64_t n, int64_t features, bool log, T* out) {
  using A = typename Accum<T>::type;
  constexpr bool wide = std::is_same_v<T, A>;  // float, double: exponentials kept in out
  per_sequence<T>(offsets, n, features, [&](int64_t i, Rows<A>& w) {
    const int64_t len = offsets[i + 1] - offsets[i];
    const T* row = values + offsets[i] * features;
    T* o = out + offsets[i] * features;
    shifted_sums(row, len, features, w, wide && !log ? o : static_cast<T*>(nullptr));
    A* shift = w.shift.data();
    A* sum = w.sum.data();
    if (log) {
      // (x - shift) - log(sum): x - shift is exact near the maximum, where x - logsumexp would
      // cancel two large numbers (an error of ulp(x), 3e-5 at x = 500 in float)
      for (int64_t f = 0; f < features; ++f) sum[f] = std::log(sum[f]);
      for (int64_t t = 0; t < len; ++t, row += features, o += features) {
        const A* x = as_accum(row, features, w.x.data());
        for (int64_t f = 0; f < features; ++f) o[f] = Accum<T>::store((x[f] - shift[f]) - sum[f]);
      }
      return;
    }
    for (int64_t f = 0; f < features; ++f) sum[f] = A(1) / sum[f];
    for (int64_t t = 0; t < len; ++t, row += features, o += features) {
      if constexpr (wide) {
        for (int64_t f = 0; f < features; ++f) o[f] *= sum[f];
      } else {  // 16-bit: the exponentials again, from float (storing them would round them twice)
        exp_shifted(as_accum(row, features, w.x.data()), shift, w.e.data(), features);
        for (int64_t f = 0; f < features; ++f) o[f] = Accum<T>::store(w.e[size_t(f)] * sum[f]);
      }
    }
  });
}

template <class T>
void segment_logsumexp(const T* values, const int64_t* offsets, int64_t n, int64_t features, T* out) {
  using A = typename Accum<T>::type;
  per_sequence<T>(offsets, n, features, [&](int64_t i, Rows<A>& w) {
    shifted_sums(values + offsets[i] * features, offsets[i + 1] - offsets[i], features, w, static_cast<T*>(nullptr));
    for (int64_t f = 0; f < features; ++f)
      out[i * features + f] = Accum<T>::store(w.shift[size_t(f)] + std::log(w.sum[size_t(f)]));
  });
}

#define SCREE_SOFTMAX(T)                                                                        \
  template void segment_softmax<T>(const T*, const int64_t*, int64_t, int64_t, bool, T*); \
  template void segment_logsumexp<T>(const T*, const int64_t*, int64_t, int64_t, T*);
SCREE_SOFTMAX(float)
SCREE_SOFTMAX(double)
SCREE_SOFTMAX(float16)
SCREE_SOFTMAX(bfloat16)
#undef SCREE_SOFTMAX

}  // namespace scree::ops

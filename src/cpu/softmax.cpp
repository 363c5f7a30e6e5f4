// The per-sequence softmax family (include/scree/ops/softmax.h): one work item per sequence, two
// passes over its rows for the column maxima and the shifted exponential sums (kept in two
// `features`-long rows per thread chunk), a third to write softmax / log_softmax.
#include "scree/ops/softmax.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "scree/dtypes.h"
#include "scree/parallel.h"

namespace scree::ops {
namespace {

// For each feature column of rows [row, row + len): shift = the largest value where it is finite,
// else 0 (a column of -inf then sums exp(-inf) = 0; +inf and NaN propagate through exp), and
// sum = sum(exp(x - shift)).
template <class T, class A>
void shifted_sums(const T* row, int64_t len, int64_t features, A* shift, A* sum) {
  for (int64_t f = 0; f < features; ++f) shift[f] = -std::numeric_limits<A>::infinity();
  const T* r = row;
  for (int64_t t = 0; t < len; ++t, r += features)
    for (int64_t f = 0; f < features; ++f) {
      const A v = Accum<T>::load(r[f]);
      shift[f] = (v > shift[f] || v != v) ? v : shift[f];
    }
  for (int64_t f = 0; f < features; ++f) {
    shift[f] = std::isfinite(shift[f]) ? shift[f] : A(0);
    sum[f] = A(0);
  }
  r = row;
  for (int64_t t = 0; t < len; ++t, r += features)
    for (int64_t f = 0; f < features; ++f) sum[f] += std::exp(A(Accum<T>::load(r[f])) - shift[f]);
}

// fn(begin, end, shift, sum) over chunks of sequences, with the two accumulator rows allocated
// once per chunk.
template <class T, class Fn>
void per_sequence(const int64_t* offsets, int64_t n, int64_t features, Fn&& fn) {
  using A = typename Accum<T>::type;
  // No features: nothing to compute, and a sequence's length is not bounded by memory then.
  if (features == 0) return;
  parallel_for(
      n, offsets[n] * features * int64_t(sizeof(T)) * 3,  // three passes over the rows
      [&](int64_t begin, int64_t end) {
        std::vector<A> shift(static_cast<size_t>(features)), sum(static_cast<size_t>(features));
        for (int64_t i = begin; i < end; ++i) fn(i, shift.data(), sum.data());
      },
      offsets);
}

}  // namespace

template <class T>
void segment_softmax(const T* values, const int64_t* offsets, int64_t n, int64_t features, bool log, T* out) {
  using A = typename Accum<T>::type;
  per_sequence<T>(offsets, n, features, [&](int64_t i, A* shift, A* sum) {
    const int64_t len = offsets[i + 1] - offsets[i];
    const T* row = values + offsets[i] * features;
    T* o = out + offsets[i] * features;
    shifted_sums(row, len, features, shift, sum);
    if (log) {
      // (x - shift) - log(sum): x - shift is exact near the maximum, where x - logsumexp would
      // cancel two large numbers (an error of ulp(x), 3e-5 at x = 500 in float)
      for (int64_t f = 0; f < features; ++f) sum[f] = std::log(sum[f]);
      for (int64_t t = 0; t < len; ++t, row += features, o += features)
        for (int64_t f = 0; f < features; ++f)
          o[f] = Accum<T>::store((A(Accum<T>::load(row[f])) - shift[f]) - sum[f]);
    } else {
      for (int64_t f = 0; f < features; ++f) sum[f] = A(1) / sum[f];
      for (int64_t t = 0; t < len; ++t, row += features, o += features)
        for (int64_t f = 0; f < features; ++f)
          o[f] = Accum<T>::store(std::exp(A(Accum<T>::load(row[f])) - shift[f]) * sum[f]);
    }
  });
}

template <class T>
void segment_logsumexp(const T* values, const int64_t* offsets, int64_t n, int64_t features, T* out) {
  using A = typename Accum<T>::type;
  per_sequence<T>(offsets, n, features, [&](int64_t i, A* shift, A* sum) {
    shifted_sums(values + offsets[i] * features, offsets[i + 1] - offsets[i], features, shift, sum);
    for (int64_t f = 0; f < features; ++f) out[i * features + f] = Accum<T>::store(shift[f] + std::log(sum[f]));
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

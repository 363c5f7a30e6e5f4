// Per-sequence sum / mean / max / min / prod, var / std and cumsum over tokens. Each work item keeps a `features`-long accumulator
// row (allocated once per thread chunk, never per sequence) so the inner loop is a contiguous,
// vectorisable pass over one token's features.
#include "scree/ops/reduce.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "scree/dtypes.h"
#include "scree/error.h"
#include "scree/parallel.h"

namespace scree::ops {
namespace {

template <class T, class A>
A lowest_of() {
  if constexpr (std::is_floating_point_v<A>) {
    return -std::numeric_limits<A>::infinity();
  } else {
    return A(std::numeric_limits<T>::lowest());
  }
}

template <class T, class A>
A highest_of() {
  if constexpr (std::is_floating_point_v<A>) {
    return std::numeric_limits<A>::infinity();
  } else {
    return A(std::numeric_limits<T>::max());
  }
}

// A sequence's starting value: the identity of the operation (an empty sequence's result).
template <class T, class A>
A identity_of(Reduce op) {
  switch (op) {
    case Reduce::Max: return lowest_of<T, A>();
    case Reduce::Min: return highest_of<T, A>();
    case Reduce::Prod: return A(1);
    default: return A(0);
  }
}

// fn(i, row) for every sequence i, with `row` a scratch row of `width` A's allocated once per thread
// chunk (never per sequence); chunks balanced by token count; `passes` reads of the rows each.
template <class A, class Fn>
void per_sequence(const int64_t* offsets, int64_t n, int64_t features, int64_t item_bytes, int passes, int64_t width,
                  Fn&& fn) {
  parallel_for(
      n, offsets[n] * features * item_bytes * passes,
      [&](int64_t begin, int64_t end) {
        std::vector<A> row(static_cast<size_t>(width));
        for (int64_t i = begin; i < end; ++i) fn(i, row.data());
      },
      offsets);
}

}  // namespace

template <class T, class Out>
void segment_reduce(const T* values, const int64_t* offsets, int64_t n, int64_t features, Reduce op, Out* out) {
  // Integers sum into int64; floats into Accum<T> (float for 16-bit types).
  using A = std::conditional_t<std::is_integral_v<T>, int64_t, typename Accum<T>::type>;
  // Instantiations the header rules out would otherwise write nothing (mean of integers) or
  // truncate the int64 sum silently (an int32 Out exists for max).
  if constexpr (std::is_integral_v<T>) {
    require(op != Reduce::Mean, ErrorKind::DTypeMismatch,
            [] { return std::string("mean needs a floating-point dtype, got an integer type"); });
    require((op != Reduce::Sum && op != Reduce::Prod) || std::is_same_v<Out, int64_t>, ErrorKind::DTypeMismatch,
            [] { return std::string("the sum or product of integers is int64; the output must be int64"); });
  }
  // No features: the output is empty, and a sequence's length is not bounded by memory (a
  // (2^62, 0) array has no bytes), so walking its rows could take forever.
  if (features == 0) return;
  per_sequence<A>(offsets, n, features, int64_t(sizeof(T)), 1, features, [&](int64_t i, A* acc) {
    const int64_t len = offsets[i + 1] - offsets[i];
    // An empty sequence's max (min) is the lowest (highest) value of T, not of A.
    const A init = identity_of<T, A>(op);
    for (int64_t f = 0; f < features; ++f) acc[f] = init;
    const T* row = values + offsets[i] * features;
    for (int64_t r = 0; r < len; ++r, row += features) {
      if (op == Reduce::Max) {
        for (int64_t f = 0; f < features; ++f) {
          const A v = A(Accum<T>::load(row[f]));
          acc[f] = (v > acc[f] || v != v) ? v : acc[f];  // NaN propagates, as torch/numpy max
        }
      } else if (op == Reduce::Min) {
        for (int64_t f = 0; f < features; ++f) {
          const A v = A(Accum<T>::load(row[f]));
          acc[f] = (v < acc[f] || v != v) ? v : acc[f];
        }
      } else if (op == Reduce::Prod) {
        if constexpr (std::is_integral_v<T>) {  // wraps modulo 2^64, as the sum
          for (int64_t f = 0; f < features; ++f)
            acc[f] = static_cast<int64_t>(static_cast<uint64_t>(acc[f]) * static_cast<uint64_t>(int64_t(row[f])));
        } else {
          for (int64_t f = 0; f < features; ++f) acc[f] *= A(Accum<T>::load(row[f]));
        }
      } else if constexpr (std::is_integral_v<T>) {
        // Integer sums wrap modulo 2^64 as NumPy's and torch's do; signed overflow would be
        // undefined behaviour (found by tests/cpp/fuzz_reduce.cpp).
        for (int64_t f = 0; f < features; ++f)
          acc[f] = static_cast<int64_t>(static_cast<uint64_t>(acc[f]) + static_cast<uint64_t>(int64_t(row[f])));
      } else {
        for (int64_t f = 0; f < features; ++f) acc[f] += A(Accum<T>::load(row[f]));
      }
    }
    Out* o = out + i * features;
    if (op == Reduce::Mean) {
      if constexpr (std::is_floating_point_v<A>) {
        const A count = A(len);  // 0/0 = NaN for an empty sequence, as numpy.mean
        for (int64_t f = 0; f < features; ++f) o[f] = Accum<Out>::store(acc[f] / count);
      }
    } else if constexpr (std::is_integral_v<T>) {
      for (int64_t f = 0; f < features; ++f) o[f] = static_cast<Out>(acc[f]);
    } else {
      for (int64_t f = 0; f < features; ++f) o[f] = Accum<Out>::store(acc[f]);
    }
  });
}

template <class T>
void segment_var(const T* values, const int64_t* offsets, int64_t n, int64_t features, int64_t ddof, bool sqrt, T* out) {
  if (features == 0) return;  // (as segment_reduce: a featureless sequence may be longer than memory)
  per_sequence<double>(offsets, n, features, int64_t(sizeof(T)), 2, 2 * features, [&](int64_t i, double* mean) {
    double* ss = mean + features;
    const int64_t len = offsets[i + 1] - offsets[i];
    const T* rows = values + offsets[i] * features;
    std::fill(mean, mean + 2 * features, 0.0);
    const T* row = rows;
    for (int64_t r = 0; r < len; ++r, row += features)
      for (int64_t f = 0; f < features; ++f) mean[f] += double(Accum<T>::load(row[f]));
    for (int64_t f = 0; f < features; ++f) mean[f] /= double(len);
    row = rows;
    for (int64_t r = 0; r < len; ++r, row += features)
      for (int64_t f = 0; f < features; ++f) {
        const double d = double(Accum<T>::load(row[f])) - mean[f];
        ss[f] += d * d;
      }
    const double dof = double(len - ddof);
    T* o = out + i * features;
    for (int64_t f = 0; f < features; ++f) {
      const double v = len > ddof ? ss[f] / dof : std::numeric_limits<double>::quiet_NaN();
      using A = typename Accum<T>::type;
      o[f] = Accum<T>::store(A(sqrt ? std::sqrt(v) : v));
    }
  });
}

template void segment_var<float>(const float*, const int64_t*, int64_t, int64_t, int64_t, bool, float*);
template void segment_var<double>(const double*, const int64_t*, int64_t, int64_t, int64_t, bool, double*);
template void segment_var<float16>(const float16*, const int64_t*, int64_t, int64_t, int64_t, bool, float16*);
template void segment_var<bfloat16>(const bfloat16*, const int64_t*, int64_t, int64_t, int64_t, bool, bfloat16*);

template <class T, class Out>
void segment_cumsum(const T* values, const int64_t* offsets, int64_t n, int64_t features, Out* out) {
  using A = std::conditional_t<std::is_integral_v<T>, int64_t, double>;
  if (features == 0) return;
  per_sequence<A>(offsets, n, features, int64_t(sizeof(T)), 1, features, [&](int64_t i, A* acc) {
    std::fill(acc, acc + features, A(0));
    const T* row = values + offsets[i] * features;
    Out* o = out + offsets[i] * features;
    for (int64_t r = offsets[i]; r < offsets[i + 1]; ++r, row += features, o += features)
      for (int64_t f = 0; f < features; ++f) {
        if constexpr (std::is_integral_v<T>) {
          acc[f] = static_cast<int64_t>(static_cast<uint64_t>(acc[f]) + static_cast<uint64_t>(int64_t(row[f])));
          o[f] = acc[f];
        } else {
          acc[f] += double(Accum<T>::load(row[f]));
          o[f] = Accum<T>::store(typename Accum<T>::type(acc[f]));
        }
      }
  });
}

template void segment_cumsum<float, float>(const float*, const int64_t*, int64_t, int64_t, float*);
template void segment_cumsum<double, double>(const double*, const int64_t*, int64_t, int64_t, double*);
template void segment_cumsum<float16, float16>(const float16*, const int64_t*, int64_t, int64_t, float16*);
template void segment_cumsum<bfloat16, bfloat16>(const bfloat16*, const int64_t*, int64_t, int64_t, bfloat16*);
template void segment_cumsum<int32_t, int64_t>(const int32_t*, const int64_t*, int64_t, int64_t, int64_t*);
template void segment_cumsum<int64_t, int64_t>(const int64_t*, const int64_t*, int64_t, int64_t, int64_t*);

#define SCREE_REDUCE(T, Out) \
  template void segment_reduce<T, Out>(const T*, const int64_t*, int64_t, int64_t, Reduce, Out*);
SCREE_REDUCE(float, float)
SCREE_REDUCE(double, double)
SCREE_REDUCE(float16, float16)
SCREE_REDUCE(bfloat16, bfloat16)
SCREE_REDUCE(int32_t, int32_t)
SCREE_REDUCE(int32_t, int64_t)
SCREE_REDUCE(int64_t, int64_t)
#undef SCREE_REDUCE

}  // namespace scree::ops

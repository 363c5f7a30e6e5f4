// Per-sequence reductions over the token axis: values (total, features) -> out (n, features).
// Sum accumulates in float for 16-bit floats, double for double, int64 for integers. An empty
// sequence gives sum 0, mean NaN (0/0, as NumPy) and max -inf (lowest value for integers).
#pragma once

#include <cstdint>

namespace scree::ops {

enum class Reduce { Sum, Mean, Max };

// T in {float, double, float16, bfloat16, int32_t, int64_t}; Out is T except Sum of integers (int64_t),
// which wraps modulo 2^64 as NumPy's does. Mean of integers, or an integer Sum into an Out other
// than int64_t, throws scree::Error(DTypeMismatch).
template <class T, class Out>
void segment_reduce(const T* values, const int64_t* offsets, int64_t n, int64_t features, Reduce op, Out* out);

}  // namespace scree::ops

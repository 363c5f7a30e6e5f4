// Per-sequence reductions over the token axis: values (total, features) -> out (n, features).
// Sum and prod accumulate in float for 16-bit floats, double for double, int64 for integers
// (wrapping modulo 2^64). An empty sequence gives sum 0, prod 1, mean NaN (0/0, as NumPy), max
// -inf and min +inf (the lowest / highest value for integers). Max and min propagate NaN.
#pragma once

#include <cstdint>

namespace scree::ops {

enum class Reduce { Sum, Mean, Max, Min, Prod };

// T in {float, double, float16, bfloat16, int32_t, int64_t}; Out is T except Sum and Prod of
// integers (int64_t), which wrap modulo 2^64 as NumPy's do. Mean of integers, or an integer Sum or
// Prod into an Out other than int64_t, throws scree::Error(DTypeMismatch).
template <class T, class Out>
void segment_reduce(const T* values, const int64_t* offsets, int64_t n, int64_t features, Reduce op, Out* out);

// Per-sequence variance (or, with `sqrt`, standard deviation) over tokens: the squared deviations
// from the sequence's mean (two passes, so no cancellation), summed and divided by length - ddof;
// NaN where length <= ddof. Floats only (T in {float, double, float16, bfloat16}), accumulated in
// double for every type (a variance of float32 data to float32 precision needs it for long
// sequences).
template <class T>
void segment_var(const T* values, const int64_t* offsets, int64_t n, int64_t features, int64_t ddof, bool sqrt, T* out);

// Per-sequence running sum over tokens: out (total, features), row t of sequence i the sum of its
// rows up to t. Accumulated in double for floats (as torch.cumsum on the CPU), int64 for integers
// (wrapping modulo 2^64); Out is T for floats, int64_t for integers (as torch).
template <class T, class Out>
void segment_cumsum(const T* values, const int64_t* offsets, int64_t n, int64_t features, Out* out);

}  // namespace scree::ops

// RaggedLayout: the one place where offsets are validated. A ragged array is `values` of shape
// (total, *feature) plus `offsets` of length n+1 with offsets[0] == 0, offsets non-decreasing and
// offsets[n] == total. Every entry point (Python, XLA FFI, C++ users) goes through `from_offsets`.
#pragma once

#include <cstdint>

namespace scree {

struct RaggedLayout {
  int64_t num_sequences = 0;  // n
  int64_t total = 0;          // offsets[n], rows of values
  int64_t max_length = 0;     // max over sequences of offsets[i+1] - offsets[i]

  // Validates `count` offsets read with `stride` (in elements) against `total` rows.
  // Throws scree::Error(InvalidOffsets) naming the first bad index.
  template <class Index>
  static RaggedLayout from_offsets(const Index* offsets, int64_t count, int64_t stride, int64_t total);
};

// Writes offsets[0..n] (n+1 values) from n lengths; throws InvalidOffsets naming the first
// negative length (or where the sum passes INT64_MAX), InvalidArgument for n < 0. Returns the
// layout the offsets describe.
template <class Index>
RaggedLayout offsets_from_lengths(const Index* lengths, int64_t n, int64_t stride, int64_t* offsets);

}  // namespace scree

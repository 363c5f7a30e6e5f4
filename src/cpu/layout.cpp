// RaggedLayout validation and offsets-from-lengths: the single implementation of the ragged
// invariants, explicitly instantiated for int32 and int64 indices.
#include "scree/layout.h"

#include <cstdint>
#include <string>

#include "scree/error.h"

namespace scree {

template <class Index>
RaggedLayout RaggedLayout::from_offsets(const Index* offsets, int64_t count, int64_t stride, int64_t total) {
  require(count >= 1, ErrorKind::InvalidOffsets, [&] {
    return std::string("offsets must have at least one element (offsets = [0] describes zero sequences), got an empty array");
  });
  require(total >= 0, ErrorKind::InvalidOffsets, [&] { return "total must be >= 0, got " + std::to_string(total); });
  const int64_t first = static_cast<int64_t>(offsets[0]);
  require(first == 0, ErrorKind::InvalidOffsets,
          [&] { return "offsets[0] must be 0, got " + std::to_string(first); });
  RaggedLayout layout;
  layout.num_sequences = count - 1;
  int64_t prev = 0;
  for (int64_t i = 1; i < count; ++i) {
    const int64_t cur = static_cast<int64_t>(offsets[i * stride]);
    if (cur < prev) {
      throw Error(ErrorKind::InvalidOffsets, "offsets must be non-decreasing: offsets[" + std::to_string(i) +
                                                 "] = " + std::to_string(cur) + " < offsets[" +
                                                 std::to_string(i - 1) + "] = " + std::to_string(prev));
    }
    if (cur - prev > layout.max_length) layout.max_length = cur - prev;
    prev = cur;
  }
  require(prev == total, ErrorKind::InvalidOffsets, [&] {
    return "offsets[-1] (index " + std::to_string(count - 1) + ") = " + std::to_string(prev) +
           " must equal total = " + std::to_string(total) + " (values.shape[0])";
  });
  layout.total = total;
  return layout;
}

template <class Index>
RaggedLayout offsets_from_lengths(const Index* lengths, int64_t n, int64_t stride, int64_t* offsets) {
  require(n >= 0, ErrorKind::InvalidArgument,
          [&] { return "the number of lengths must be >= 0, got " + std::to_string(n); });
  RaggedLayout layout;
  layout.num_sequences = n;
  offsets[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = static_cast<int64_t>(lengths[i * stride]);
    require(len >= 0, ErrorKind::InvalidOffsets,
            [&] { return "lengths must be >= 0: lengths[" + std::to_string(i) + "] = " + std::to_string(len); });
    // A sum past int64 would wrap (signed overflow is undefined behaviour) into small offsets that
    // later pass every check: lengths [2^63 - 1, 2^63 - 1, 3] summed to 1.
    require(len <= INT64_MAX - offsets[i], ErrorKind::InvalidOffsets, [&] {
      return "lengths overflow int64: their running sum passes 2^63 - 1 at lengths[" + std::to_string(i) + "] = " +
             std::to_string(len);
    });
    offsets[i + 1] = offsets[i] + len;
    if (len > layout.max_length) layout.max_length = len;
  }
  layout.total = offsets[n];
  return layout;
}

template RaggedLayout RaggedLayout::from_offsets<int32_t>(const int32_t*, int64_t, int64_t, int64_t);
template RaggedLayout RaggedLayout::from_offsets<int64_t>(const int64_t*, int64_t, int64_t, int64_t);
template RaggedLayout offsets_from_lengths<int32_t>(const int32_t*, int64_t, int64_t, int64_t*);
template RaggedLayout offsets_from_lengths<int64_t>(const int64_t*, int64_t, int64_t, int64_t*);

}  // namespace scree

// Per-token indices of a ragged layout: positions (index within its own sequence, what RoPE
// needs) and segment ids (which sequence a token belongs to). Output type is int32 or int64.
#pragma once

#include <cstdint>

namespace scree::ops {

template <class Out>
void positions(const int64_t* offsets, int64_t n, Out* out);

template <class Out>
void segment_ids(const int64_t* offsets, int64_t n, Out* out);

}  // namespace scree::ops

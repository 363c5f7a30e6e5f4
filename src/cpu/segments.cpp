// positions / segment_ids kernels: one linear pass per sequence, parallel over sequences.
#include "scree/ops/segments.h"

#include "copy.h"
#include "scree/parallel.h"

namespace scree::ops {
namespace {

// Each token of sequence i gets value(i, j), j its position in the sequence; sequences are spread
// over the cores in chunks weighted by their lengths.
template <class Out, class Value>
void fill_tokens(const int64_t* offsets, int64_t n, Out* out, Value value) {
  detail::advise_hugepages(out, offsets[n] * int64_t(sizeof(Out)));
  parallel_for(
      n, offsets[n] * int64_t(sizeof(Out)),
      [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          Out* o = out + offsets[i];
          const int64_t len = offsets[i + 1] - offsets[i];
          for (int64_t j = 0; j < len; ++j) o[j] = static_cast<Out>(value(i, j));
        }
      },
      offsets);
}

}  // namespace

template <class Out>
void positions(const int64_t* offsets, int64_t n, Out* out) {
  fill_tokens(offsets, n, out, [](int64_t, int64_t j) { return j; });
}

template <class Out>
void segment_ids(const int64_t* offsets, int64_t n, Out* out) {
  fill_tokens(offsets, n, out, [](int64_t i, int64_t) { return i; });
}

template void positions<int32_t>(const int64_t*, int64_t, int32_t*);
template void positions<int64_t>(const int64_t*, int64_t, int64_t*);
template void segment_ids<int32_t>(const int64_t*, int64_t, int32_t*);
template void segment_ids<int64_t>(const int64_t*, int64_t, int64_t*);

}  // namespace scree::ops

// positions / segment_ids kernels: one linear pass over the tokens, their rows split evenly over
// the cores.
#include "scree/ops/segments.h"

#include <algorithm>

#include "copy.h"
#include "scree/parallel.h"

namespace scree::ops {
namespace {

// Each token of sequence i gets value(i, j), j its position in the sequence. The tokens are split
// into equal ranges, one a thread (a range may start inside a sequence), so one long sequence
// spreads over the cores too (split by sequence, it went to one thread).
template <class Out, class Value>
void fill_tokens(const int64_t* offsets, int64_t n, Out* out, Value value) {
  const int64_t tokens = offsets[n];
  detail::advise_hugepages(out, tokens * int64_t(sizeof(Out)));
  parallel_for(tokens, tokens * int64_t(sizeof(Out)), [&](int64_t t0, int64_t t1) {
    // the sequence holding token t0: the last i with offsets[i] <= t0 (empty ones skipped)
    int64_t i = std::max<int64_t>(0, std::upper_bound(offsets, offsets + n + 1, t0) - offsets - 1);
    for (; i < n && offsets[i] < t1; ++i) {
      const int64_t a = std::max(t0, offsets[i]), b = std::min(t1, offsets[i + 1]);
      for (int64_t t = a; t < b; ++t) out[t] = static_cast<Out>(value(i, t - offsets[i]));
    }
  });
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

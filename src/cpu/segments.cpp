// positions / segment_ids kernels: one linear pass over the tokens, their rows split evenly over
// the cores.
#include "scree/ops/segments.h"

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
    detail::for_each_slice(offsets, n, t0, t1, [&](int64_t i, int64_t a, int64_t b) {
      for (int64_t t = a; t < b; ++t) out[t] = static_cast<Out>(value(i, t - offsets[i]));
    });
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

// The per-sequence softmax family over the token axis, numerically stable (each feature column of a
// sequence is shifted by its largest finite value before exp): values (total, features) ->
//   segment_softmax:     out (total, features), exp(x - m) / sum(exp(x - m)), or with `log` set
//                        x - m - log(sum(exp(x - m)));
//   segment_logsumexp:   out (n, features), m + log(sum(exp(x - m))).
// Accumulated in float for 16-bit floats, in T otherwise. An empty sequence's logsumexp is -inf
// (its softmax has no rows); a column of -inf gives logsumexp -inf and softmax NaN (0/0, as torch);
// NaN propagates; +inf gives logsumexp +inf.
#pragma once

#include <cstdint>

namespace scree::ops {

// T in {float, double, float16, bfloat16}.
template <class T>
void segment_softmax(const T* values, const int64_t* offsets, int64_t n, int64_t features, bool log, T* out);

template <class T>
void segment_logsumexp(const T* values, const int64_t* offsets, int64_t n, int64_t features, T* out);

}  // namespace scree::ops

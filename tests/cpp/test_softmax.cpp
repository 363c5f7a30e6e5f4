// The per-sequence softmax family (include/scree/ops/softmax.h) against loops in double, for
// float, double, half and bfloat16, including an empty sequence (logsumexp -inf), values whose
// exponentials overflow without the shift, and columns of -inf (softmax NaN, logsumexp -inf),
// +inf and NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "scree/dtypes.h"
#include "scree/ops/softmax.h"

namespace {

const std::vector<int64_t> kOffsets{0, 3, 3, 4, 9};  // lengths 3, 0, 1, 5
constexpr int64_t kN = 4, kF = 3;

template <class T, class Load, class Store>
void check(Load load, Store store, double tol) {
  std::mt19937 gen(5);
  std::uniform_real_distribution<double> dist(-4.0, 4.0);
  std::vector<T> in(9 * kF);
  std::vector<double> x(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = store(dist(gen) + (i % kF == 2 ? 500.0 : 0.0));  // column 2: exp overflows unshifted (float)
    x[i] = load(in[i]);
  }
  std::vector<T> sm(in.size()), lsm(in.size()), lse(kN * kF);
  scree::ops::segment_softmax(in.data(), kOffsets.data(), kN, kF, false, sm.data());
  scree::ops::segment_softmax(in.data(), kOffsets.data(), kN, kF, true, lsm.data());
  scree::ops::segment_logsumexp(in.data(), kOffsets.data(), kN, kF, lse.data());
  for (int64_t i = 0; i < kN; ++i)
    for (int64_t f = 0; f < kF; ++f) {
      double m = -INFINITY, s = 0;
      for (int64_t r = kOffsets[i]; r < kOffsets[i + 1]; ++r) m = std::max(m, x[r * kF + f]);
      for (int64_t r = kOffsets[i]; r < kOffsets[i + 1]; ++r) s += std::exp(x[r * kF + f] - m);
      const double want_lse = kOffsets[i + 1] == kOffsets[i] ? -INFINITY : m + std::log(s);
      const double got_lse = load(lse[i * kF + f]);
      if (std::isinf(want_lse)) EXPECT_EQ(got_lse, want_lse);
      else EXPECT_NEAR(got_lse, want_lse, tol * (1 + std::fabs(want_lse))) << "seq " << i;
      for (int64_t r = kOffsets[i]; r < kOffsets[i + 1]; ++r) {
        const double want = std::exp(x[r * kF + f] - want_lse);
        EXPECT_NEAR(load(sm[r * kF + f]), want, tol) << "seq " << i << " row " << r;
        EXPECT_NEAR(load(lsm[r * kF + f]), x[r * kF + f] - want_lse, tol * (1 + std::fabs(x[r * kF + f] - want_lse)));
      }
    }
}

TEST(SegmentSoftmax, Float) {
  check<float>([](float v) { return double(v); }, [](double v) { return float(v); }, 2e-6);
}
TEST(SegmentSoftmax, Double) {
  check<double>([](double v) { return v; }, [](double v) { return v; }, 1e-13);
}
TEST(SegmentSoftmax, Half) {
  // (float16 tops out at 65504: column 2's offset of 500 stays representable)
  check<scree::float16>([](scree::float16 v) { return double(scree::to_float(v)); },
                        [](double v) { return scree::to_float16(float(v)); }, 2e-3);
}
TEST(SegmentSoftmax, BFloat16) {
  check<scree::bfloat16>([](scree::bfloat16 v) { return double(scree::to_float(v)); },
                         [](double v) { return scree::to_bfloat16(float(v)); }, 1e-2);
}

TEST(SegmentSoftmax, NonFiniteColumns) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // one sequence of two tokens; columns: -inf -inf | +inf 1 | NaN 1
  const std::vector<float> in{-inf, inf, nan, -inf, 1.f, 1.f};
  const std::vector<int64_t> off{0, 2};
  std::vector<float> sm(6), lse(3);
  scree::ops::segment_softmax(in.data(), off.data(), 1, 3, false, sm.data());
  scree::ops::segment_logsumexp(in.data(), off.data(), 1, 3, lse.data());
  EXPECT_EQ(lse[0], -inf);
  EXPECT_EQ(lse[1], inf);
  EXPECT_TRUE(std::isnan(lse[2]));
  EXPECT_TRUE(std::isnan(sm[0]) && std::isnan(sm[3]));  // 0 / 0, as torch.softmax
  EXPECT_TRUE(std::isnan(sm[2]) && std::isnan(sm[5]));
}

// Without features a sequence may be longer than memory (no bytes): nothing is walked.
TEST(SegmentSoftmax, NoFeaturesWalksNoRows) {
  const std::vector<int64_t> off{0, std::numeric_limits<int64_t>::max() / 2};
  float out = 7.f;
  scree::ops::segment_logsumexp(static_cast<const float*>(nullptr), off.data(), 1, 0, &out);
  EXPECT_EQ(out, 7.f);
}

}  // namespace

// The CPU attention's vector exponentials (src/cpu/attention/simd.h) against std::exp in double,
// in every build the CPU can run (simd_exp_probe.cpp, compiled per build): relative error over
// the whole normal range, and the values the softmax relies on (e^-inf = 0, e^0 = 1, NaN stays,
// underflow to 0 or to the denormal e^x is, never above it).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

extern "C" {
void scree_simd_exp_probe_generic(const float*, int64_t, float*, float*, float*, float*);
#if defined(SCREE_PROBE_AVX2)
void scree_simd_exp_probe_avx2(const float*, int64_t, float*, float*, float*, float*);
#endif
#if defined(SCREE_PROBE_AVX512)
void scree_simd_exp_probe_avx512(const float*, int64_t, float*, float*, float*, float*);
#endif
}

namespace {

using Probe = void (*)(const float*, int64_t, float*, float*, float*, float*);

struct Build {
  std::string name;
  Probe probe;
  bool runs;
};

// The builds this binary has, whether or not the CPU runs them.
std::vector<Build> builds() {
  std::vector<Build> b{{"generic", scree_simd_exp_probe_generic, true}};
#if defined(SCREE_PROBE_AVX2)
  b.push_back({"avx2", scree_simd_exp_probe_avx2, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")});
#endif
#if defined(SCREE_PROBE_AVX512)
  b.push_back({"avx512", scree_simd_exp_probe_avx512,
               __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")});
#endif
  return b;
}

// The builds the CPU runs.
std::vector<Build> runnable() {
  std::vector<Build> b;
  for (const Build& x : builds())
    if (x.runs) b.push_back(x);
  return b;
}

// Inputs: a dense sweep, random points, and the edges (padded to a multiple of 64 floats).
std::vector<float> inputs(float lo, float hi) {
  std::vector<float> x;
  for (int i = 0; i <= 200000; ++i) x.push_back(lo + (hi - lo) * float(i) / 200000.f);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(lo, hi);
  for (int i = 0; i < 100000; ++i) x.push_back(u(rng));
  for (float v : {0.f, -0.f, -1e-30f, -0.34657359f, -0.34657360f, -0.6931472f, lo, hi}) x.push_back(v);
  while (x.size() % 64 != 0) x.push_back(-1.f);
  return x;
}

struct Out {
  std::vector<float> general, nonpos, lanes_general, lanes;
};

Out run(const Build& b, const std::vector<float>& x) {
  const std::vector<float> none(x.size());
  Out o{none, none, none, none};
  b.probe(x.data(), int64_t(x.size()), o.general.data(), o.nonpos.data(), o.lanes_general.data(), o.lanes.data());
  return o;
}

// Largest relative error where e^x is a normal float.
double max_rel_error(const std::vector<float>& x, const std::vector<float>& y) {
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double ref = std::exp(double(x[i]));
    if (ref >= double(std::numeric_limits<float>::min()) && ref <= double(std::numeric_limits<float>::max()))
      worst = std::max(worst, std::fabs(double(y[i]) / ref - 1));
  }
  return worst;
}

TEST(SimdExp, RelativeErrorOverTheNormalRange) {
  // Both polynomials measured 1.6e-7..2.3e-7 (float rounding of the reduction and of Horner's
  // steps included); 4e-7 leaves them room and catches a wrong coefficient (a degree less: ~3e-6).
  for (const Build& b : runnable()) {
    SCOPED_TRACE(b.name);
    const std::vector<float> neg = inputs(-87.3f, 0.f);
    const Out o = run(b, neg);
    std::printf("%s: max relative error general %.3g, non-positive %.3g, lanes %.3g\n", b.name.c_str(),
                max_rel_error(neg, o.general), max_rel_error(neg, o.nonpos), max_rel_error(neg, o.lanes));
    EXPECT_LT(max_rel_error(neg, o.general), 4e-7);
    EXPECT_LT(max_rel_error(neg, o.nonpos), 4e-7);
    EXPECT_LT(max_rel_error(neg, o.lanes), 4e-7);
    EXPECT_LT(max_rel_error(neg, o.lanes_general), 4e-7);
    // (Below AVX-512 vexp gives inf from 127.5 ln2 = 88.38 on, where 2^n would need n = 128; e^x
    // overflows at 88.72.)
    const std::vector<float> all = inputs(-87.3f, 88.3f);
    const Out a = run(b, all);
    EXPECT_LT(max_rel_error(all, a.general), 4e-7);
    EXPECT_LT(max_rel_error(all, a.lanes_general), 4e-7);
  }
}

TEST(SimdExp, ValuesTheSoftmaxReliesOn) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x{-inf, nan, 0.f, -0.f, -88.03f, -88.1f, -100.f, -1e30f, -87.5f, -87.4f, -87.35f, -87.69f};
  while (x.size() % 64 != 0) x.push_back(-2.f);
  for (const Build& b : runnable()) {
    SCOPED_TRACE(b.name);
    const Out o = run(b, x);
    for (const std::vector<float>* y : {&o.general, &o.nonpos, &o.lanes_general, &o.lanes}) {
      const std::vector<float>& e = *y;
      EXPECT_EQ(e[0], 0.f);           // masked scores
      EXPECT_TRUE(std::isnan(e[1]));  // NaN inputs reach the output
      EXPECT_EQ(e[2], 1.f);           // the row maximum's own term
      EXPECT_EQ(e[3], 1.f);
      for (int i = 4; i < 8; ++i) EXPECT_EQ(e[i], 0.f) << x[i];  // below e^x's denormals' use
      // Near the underflow: 0 or within a few denormal steps of e^x (2^-149 = 1.4e-45 each), never
      // more than e^x by a relative 4e-7.
      for (int i = 8; i < 12; ++i) {
        const double ref = std::exp(double(x[i]));
        EXPECT_TRUE(e[i] == 0.f || std::fabs(double(e[i]) - ref) <= 4e-7 * ref + 4 * 1.4e-45)
            << x[i] << " -> " << e[i] << " (e^x " << ref << ")";
      }
      for (size_t i = 12; i < x.size(); ++i) EXPECT_NEAR(e[i], std::exp(-2.0), 1e-7);
    }
    // The general forms above the non-positive range: +inf for +inf and where e^x overflows
    // (88.72), finite below 127.5 ln2 = 88.38; between them +inf (below AVX-512: 2^n would need
    // n = 128) or e^x (VSCALEFPS).
    std::vector<float> big{inf, 89.f, 88.4f, 88.3f, 50.f, 88.72f, 88.73f};
    while (big.size() % 64 != 0) big.push_back(1.f);
    const Out g = run(b, big);
    for (const std::vector<float>* y : {&g.general, &g.lanes_general}) {
      const std::vector<float>& e = *y;
      EXPECT_EQ(e[0], inf);
      EXPECT_EQ(e[1], inf);
      EXPECT_TRUE(e[2] == inf || std::fabs(e[2] / std::exp(double(88.4f)) - 1.0) <= 4e-7) << e[2];
      EXPECT_TRUE(e[5] == inf || std::fabs(e[5] / std::exp(double(88.72f)) - 1.0) <= 4e-7) << e[5];
      EXPECT_EQ(e[6], inf);
      EXPECT_NEAR(e[3] / std::exp(double(88.3f)), 1.0, 4e-7);
      EXPECT_NEAR(e[4] / std::exp(50.0), 1.0, 4e-7);
      EXPECT_NEAR(e[7], std::exp(1.0), 1e-6);
    }
  }
}

TEST(SimdExp, LanesEqualOneVectorAtATime) {
  // vexp_lanes computes each lane as vexp<float, kNonPositive> does, only interleaved.
  for (const Build& b : runnable()) {
    SCOPED_TRACE(b.name);
    const std::vector<float> x = inputs(-90.f, 0.f);
    const Out o = run(b, x);
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(o.nonpos[i], o.lanes[i]) << x[i];
      ASSERT_EQ(o.general[i], o.lanes_general[i]) << x[i];
    }
  }
}

}  // namespace

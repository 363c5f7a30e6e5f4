// Per-sequence reductions against loops in double, for float, half, bfloat16 and integers,
// including empty sequences (sum 0, prod 1, mean NaN, max -inf / lowest integer, min +inf /
// highest integer), and the inputs
// tests/cpp/fuzz_reduce.cpp found wrong, undefined or hanging.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "scree/dtypes.h"
#include "scree/error.h"
#include "scree/ops/reduce.h"

namespace {

using scree::ops::Reduce;

const std::vector<int64_t> kOffsets{0, 3, 3, 4, 10};  // lengths 3, 0, 1, 6
constexpr int64_t kN = 4, kF = 5;

std::vector<double> data() {
  std::mt19937 gen(11);
  std::uniform_real_distribution<double> dist(-2.0, 2.0);
  std::vector<double> v(10 * kF);
  for (auto& x : v) x = dist(gen) + 0.01;
  return v;
}

double expect(const std::vector<double>& v, int64_t i, int64_t f, Reduce op) {
  double acc = op == Reduce::Max ? -INFINITY : op == Reduce::Min ? INFINITY : op == Reduce::Prod ? 1.0 : 0.0;
  for (int64_t r = kOffsets[i]; r < kOffsets[i + 1]; ++r) {
    const double x = v[r * kF + f];
    acc = op == Reduce::Max ? std::max(acc, x) : op == Reduce::Min ? std::min(acc, x) : op == Reduce::Prod ? acc * x : acc + x;
  }
  if (op == Reduce::Mean) acc /= double(kOffsets[i + 1] - kOffsets[i]);
  return acc;
}

template <class T, class Load, class Store>
void check(Load load, Store store, double tol) {
  std::vector<double> ref = data();
  std::vector<T> in(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    in[i] = store(ref[i]);
    ref[i] = load(in[i]);  // compare against what the type can hold
  }
  for (Reduce op : {Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::Min, Reduce::Prod}) {
    std::vector<T> out(kN * kF);
    scree::ops::segment_reduce(in.data(), kOffsets.data(), kN, kF, op, out.data());
    for (int64_t i = 0; i < kN; ++i)
      for (int64_t f = 0; f < kF; ++f) {
        const double want = expect(ref, i, f, op), got = load(out[i * kF + f]);
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(got));
        } else if (std::isinf(want)) {
          EXPECT_EQ(got, want);
        } else {
          EXPECT_NEAR(got, want, tol * (1 + std::fabs(want))) << "seq " << i << " op " << int(op);
        }
      }
  }
}

TEST(SegmentReduce, Float) {
  check<float>([](float x) { return double(x); }, [](double x) { return float(x); }, 1e-6);
}
TEST(SegmentReduce, Double) {
  check<double>([](double x) { return x; }, [](double x) { return x; }, 1e-12);
}
TEST(SegmentReduce, Half) {
  check<scree::float16>([](scree::float16 x) { return double(scree::to_float(x)); },
                        [](double x) { return scree::to_float16(float(x)); }, 2e-3);
}
TEST(SegmentReduce, BFloat16) {
  check<scree::bfloat16>([](scree::bfloat16 x) { return double(scree::to_float(x)); },
                         [](double x) { return scree::to_bfloat16(float(x)); }, 1e-2);
}

TEST(SegmentReduce, IntegersSumToInt64AndEmptyMaxIsLowest) {
  std::vector<int32_t> in(10 * kF);
  for (size_t i = 0; i < in.size(); ++i) in[i] = int32_t(i % 7) - 3 + int32_t(i);
  std::vector<int64_t> sum(kN * kF);
  scree::ops::segment_reduce(in.data(), kOffsets.data(), kN, kF, Reduce::Sum, sum.data());
  std::vector<int32_t> mx(kN * kF), mn(kN * kF);
  scree::ops::segment_reduce(in.data(), kOffsets.data(), kN, kF, Reduce::Max, mx.data());
  scree::ops::segment_reduce(in.data(), kOffsets.data(), kN, kF, Reduce::Min, mn.data());
  std::vector<int64_t> prod(kN * kF);
  scree::ops::segment_reduce(in.data(), kOffsets.data(), kN, kF, Reduce::Prod, prod.data());
  for (int64_t i = 0; i < kN; ++i)
    for (int64_t f = 0; f < kF; ++f) {
      int64_t s = 0, p = 1;
      int32_t m = std::numeric_limits<int32_t>::lowest(), lo = std::numeric_limits<int32_t>::max();
      for (int64_t r = kOffsets[i]; r < kOffsets[i + 1]; ++r) {
        s += in[r * kF + f];
        p *= in[r * kF + f];
        m = std::max(m, in[r * kF + f]);
        lo = std::min(lo, in[r * kF + f]);
      }
      EXPECT_EQ(sum[i * kF + f], s);
      EXPECT_EQ(prod[i * kF + f], p);
      EXPECT_EQ(mx[i * kF + f], m);
      EXPECT_EQ(mn[i * kF + f], lo);
    }
}

TEST(Float16, ConversionRoundTrips) {
  for (float x : {0.f, -0.f, 1.f, -2.5f, 65504.f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f})
    EXPECT_EQ(scree::to_float(scree::to_float16(x)), x) << x;
  EXPECT_TRUE(std::isinf(scree::to_float(scree::to_float16(1e6f))));
  EXPECT_TRUE(std::isnan(scree::to_float(scree::to_float16(NAN))));
  EXPECT_EQ(scree::to_float(scree::to_bfloat16(1.5f)), 1.5f);
}

// Signed overflow of the int64 accumulator was undefined behaviour (UBSan); sums wrap modulo
// 2^64 now, as NumPy's and torch's int64 sums do.
TEST(SegmentReduce, Int64SumWrapsLikeNumPy) {
  const int64_t big = std::numeric_limits<int64_t>::max(), low = std::numeric_limits<int64_t>::min();
  const std::vector<int64_t> in{big, 1, low, -1}, off{0, 2, 4};
  std::vector<int64_t> out(2);
  scree::ops::segment_reduce(in.data(), off.data(), 2, 1, Reduce::Sum, out.data());
  EXPECT_EQ(out, (std::vector<int64_t>{low, big}));
  const std::vector<int32_t> in32{std::numeric_limits<int32_t>::max(), 1};
  const std::vector<int64_t> off1{0, 2};
  scree::ops::segment_reduce(in32.data(), off1.data(), 1, 1, Reduce::Sum, out.data());
  EXPECT_EQ(out[0], int64_t(std::numeric_limits<int32_t>::max()) + 1);  // widened, no wrap
}

// Mean of integers wrote nothing (the output kept its old bytes) and an int32 sum into int32
// truncated silently: both pairs are outside the header's contract and throw now.
TEST(SegmentReduce, RejectsIntegerMeanAndNarrowSum) {
  const std::vector<int32_t> in{1, 2, 3};
  const std::vector<int64_t> off{0, 3};
  std::vector<int32_t> out{-7};
  for (Reduce op : {Reduce::Mean, Reduce::Sum, Reduce::Prod}) {
    try {
      scree::ops::segment_reduce(in.data(), off.data(), 1, 1, op, out.data());
      FAIL() << "op " << int(op) << " of int32 into int32 accepted";
    } catch (const scree::Error& e) {
      EXPECT_EQ(e.kind(), scree::ErrorKind::DTypeMismatch);
    }
  }
  std::vector<int64_t> out64{-7};
  EXPECT_THROW(scree::ops::segment_reduce(in.data(), off.data(), 1, 1, Reduce::Mean, out64.data()), scree::Error);
  EXPECT_EQ(out[0], -7);
}

// Without features a sequence of 2^62 rows holds no bytes; the kernel walked its rows one by one
// (fuzz_reduce timed out). The output is empty, so it returns at once.
TEST(SegmentReduce, NoFeaturesDoesNotWalkRows) {
  const std::vector<int64_t> off{0, int64_t(1) << 62, std::numeric_limits<int64_t>::max()};
  for (Reduce op : {Reduce::Sum, Reduce::Mean, Reduce::Max})
    scree::ops::segment_reduce(static_cast<const float*>(nullptr), off.data(), 2, 0, op, static_cast<float*>(nullptr));
  scree::ops::segment_reduce(static_cast<const int32_t*>(nullptr), off.data(), 2, 0, Reduce::Sum,
                             static_cast<int64_t*>(nullptr));
}

}  // namespace

namespace {

// Running sums restart at each sequence (lengths 3, 0, 1, 6); integers widen to int64 and wrap.
TEST(SegmentCumsum, RestartsPerSequence) {
  std::vector<double> v(10 * kF);
  for (size_t i = 0; i < v.size(); ++i) v[i] = double(i % 11) - 4.5;
  std::vector<double> out(v.size());
  scree::ops::segment_cumsum(v.data(), kOffsets.data(), kN, kF, out.data());
  for (int64_t i = 0; i < kN; ++i)
    for (int64_t f = 0; f < kF; ++f) {
      double acc = 0;
      for (int64_t r = kOffsets[i]; r < kOffsets[i + 1]; ++r) {
        acc += v[r * kF + f];
        EXPECT_EQ(out[r * kF + f], acc);
      }
    }
  const std::vector<int32_t> in32{std::numeric_limits<int32_t>::max(), 1, 5};
  const std::vector<int64_t> off{0, 2, 3};
  std::vector<int64_t> out64(3);
  scree::ops::segment_cumsum(in32.data(), off.data(), 2, 1, out64.data());
  EXPECT_EQ(out64, (std::vector<int64_t>{std::numeric_limits<int32_t>::max(), int64_t(1) << 31, 5}));
}

}  // namespace

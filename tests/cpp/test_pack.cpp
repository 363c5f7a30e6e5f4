// Layout kernels against straightforward loops: pack, pad (left/right, zero and non-zero pad
// value), unpad, mask-driven unpad, gather, positions and segment ids; sizes above the
// threading threshold so the multi-threaded split is exercised too. The last tests are the
// inputs tests/cpp/fuzz_pack.cpp found crashing or wrong (run under SCREE_SANITIZE to see UB).
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "scree/error.h"
#include "scree/ops/pack.h"
#include "scree/ops/segments.h"

namespace {

struct Batch {
  std::vector<int64_t> offsets;
  std::vector<float> values;  // (total, F)
  int64_t features;
  int64_t max_len = 0;
};

Batch make_batch(const std::vector<int64_t>& lengths, int64_t features, uint32_t seed) {
  Batch b;
  b.features = features;
  b.offsets.assign(1, 0);
  for (int64_t len : lengths) {
    b.offsets.push_back(b.offsets.back() + len);
    b.max_len = std::max(b.max_len, len);
  }
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(0.5f, 1.5f);  // never zero: a missed copy shows
  b.values.resize(static_cast<size_t>(b.offsets.back() * features));
  for (auto& v : b.values) v = dist(gen);
  return b;
}

std::vector<std::vector<int64_t>> length_cases() {
  std::vector<int64_t> big;
  std::mt19937 gen(7);
  for (int i = 0; i < 300; ++i) big.push_back(static_cast<int64_t>(gen() % 2000));  // > 1 MiB: threads
  return {{}, {0}, {1}, {4, 2, 7}, {0, 3, 0, 1}, {5, 5, 5}, big};
}

TEST(Pad, RoundTripBothSides) {
  for (const auto& lengths : length_cases()) {
    for (bool left : {false, true}) {
      Batch b = make_batch(lengths, 16, 1);
      const int64_t n = static_cast<int64_t>(lengths.size()), L = b.max_len + 2, F = b.features;
      std::vector<float> padded(static_cast<size_t>(n * L * F), -1.f);
      std::vector<uint8_t> mask(static_cast<size_t>(n * L), 7);
      const float pad_value = 3.25f;
      scree::ops::pad(b.values.data(), b.offsets.data(), n, L, F * 4, &pad_value, 4, left, padded.data(), mask.data());
      for (int64_t i = 0; i < n; ++i) {
        const int64_t len = b.offsets[i + 1] - b.offsets[i], lead = left ? L - len : 0;
        for (int64_t j = 0; j < L; ++j) {
          const bool tok = j >= lead && j < lead + len;
          ASSERT_EQ(mask[i * L + j], tok ? 1 : 0);
          for (int64_t f = 0; f < F; ++f) {
            const float expect = tok ? b.values[(b.offsets[i] + j - lead) * F + f] : pad_value;
            ASSERT_EQ(padded[(i * L + j) * F + f], expect) << "seq " << i << " slot " << j;
          }
        }
      }
      std::vector<float> back(b.values.size(), 0.f);
      scree::ops::unpad(padded.data(), b.offsets.data(), n, L, F * 4, left, back.data());
      EXPECT_EQ(back, b.values);

      std::vector<int64_t> from_mask(static_cast<size_t>(n + 1));
      scree::ops::mask_offsets(mask.data(), n, L, from_mask.data());
      EXPECT_EQ(from_mask, b.offsets);
      std::vector<float> back_mask(b.values.size(), 0.f);
      scree::ops::unpad_mask(padded.data(), mask.data(), from_mask.data(), n, L, F * 4, back_mask.data());
      EXPECT_EQ(back_mask, b.values);
    }
  }
}

TEST(Pad, ZeroPadValueUsesZeroBytes) {
  Batch b = make_batch({2, 0, 1}, 3, 2);
  std::vector<float> padded(3 * 2 * 3, 9.f);
  const float zero = 0.f;
  scree::ops::pad(b.values.data(), b.offsets.data(), 3, 2, 12, &zero, 4, false, padded.data(), nullptr);
  for (int f = 0; f < 6; ++f) EXPECT_EQ(padded[6 + f], 0.f);  // sequence 1 is all padding
}

TEST(Pack, ConcatenatesSources) {
  for (const auto& lengths : length_cases()) {
    Batch b = make_batch(lengths, 8, 3);
    const int64_t n = static_cast<int64_t>(lengths.size());
    std::vector<const void*> sources;
    for (int64_t i = 0; i < n; ++i) sources.push_back(b.values.data() + b.offsets[i] * 8);
    std::vector<float> out(b.values.size(), 0.f);
    scree::ops::pack(sources.data(), b.offsets.data(), n, 32, out.data());
    EXPECT_EQ(out, b.values);
  }
}

TEST(Gather, SelectsAndRepeats) {
  Batch b = make_batch({3, 0, 2, 4}, 2, 4);
  std::vector<int64_t> idx{3, 0, 3, 1};
  std::vector<int64_t> out_off(5);
  scree::ops::gather_offsets(b.offsets.data(), 4, idx.data(), 4, out_off.data());
  EXPECT_EQ(out_off, (std::vector<int64_t>{0, 4, 7, 11, 11}));
  std::vector<float> out(11 * 2);
  scree::ops::gather(b.values.data(), b.offsets.data(), idx.data(), 4, out_off.data(), 8, out.data());
  std::vector<float> expect;
  for (int64_t k : idx)
    expect.insert(expect.end(), b.values.begin() + b.offsets[k] * 2, b.values.begin() + b.offsets[k + 1] * 2);
  EXPECT_EQ(out, expect);
}

TEST(Gather, RejectsOutOfRangeIndex) {
  std::vector<int64_t> off{0, 2, 3}, idx{0, 2}, out(3);
  EXPECT_THROW(scree::ops::gather_offsets(off.data(), 2, idx.data(), 2, out.data()), scree::Error);
}

TEST(Segments, PositionsAndIds) {
  for (const auto& lengths : length_cases()) {
    Batch b = make_batch(lengths, 1, 5);
    const int64_t n = static_cast<int64_t>(lengths.size()), total = b.offsets.back();
    std::vector<int32_t> pos(static_cast<size_t>(total));
    std::vector<int64_t> seg(static_cast<size_t>(total));
    scree::ops::positions(b.offsets.data(), n, pos.data());
    scree::ops::segment_ids(b.offsets.data(), n, seg.data());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t t = b.offsets[i]; t < b.offsets[i + 1]; ++t) {
        ASSERT_EQ(pos[t], t - b.offsets[i]);
        ASSERT_EQ(seg[t], i);
      }
  }
}

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// A padded length shorter than a sequence made `lead` negative: pad and unpad copied outside
// the padded buffer (SEGV in memcpy). Both throw now, before writing anything.
TEST(Pad, RejectsSequenceLongerThanPaddedLength) {
  Batch b = make_batch({2, 3}, 2, 6);
  std::vector<float> padded(2 * 2 * 2, -1.f), back(b.values.size(), -1.f);
  std::vector<uint8_t> mask(2 * 2, 7);
  const float zero = 0.f;
  for (bool left : {false, true}) {
    for (int64_t max_len : {int64_t(2), int64_t(-1)}) {
      try {
        scree::ops::pad(b.values.data(), b.offsets.data(), 2, max_len, 8, &zero, 4, left, padded.data(), mask.data());
        FAIL() << "pad accepted max_len " << max_len;
      } catch (const scree::Error& e) {
        EXPECT_EQ(e.kind(), scree::ErrorKind::ShapeMismatch);
      }
      EXPECT_THROW(scree::ops::unpad(padded.data(), b.offsets.data(), 2, max_len, 8, left, back.data()), scree::Error);
    }
  }
  EXPECT_EQ(padded, std::vector<float>(8, -1.f));
  EXPECT_EQ(mask, std::vector<uint8_t>(4, 7));
  EXPECT_EQ(back, std::vector<float>(b.values.size(), -1.f));
}

// A pad value whose size does not divide the row (or is 0) wrote past the padding row / spun.
TEST(Pad, RejectsRowNotAMultipleOfTheElement) {
  Batch b = make_batch({1}, 3, 7);
  std::vector<float> padded(3 * 2, -1.f);
  const double pad_value = 1.0;
  EXPECT_THROW(scree::ops::pad(b.values.data(), b.offsets.data(), 1, 2, 12, &pad_value, 8, false, padded.data(),
                               nullptr),
               scree::Error);
  EXPECT_THROW(scree::ops::pad(b.values.data(), b.offsets.data(), 1, 2, 12, &pad_value, 0, false, padded.data(),
                               nullptr),
               scree::Error);
}

// Rows of zero bytes (feature dim 0) hold no memory, so lengths reach INT64_MAX: the byte counts
// 2 * offsets[n] * row_bytes and n * max_len * row_bytes overflowed (UBSan), and empty buffers
// (null pointers) reached memcpy / memset. Nothing is copied and nothing fails now.
TEST(ZeroByteRows, HugeLengthsAndNullBuffers) {
  const std::vector<int64_t> off{0, int64_t(1) << 62, kMax - 1};
  const std::vector<const void*> sources{nullptr, nullptr};
  scree::ops::pack(sources.data(), off.data(), 2, 0, nullptr);
  const float zero = 0.f;
  for (bool left : {false, true}) {
    scree::ops::pad(nullptr, off.data(), 2, kMax, 0, &zero, 4, left, nullptr, nullptr);
    scree::ops::unpad(nullptr, off.data(), 2, kMax, 0, left, nullptr);
  }
  const std::vector<int64_t> idx{1, 0};
  std::vector<int64_t> out_off(3);
  scree::ops::gather_offsets(off.data(), 2, idx.data(), 2, out_off.data());
  EXPECT_EQ(out_off, (std::vector<int64_t>{0, kMax - 1 - (int64_t(1) << 62), kMax - 1}));
  scree::ops::gather(nullptr, off.data(), idx.data(), 2, out_off.data(), 0, nullptr);

  // A mask is still written when rows have no bytes; the padded values are empty (null).
  const std::vector<int64_t> small{0, 1, 3};
  std::vector<uint8_t> mask(2 * 3, 7);
  scree::ops::pad(nullptr, small.data(), 2, 3, 0, &zero, 4, true, nullptr, mask.data());
  EXPECT_EQ(mask, (std::vector<uint8_t>{0, 0, 1, 0, 1, 1}));
  std::vector<int64_t> from_mask(3);
  scree::ops::mask_offsets(mask.data(), 2, 3, from_mask.data());
  EXPECT_EQ(from_mask, small);
  scree::ops::unpad_mask(nullptr, mask.data(), from_mask.data(), 2, 3, 0, nullptr);
}

// Gathering a long sequence twice summed past INT64_MAX: undefined behaviour that wrapped into
// small, wrong out_offsets (fuzz_pack's oracle saw them differ). It is an error now.
TEST(Gather, RejectsTotalPastInt64Max) {
  const std::vector<int64_t> off{0, int64_t(1) << 62, kMax - 1}, idx{0, 1, 0};
  std::vector<int64_t> out(4);
  try {
    scree::ops::gather_offsets(off.data(), 2, idx.data(), 3, out.data());
    FAIL() << "overflowing gather accepted";
  } catch (const scree::Error& e) {
    EXPECT_EQ(e.kind(), scree::ErrorKind::InvalidArgument);
  }
}

}  // namespace

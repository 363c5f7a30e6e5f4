// RaggedLayout: valid offsets give the right counts; each invariant violation throws
// scree::Error(InvalidOffsets) whose message names the first bad index.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "scree/error.h"
#include "scree/layout.h"

namespace {

template <class I>
std::string error_of(const std::vector<I>& off, int64_t total, int64_t stride = 1) {
  try {
    scree::RaggedLayout::from_offsets(off.data(), static_cast<int64_t>(off.size()) / stride, stride, total);
  } catch (const scree::Error& e) {
    EXPECT_EQ(e.kind(), scree::ErrorKind::InvalidOffsets);
    return e.what();
  }
  return "";
}

TEST(RaggedLayout, ValidOffsets) {
  std::vector<int64_t> off{0, 4, 6, 13};
  auto l = scree::RaggedLayout::from_offsets(off.data(), 4, 1, 13);
  EXPECT_EQ(l.num_sequences, 3);
  EXPECT_EQ(l.total, 13);
  EXPECT_EQ(l.max_length, 7);
}

TEST(RaggedLayout, Int32AndZeroLengths) {
  std::vector<int32_t> off{0, 0, 3, 3, 3};
  auto l = scree::RaggedLayout::from_offsets(off.data(), 5, 1, 3);
  EXPECT_EQ(l.num_sequences, 4);
  EXPECT_EQ(l.max_length, 3);
}

TEST(RaggedLayout, EmptyBatch) {
  std::vector<int64_t> off{0};
  auto l = scree::RaggedLayout::from_offsets(off.data(), 1, 1, 0);
  EXPECT_EQ(l.num_sequences, 0);
  EXPECT_EQ(l.max_length, 0);
}

TEST(RaggedLayout, Strided) {
  std::vector<int64_t> off{0, -1, 2, -1, 5, -1};  // every other element is junk
  auto l = scree::RaggedLayout::from_offsets(off.data(), 3, 2, 5);
  EXPECT_EQ(l.num_sequences, 2);
  EXPECT_EQ(l.max_length, 3);
}

TEST(RaggedLayout, RejectsNonZeroStart) {
  EXPECT_NE(error_of<int64_t>({1, 4, 6}, 6).find("offsets[0] must be 0, got 1"), std::string::npos);
}

TEST(RaggedLayout, RejectsDecreasingAndNamesIndex) {
  const std::string msg = error_of<int32_t>({0, 4, 3, 7}, 7);
  EXPECT_NE(msg.find("offsets[2] = 3 < offsets[1] = 4"), std::string::npos) << msg;
}

TEST(RaggedLayout, RejectsWrongTotal) {
  EXPECT_NE(error_of<int64_t>({0, 4, 6}, 7).find("must equal total = 7"), std::string::npos);
  EXPECT_NE(error_of<int64_t>({0, 4, 8}, 7).find("= 8"), std::string::npos);
}

TEST(RaggedLayout, RejectsEmptyOffsets) {
  EXPECT_NE(error_of<int64_t>({}, 0).find("at least one element"), std::string::npos);
}

TEST(OffsetsFromLengths, BuildsPrefixSum) {
  std::vector<int32_t> lengths{3, 0, 5};
  std::vector<int64_t> off(4);
  auto l = scree::offsets_from_lengths(lengths.data(), 3, 1, off.data());
  EXPECT_EQ(off, (std::vector<int64_t>{0, 3, 3, 8}));
  EXPECT_EQ(l.max_length, 5);
  EXPECT_EQ(l.total, 8);
}

TEST(OffsetsFromLengths, RejectsNegativeAndNamesIndex) {
  std::vector<int64_t> lengths{3, 2, -1};
  std::vector<int64_t> off(4);
  try {
    scree::offsets_from_lengths(lengths.data(), 3, 1, off.data());
    FAIL() << "negative length accepted";
  } catch (const scree::Error& e) {
    EXPECT_EQ(e.kind(), scree::ErrorKind::InvalidOffsets);
    EXPECT_NE(std::string(e.what()).find("lengths[2] = -1"), std::string::npos);
  }
}

// tests/cpp/fuzz_layout.cpp: n < 0 read offsets[n], before the output (ASan heap-buffer-overflow).
TEST(OffsetsFromLengths, RejectsNegativeCount) {
  std::vector<int32_t> lengths{1};
  std::vector<int64_t> off{-5, -5};
  try {
    scree::offsets_from_lengths(lengths.data(), -1, 1, off.data() + 1);
    FAIL() << "n = -1 accepted";
  } catch (const scree::Error& e) {
    EXPECT_EQ(e.kind(), scree::ErrorKind::InvalidArgument);
  }
  EXPECT_EQ(off, (std::vector<int64_t>{-5, -5}));
}

}  // namespace

// PagedLayout: valid page tables give the longest sequence and its page count; each violation
// (negative length, a length past its row, a page id outside the cache) throws scree::Error
// naming the sequence; padding entries past a sequence's pages are never read.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "scree/error.h"
#include "scree/paged.h"

namespace {

struct Tables {
  std::vector<int64_t> table;  // n x width, row-major
  std::vector<int32_t> lens;
  int64_t width;
};

std::string error_of(const Tables& t, int64_t num_pages, int64_t page_size,
                     scree::ErrorKind kind = scree::ErrorKind::InvalidOffsets) {
  const int64_t n = static_cast<int64_t>(t.lens.size());
  try {
    scree::PagedLayout::from_tables(t.table.data(), n, t.width, t.width, 1, t.lens.data(), 1, num_pages, page_size);
  } catch (const scree::Error& e) {
    EXPECT_EQ(e.kind(), kind);
    return e.what();
  }
  return "";
}

TEST(PagedLayout, ValidTablesAndPaddingIgnored) {
  // page size 16: 20 tokens use 2 pages, 16 tokens exactly 1 (ends on a page boundary), 0 none;
  // the -1 and 99 entries are padding past each sequence's pages.
  Tables t{{3, 1, -1, 0, 99, 99, 99, -1, -1}, {20, 16, 0}, 3};
  auto l = scree::PagedLayout::from_tables(t.table.data(), 3, 3, 3, 1, t.lens.data(), 1, 4, 16);
  EXPECT_EQ(l.num_sequences, 3);
  EXPECT_EQ(l.max_kv_len, 20);
  EXPECT_EQ(l.max_pages, 2);
}

TEST(PagedLayout, PageSizeOneIsTokenSlots) {
  Tables t{{5, 0, 2}, {3}, 3};  // SGLang's req_to_token: one slot per token
  auto l = scree::PagedLayout::from_tables(t.table.data(), 1, 3, 3, 1, t.lens.data(), 1, 6, 1);
  EXPECT_EQ(l.max_kv_len, 3);
  EXPECT_EQ(l.max_pages, 3);
}

TEST(PagedLayout, ViolationsNameTheSequence) {
  EXPECT_NE(error_of({{0, 1, 2, 3}, {16, -1}, 2}, 4, 16).find("kv_lens[1] = -1"), std::string::npos);
  EXPECT_NE(error_of({{0, 1, 2, 3}, {16, 33}, 2}, 4, 16).find("sequence 1 holds 33 tokens, 3 pages"),
            std::string::npos);
  EXPECT_NE(error_of({{0, 1, 2, 4}, {16, 17}, 2}, 4, 16).find("sequence 1: page 1 is page id 4"), std::string::npos);
  EXPECT_NE(error_of({{-2, 1}, {1}, 2}, 4, 16).find("sequence 0: page 0 is page id -2"), std::string::npos);
  EXPECT_NE(error_of({{0}, {1}, 1}, 4, 0, scree::ErrorKind::InvalidArgument).find("page_size"), std::string::npos);
}

TEST(PagedLayout, HugeLengthDoesNotOverflow) {
  Tables t{{0}, {0}, 1};
  std::vector<int64_t> lens{INT64_MAX};
  try {
    scree::PagedLayout::from_tables(t.table.data(), 1, 1, 1, 1, lens.data(), 1, 1, 16);
    FAIL() << "expected an error";
  } catch (const scree::Error& e) {
    EXPECT_NE(std::string(e.what()).find("page-table row has 1 entries"), std::string::npos);
  }
}

}  // namespace

// PagedLayout::from_tables (include/scree/paged.h): one pass over the pages each sequence uses.
#include "scree/paged.h"

#include <string>

#include "scree/error.h"

namespace scree {

template <class Index, class Length>
PagedLayout PagedLayout::from_tables(const Index* page_table, int64_t n, int64_t width, int64_t row_stride,
                                     int64_t col_stride, const Length* kv_lens, int64_t len_stride,
                                     int64_t num_pages, int64_t page_size) {
  require(page_size >= 1, ErrorKind::InvalidArgument,
          [&] { return "page_size must be >= 1, got " + std::to_string(page_size); });
  require(num_pages >= 0, ErrorKind::InvalidArgument,
          [&] { return "num_pages must be >= 0, got " + std::to_string(num_pages); });
  require(n >= 0 && width >= 0, ErrorKind::InvalidArgument, [] { return std::string("negative table shape"); });
  PagedLayout out;
  out.num_sequences = n;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = static_cast<int64_t>(kv_lens[i * len_stride]);
    require(len >= 0, ErrorKind::InvalidOffsets,
            [&] { return "kv_lens[" + std::to_string(i) + "] = " + std::to_string(len) + " is negative"; });
    // (len / page_size rounded up, without len + page_size - 1 overflowing)
    const int64_t pages = len / page_size + (len % page_size != 0 ? 1 : 0);
    require(pages <= width, ErrorKind::InvalidOffsets, [&] {
      return "sequence " + std::to_string(i) + " holds " + std::to_string(len) + " tokens, " + std::to_string(pages) +
             " pages of " + std::to_string(page_size) + ", but its page-table row has " + std::to_string(width) +
             " entries";
    });
    const Index* row = page_table + i * row_stride;
    for (int64_t j = 0; j < pages; ++j) {
      const int64_t page = static_cast<int64_t>(row[j * col_stride]);
      require(page >= 0 && page < num_pages, ErrorKind::InvalidOffsets, [&] {
        return "sequence " + std::to_string(i) + ": page " + std::to_string(j) + " is page id " +
               std::to_string(page) + ", outside the cache's " + std::to_string(num_pages) + " pages";
      });
    }
    if (len > out.max_kv_len) out.max_kv_len = len;
    if (pages > out.max_pages) out.max_pages = pages;
  }
  return out;
}

template PagedLayout PagedLayout::from_tables<int32_t, int32_t>(const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                                                const int32_t*, int64_t, int64_t, int64_t);
template PagedLayout PagedLayout::from_tables<int32_t, int64_t>(const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                                                const int64_t*, int64_t, int64_t, int64_t);
template PagedLayout PagedLayout::from_tables<int64_t, int32_t>(const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                                                const int32_t*, int64_t, int64_t, int64_t);
template PagedLayout PagedLayout::from_tables<int64_t, int64_t>(const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                                                const int64_t*, int64_t, int64_t, int64_t);

}  // namespace scree

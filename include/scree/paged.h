// PagedLayout: the one check of a paged KV cache's bookkeeping. Sequence i's keys and values are
// its first kv_lens[i] tokens, stored page_size to a page in the pages page_table[i][0],
// page_table[i][1], ... of a cache of num_pages pages (vLLM's block table, FlashInfer's pages,
// SGLang's token slots with page_size 1). Entries past a sequence's last page are padding and are
// not read. Every entry point that takes a page table from outside goes through `from_tables`.
#pragma once

#include <cstdint>

namespace scree {

struct PagedLayout {
  int64_t num_sequences = 0;
  int64_t max_kv_len = 0;  // the longest sequence in the cache (tokens)
  int64_t max_pages = 0;   // pages that sequence uses

  // Checks kv_lens[i] >= 0, that row i of the (n x width) page table holds the
  // ceil(kv_lens[i] / page_size) pages sequence i uses, and that each of those is a page id in
  // [0, num_pages). Strides are in elements. Throws scree::Error naming the first bad sequence:
  // InvalidOffsets for lengths and page ids, InvalidArgument for page_size < 1 or num_pages < 0.
  template <class Index, class Length>
  static PagedLayout from_tables(const Index* page_table, int64_t n, int64_t width, int64_t row_stride,
                                 int64_t col_stride, const Length* kv_lens, int64_t len_stride, int64_t num_pages,
                                 int64_t page_size);
};

}  // namespace scree

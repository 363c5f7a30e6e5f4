// Paged decode on CUDA: one query per sequence over a paged KV cache (include/scree/paged.h for the
// tables), split along the keys and combined by lse (FlashDecoding's scheme). Pointers are device
// pointers; no CUDA header here (the stream is a void*, a cudaStream_t).
#pragma once

#include <cstddef>
#include <cstdint>

#include "scree/dtypes.h"

namespace scree::attention {

struct PagedDecodeParams {
  DType dtype = DType::BFloat16;  // of q, the pages and out (BFloat16 or Float16)
  int64_t num_sequences = 0, heads_q = 0, heads_k = 0, head_dim = 0;
  const void* q = nullptr;  // (n, Hq, D): sequence i's one query in row i
  int64_t q_row_stride = 0, q_head_stride = 0;
  // k and v pages, the same strides (elements): page, row within the page, head; D contiguous.
  const void* k_pages = nullptr;
  const void* v_pages = nullptr;
  int64_t page_stride = 0, page_row_stride = 0, page_head_stride = 0;
  int64_t page_size = 0, num_pages = 0;
  const int32_t* page_table = nullptr;  // row i (at i * table_stride): sequence i's pages in order
  int64_t table_stride = 0, table_width = 0;  // table_width pages a row
  const int32_t* kv_lens = nullptr;  // (n,)
  void* out = nullptr;  // (n, Hq, D)
  int64_t out_row_stride = 0, out_head_stride = 0;
  float* lse = nullptr;  // (Hq, n), optional
  double scale = 1.0, softcap = 0.0;
  int64_t window_left = -1;  // keys at most this far before the query; -1 unbounded
};

// Key splits per (sequence, kv head) for a cache whose longest sequence holds max_kv_len tokens:
// enough thread blocks to fill the device, at least 256 keys a split.
int paged_decode_splits(const PagedDecodeParams& p, int64_t max_kv_len);

// Workspace for `splits` (float32 partial outputs and their lse); 0 when splits == 1.
size_t paged_decode_workspace_bytes(const PagedDecodeParams& p, int splits);

// Throws scree::Error when the kernels cannot serve p (type, head dim, query heads not a multiple of kv
// heads, alignment).
void validate_paged_decode(const PagedDecodeParams& p);

// out and lse. Page ids and lengths are clamped into the cache (a bad table cannot read outside
// it; the tables are validated where they enter scree).
void paged_decode_cuda(const PagedDecodeParams& p, int splits, void* workspace, size_t workspace_bytes,
                       void* stream);

}  // namespace scree::attention

// VarlenParams: everything a varlen attention kernel needs, as raw pointers and element strides,
// shared by the CPU and GPU paths. Layout (DESIGN §3): q (Tq, Hq, D), k (Tk, Hk, D), v (Tk, Hk, Dv),
// out (Tq, Hq, Dv), lse (Hq, Tq) float32 (float64 for float64 inputs on the CPU: lse64 / lse_in64);
// sequences delimited by cu_seqlens_q / cu_seqlens_k.
#pragma once

#include <cstdint>

#include "scree/dtypes.h"

// The index helpers below run in CUDA kernels too (one definition of the masking rules for every
// path); plain C++ compilers see ordinary inline functions.
#if defined(__CUDACC__)
#define SCREE_HOST_DEVICE __host__ __device__
#else
#define SCREE_HOST_DEVICE
#endif

namespace scree::attention {

// Offsets of n sequences (n+1 entries), int32 (FlashAttention's cu_seqlens) or int64.
struct Offsets {
  const void* data = nullptr;
  bool is_int64 = false;
  SCREE_HOST_DEVICE int64_t operator[](int64_t i) const {
    return is_int64 ? static_cast<const int64_t*>(data)[i] : static_cast<const int32_t*>(data)[i];
  }
};

// Window bound meaning "no bound on this side".
inline constexpr int64_t kUnbounded = -1;

struct VarlenParams {
  // Element type of q, k, v, out and their gradients (Float32, Float16 or BFloat16; Float64 on CPU).
  DType dtype = DType::Float32;

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;  // (Hq, Tq), may be null when not requested (forward only)
  // float64 inputs (CPU only; the CUDA kernels take no float64): lse (Hq, Tq) in float64 instead of
  // `lse`, which cannot hold an fp64 lse (float32 rounds |lse| >= 2^24 to whole numbers and
  // overflows past 3.4e38). At most one of lse / lse64 is set.
  double* lse64 = nullptr;

  // Strides in elements: row (token) and head. The last dimension is contiguous.
  int64_t q_row_stride = 0, q_head_stride = 0;
  int64_t k_row_stride = 0, k_head_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0;
  int64_t out_row_stride = 0, out_head_stride = 0;

  Offsets cu_seqlens_q, cu_seqlens_k;
  int64_t num_sequences = 0;
  int64_t total_q = 0, total_k = 0;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;  // host-side maxima; kernels never compute them
  // Optional (null: unused), device memory: the exact longest query sequence as the Layout's device
  // check computed it (the largest step of cu_seqlens_q), for calls made before the host learns it,
  // when max_seqlen_q is only the token count. The Hopper forward sizes its tile order by the
  // smaller of the two (the token count as a bound made ~8x more tiles to skip on 32k mixed tokens).
  const int64_t* max_seqlen_q_device = nullptr;
  // Optional (null: unused), device memory, CUDA Hopper path only: a packed-tile schedule the caller
  // keeps between calls over the same offsets (one for the forward's query tiles, another for the
  // backward's key tiles), tile_schedule_bytes >= cuda_tile_schedule_bytes(rows, num_sequences),
  // 16-byte aligned. tile_schedule_ready: an earlier call that returned true wrote it for these
  // offsets, in this stream's order, so this call reads it instead of packing again (the pack
  // kernel took 19 us of a 0.2 ms forward over 1..64-token sequences on an H200).
  void* tile_schedule = nullptr;
  size_t tile_schedule_bytes = 0;
  bool tile_schedule_ready = false;
  // CUDA Hopper forward: the workspace's first 16 bytes (its tile counter) are zero in this
  // stream's order: zeroed by the caller once, or left so by an earlier forward on the same
  // workspace (the kernel puts its counter back to zero when its last CTA is done). The call then
  // launches no memset before the kernel.
  bool workspace_counter_zero = false;

  int64_t heads_q = 0, heads_k = 0;  // heads_q % heads_k == 0 (GQA / MQA)
  int64_t head_dim = 0, head_dim_v = 0;

  // Paged keys and values (the CPU forward; CUDA: paged_fwd_cuda on Hopper; not paged: k, v are rows in cu_seqlens_k order). With a
  // page table, k and v hold kv_rows rows in pages of page_size, and key/value t of sequence b is
  // row page_table[b * page_table_stride + t / page_size] * page_size + t % page_size, page ids
  // clamped into the rows; cu_seqlens_k then only gives each sequence's length (total_k its last
  // entry). The entry point checks the table (PagedLayout) like the offsets.
  // `paged` says so explicitly: an empty table's data pointer may be null (a (n, 0) table is legal
  // only while every sequence is empty, which the check enforces).
  bool paged = false;
  const void* page_table = nullptr;
  bool page_table_int64 = false;
  int64_t page_table_stride = 0, page_table_width = 0, page_size = 0, kv_rows = 0;
  // CUDA (paged_fwd_cuda): the pages keep their own strides, k_row_stride / v_row_stride being the
  // slot stride and this the page stride (elements; NHD and HND pages alike).
  int64_t kv_page_stride = 0;

  double scale = 1.0;         // applied to q.k before softcap (double: fp64 inputs keep fp64 accuracy)
  double softcap = 0.0;       // 0 = off, else s -> softcap * tanh(s / softcap)
  bool causal = false;        // bottom-right aligned when Lq != Lk
  int64_t window_left = kUnbounded, window_right = kUnbounded;
};

// Extra pointers of the backward pass (dout, out, lse in; dq, dk, dv out), same layouts.
struct VarlenBackwardParams : VarlenParams {
  const void* dout = nullptr;
  int64_t dout_row_stride = 0, dout_head_stride = 0;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t dq_row_stride = 0, dq_head_stride = 0;
  int64_t dk_row_stride = 0, dk_head_stride = 0;
  int64_t dv_row_stride = 0, dv_head_stride = 0;
  const float* lse_in = nullptr;  // forward's lse (Hq, Tq)
  // float64 inputs (CPU only): the forward's lse in float64 instead of lse_in (one of the two is
  // set). The float64 backward recomputes each row's softmax statistics itself (bwd.cpp), so either
  // gives the same, fp64-accurate gradients.
  const double* lse_in64 = nullptr;
};

// Whether any query sees less than all of its sequence's keys by the options (a causal mask or a
// window): the kernels then trim their blocks to the visible band.
SCREE_HOST_DEVICE inline bool banded(const VarlenParams& p) {
  return p.causal || p.window_left != kUnbounded || p.window_right != kUnbounded;
}

// Visible key range [lo, hi) of query row i in a sequence with lengths (Lq, Lk): bottom-right
// aligned, so query i lines up with key i + (Lk - Lq); causal is right = 0.
struct KeyRange {
  int64_t lo, hi;
};

SCREE_HOST_DEVICE inline KeyRange visible_keys(const VarlenParams& p, int64_t i, int64_t Lq, int64_t Lk) {
  const int64_t diag = i + (Lk - Lq);
  int64_t lo = 0, hi = Lk;
  int64_t right = p.window_right;
  if (p.causal && (right == kUnbounded || right > 0)) right = 0;
  if (right != kUnbounded && diag + right + 1 < hi) hi = diag + right + 1;
  if (p.window_left != kUnbounded && diag - p.window_left > lo) lo = diag - p.window_left;
  if (hi < lo) hi = lo;
  if (lo > Lk) lo = hi = Lk;
  if (hi < 0) lo = hi = 0;
  return {lo, hi};
}

// The inverse of visible_keys: the queries [lo, hi) that see at least one key of [j0, j1) (within
// [0, Lk)). For a key j inside the sequence, query i sees it iff j >= diag(i) - left and
// j < diag(i) + right + 1 (each bound only where that side is bounded), which the clamps of
// visible_keys do not change; both bounds grow with i, so the answer is one range. Backward
// kernels walk key tiles and need the query tiles that can see them.
struct QueryRange {
  int64_t lo, hi;
};

SCREE_HOST_DEVICE inline QueryRange visible_queries(const VarlenParams& p, int64_t j0, int64_t j1, int64_t Lq,
                                                    int64_t Lk) {
  if (j0 < 0) j0 = 0;
  if (j1 > Lk) j1 = Lk;
  if (j0 >= j1 || Lq <= 0) return {0, 0};
  const int64_t off = Lk - Lq;  // diag(i) = i + off
  int64_t right = p.window_right;
  if (p.causal && (right == kUnbounded || right > 0)) right = 0;
  int64_t lo = 0, hi = Lq;
  if (right != kUnbounded && j0 - off - right > lo) lo = j0 - off - right;             // i >= j - off - right
  if (p.window_left != kUnbounded && j1 - 1 - off + p.window_left + 1 < hi) hi = j1 - off + p.window_left;  // i <= j - off + left
  if (hi <= lo) return {0, 0};
  return {lo, hi};
}

// Window sides at least as long as any query-key distance of the call (< total_q + total_k, bottom-
// right alignment included) made kUnbounded, which they mean: visible_keys' position arithmetic
// (diag + right + 1, diag - left) overflows int64 for sides near INT64_MAX (window=(0, 2**63 - 1)
// returned zeros; a right side of INT64_MAX - 1 hid every key). Totals must be >= 0.
inline void make_windows_reachable(VarlenParams& p) {
  constexpr int64_t kMax = INT64_MAX;
  const int64_t reach = p.total_q > kMax - p.total_k ? kMax : p.total_q + p.total_k;
  if (p.window_left >= reach) p.window_left = kUnbounded;
  if (p.window_right >= reach) p.window_right = kUnbounded;
}

}  // namespace scree::attention

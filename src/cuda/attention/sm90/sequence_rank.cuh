// The longest-first order of the forward's head-grouped tiles (head_group_tiles.h; the default,
// SCREE_SM90_GROUPED_ORDER=input turns it off). Grouped calls (speculative-decoding verification,
// small prefill chunks) hold 2-4 tiles an SM; taken in input order, modelled on the host
// (benchmarks/diag/tile_order_makespan.py), that order keeps the card busy 1.28-1.58x the work's
// even spread against 1.05-1.13x longest-first, which these tiles allow cheaply: in a grouped call
// a sequence's tiles all cost about its key blocks (few queries, bottom-right causal or none).
// Measured (H100, kernel ms, L2 flushed, Hq 32, d128): verify G = 4 0.254 -> 0.233, G = 8 0.145 ->
// 0.134; chunk G = 4 0.228 -> 0.199, G = 8 0.196 -> 0.175 (FA-4 0.235 / 0.139 / 0.201 / 0.193).
// One block, in stream order before the forward (no host sync), counting-sorts the sequences by
// key blocks, most first (capped at kRankBuckets - 1; a sequence with no query last), writes rank
// -> sequence into the workspace after the tile counter, and zeroes the counter (the memset it
// replaces, as pack_tiles_kernel does). The order within a bucket follows the atomics: the
// forward's tiles are independent, so the output does not depend on it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../varlen_tile.cuh"

namespace scree::cuda_attention::sm90 {

constexpr int kRankThreads = 1024;
constexpr int kRankBuckets = 256;  // key blocks 0..254, and 255 for 255 or more (32k+ keys)

__device__ __forceinline__ int rank_bucket(const VarlenParams& p, int64_t b) {
  const SeqTile s = sequence(p, b);
  const int blocks = s.q_len == 0 ? 0 : (s.k_len + 127) / 128;
  return kRankBuckets - 1 - min(blocks, kRankBuckets - 1);  // bucket 0: the most key blocks
}

// (A template for its linkage, as pack_tiles_kernel: every forward instance file launches it.)
template <int kBuckets = kRankBuckets>
__global__ void __launch_bounds__(kRankThreads) rank_sequences_kernel(const VarlenParams p, int* rank,
                                                                      unsigned long long* tile_counter) {
  static_assert(kBuckets == kRankBuckets, "rank_bucket's buckets");
  __shared__ int at[kBuckets];
  if (threadIdx.x == 0) {
    *tile_counter = 0;
    reinterpret_cast<unsigned*>(tile_counter + 1)[0] = 0;  // the forward's CTA count
  }
  for (int i = int(threadIdx.x); i < kBuckets; i += kRankThreads) at[i] = 0;
  __syncthreads();
  for (int64_t b = threadIdx.x; b < p.num_sequences; b += kRankThreads) atomicAdd(&at[rank_bucket(p, b)], 1);
  __syncthreads();
  if (threadIdx.x == 0) {  // exclusive prefix sum over the 256 buckets
    int run = 0;
    for (int i = 0; i < kBuckets; ++i) {
      const int c = at[i];
      at[i] = run;
      run += c;
    }
  }
  __syncthreads();
  for (int64_t b = threadIdx.x; b < p.num_sequences; b += kRankThreads) rank[atomicAdd(&at[rank_bucket(p, b)], 1)] = int(b);
}

}  // namespace scree::cuda_attention::sm90

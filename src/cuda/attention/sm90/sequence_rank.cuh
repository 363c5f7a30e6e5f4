// Sequences ranked longest first on the device: for the forward's head-grouped tiles
// (head_group_tiles.h; the default, SCREE_SM90_GROUPED_ORDER=input turns it off) and the causal
// backward over long keys of varied lengths (launch_bwd_sm90.cuh). Grouped calls
// (speculative-decoding verification, small prefill chunks) hold 2-4 tiles an SM; taken in input
// order, modelled on the host (benchmarks/diag/tile_order_makespan.py), that order keeps the card
// busy 1.28-1.58x the work's even spread against 1.05-1.13x longest-first, which these tiles allow
// cheaply: in a grouped call a sequence's tiles all cost about its key blocks (few queries,
// bottom-right causal or none). Measured (H100, kernel ms, L2 flushed, Hq 32, d128): verify G = 4
// 0.254 -> 0.233, G = 8 0.145 -> 0.134; chunk G = 4 0.228 -> 0.199, G = 8 0.196 -> 0.175 (FA-4
// 0.235 / 0.139 / 0.201 / 0.193). One block, in stream order before the kernel (no host sync),
// counting-sorts the sequences by key blocks, most first (capped at kRankBuckets - 1; a sequence
// with no query last), and writes rank -> sequence into the workspace. The forward's ranks follow
// its tile counter, which this kernel zeroes (the memset it replaces, as pack_tiles_kernel does);
// the causal backward's over long keys (bwd_sm90.cuh, TileOrder::at_ranked_keys) sit in its packed
// part, and its preprocess zeroes its counter (tile_counter null here). The backward ranks only
// where key blocks vary (only_if_varied: the most at least twice the fewest of a sequence with any)
// and otherwise writes rank[0] = -1, which keeps its heads-outermost order: with equal lengths
// ranking gains no cheap tail, and its key-tile-fastest order ends on a pair's costliest tile
// (H100, causal bwd ms, heads vs ranked: eq2048 1.885-2.248 vs 2.085-2.355, eq8192 5.48-5.60 vs
// 5.45-5.65; mix 2.37-2.47 vs 2.30-2.38). The order within a bucket follows the atomics: the
// forward's tiles are independent, and the backward's dQ adds are unordered anyway outside
// deterministic mode, which never ranks.
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

// (A template for its linkage, as pack_tiles_kernel: every forward and backward instance file launches it.)
template <int kBuckets = kRankBuckets>
__global__ void __launch_bounds__(kRankThreads) rank_sequences_kernel(const VarlenParams p, int* rank,
                                                                      unsigned long long* tile_counter,
                                                                      bool only_if_varied) {
  static_assert(kBuckets == kRankBuckets, "rank_bucket's buckets");
  __shared__ int at[kBuckets];
  __shared__ bool varied;
  if (threadIdx.x == 0 && tile_counter != nullptr) {
    *tile_counter = 0;
    reinterpret_cast<unsigned*>(tile_counter + 1)[0] = 0;  // the forward's CTA count
  }
  for (int i = int(threadIdx.x); i < kBuckets; i += kRankThreads) at[i] = 0;
  __syncthreads();
  for (int64_t b = threadIdx.x; b < p.num_sequences; b += kRankThreads) atomicAdd(&at[rank_bucket(p, b)], 1);
  __syncthreads();
  if (threadIdx.x == 0) {  // exclusive prefix sum over the 256 buckets
    int run = 0, most = 0, fewest = 0;  // key blocks, over sequences with any
    for (int i = 0; i < kBuckets; ++i) {
      const int c = at[i];
      at[i] = run;
      run += c;
      const int blocks = kBuckets - 1 - i;
      if (c > 0 && blocks > 0) {
        if (most == 0) most = blocks;
        fewest = blocks;
      }
    }
    varied = !only_if_varied || most >= 2 * fewest;
    if (!varied && p.num_sequences > 0) rank[0] = -1;
  }
  __syncthreads();
  if (!varied) return;
  for (int64_t b = threadIdx.x; b < p.num_sequences; b += kRankThreads) rank[atomicAdd(&at[rank_bucket(p, b)], 1)] = int(b);
}

}  // namespace scree::cuda_attention::sm90

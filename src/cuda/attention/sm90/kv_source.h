// Where the Hopper forward's K/V tiles come from, and the choice for a paged cache (host side,
// shared by the entry's checks in api.cu and the launch): TMA boxes of whole pages where the page
// size is a multiple of the 128-key tile (4 boxes a block, as many as packed rows), cp.async from
// the producer warpgroup otherwise (any page size; a 16-token page would be 32 TMA boxes a block,
// which measured 1.5-1.6x the packed forward on an H200, benchmarks/NOTES.md).
// SCREE_SM90_PAGED_LOADER=tma|copy forces one (tests run both; the TMA path takes pages of 16, 32,
// 64, 128 and multiples of 128 tokens).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace scree::cuda_attention::sm90 {

enum class KvSource : int {
  kPacked = 0,     // packed rows (cu_seqlens_k), by TMA
  kPagesTma = 1,   // pages by TMA (paged_tma.cuh)
  kPagesCopy = 2,  // pages by cp.async (paged_copy.cuh)
};

inline KvSource paged_source(int64_t page_size) {
  if (const char* force = std::getenv("SCREE_SM90_PAGED_LOADER")) {
    if (std::strcmp(force, "tma") == 0) return KvSource::kPagesTma;
    if (std::strcmp(force, "copy") == 0) return KvSource::kPagesCopy;
  }
  return page_size % 128 == 0 ? KvSource::kPagesTma : KvSource::kPagesCopy;
}

}  // namespace scree::cuda_attention::sm90

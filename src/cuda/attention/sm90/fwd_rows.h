// The Hopper forward's query rows a tile (FwdTiles' M): 192 (three consumer warpgroups) at head dim
// 64 over per-sequence tiles of packed K/V, 128 everywhere else. At D = 64 a key block's two
// products take half D = 128's tensor-core time while its softmax takes as long, so two consumer
// warpgroups leave the tensor cores idle while both run their softmax; a third fills that gap
// (FA-3 and FA-4 run their D = 64 forward so). Measured on an H100 (benchmarks/NOTES.md, session
// 44; forward kernel, 32k tokens): mix d64 1.775 -> 1.497 ms, eq2048 -17%, eq8192 causal -12%, mix
// causal -12%, short (16..512) -7%, but short causal +4%: a causal tile's diagonal block is
// 192 x 192 where it was 128 x 128, and over short sequences most tiles hold the diagonal. So causal
// calls whose longest query sequence is at most kCausalRows192MinLen keep 128 rows (windows: not
// measured, left at 192). Packed and head-grouped tiles stay at 128 rows: their schedules
// (tile_packing.h, head_group_tiles.h) fill 128, and paged calls keep the producer's 56 registers.
// SCREE_SM90_FWD_ROWS=128 or 192 forces a choice where 192 is possible (tests compare the two);
// SCREE_SM90_FWD_TURNS=1 makes the 192-row tiles' three warpgroups take turns to issue their
// products (as FA-3's do): within +-3% of no turns on the same workloads, no direction, so off.
#pragma once

#include <cstdlib>
#include <cstring>

namespace scree::cuda_attention::sm90 {

constexpr long long kCausalRows192MinLen = 513;  // short (16..512) causal lost 4% at 192 rows

struct FwdRows {
  int rows = 128;
  bool turns = false;
};

// `per_sequence_packed_kv`: the call's tiles are per sequence and head (not packed, not
// head-grouped) over packed (not paged) K/V; `max_seqlen_q` the host's bound on the longest.
inline FwdRows fwd_rows(int head_dim, bool per_sequence_packed_kv, bool causal, long long max_seqlen_q) {
  FwdRows r;
  if (head_dim != 64 || !per_sequence_packed_kv) return r;
  const char* force = std::getenv("SCREE_SM90_FWD_ROWS");
  if (force != nullptr && (std::strcmp(force, "128") == 0 || std::strcmp(force, "192") == 0)) {
    r.rows = std::strcmp(force, "128") == 0 ? 128 : 192;
  } else {
    r.rows = causal && max_seqlen_q < kCausalRows192MinLen ? 128 : 192;
  }
  const char* turns = std::getenv("SCREE_SM90_FWD_TURNS");
  r.turns = r.rows == 192 && turns != nullptr && std::strcmp(turns, "1") == 0;
  return r;
}

}  // namespace scree::cuda_attention::sm90

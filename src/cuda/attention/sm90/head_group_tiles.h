// Head-grouped query tiles of the Hopper forward (GQA): one 128-row tile holds the G = Hq / Hk
// query heads of one KV head for 128 / G tokens of a sequence, row r being token m0 + r / G of
// head hk * G + r % G, so every row of the tile reads the same K/V blocks. Where a sequence has
// few queries and many keys (speculative-decoding verification, chunked prefill with small
// chunks: 1..16 new tokens against a long cache) a per-head tile fills only q_len of its 128 rows
// and the packed order cannot help (a sequence of more than kPackKeys keys is packed alone);
// grouped, the same keys serve G times the rows, so the call computes up to G times fewer key
// blocks. Where queries and keys are equally long the counts are equal (a tile of 128 / G tokens
// x G heads sees the key blocks of its tokens, G of them per 128 tokens of one head), so the
// dispatch leaves those calls to the other orders.
// SCREE_SM90_TILES=grouped forces it (any lengths, any G <= kMaxHeadGroup; the backward ignores
// the value); otherwise a call takes it when G >= 2, its longest query sequence (host bound) is at
// most kGroupAutoMaxQ and its longest key sequence (host bound) more than kPackKeys.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "scree/attention/params.h"

namespace scree::cuda_attention::sm90 {

constexpr int kGroupRows = 128;       // the forward's query tile (FwdTiles::kBlockM)
constexpr int kMaxHeadGroup = 128;    // a tile holds at least one token
constexpr int64_t kGroupAutoMaxQ = 64;  // a per-head tile would be at most half full

// The G of a grouped forward call, 1 where its tiles are per head. `force` is
// SCREE_SM90_TILES's value (null: unset); `long_keys` that sequence packing cannot pack the call.
inline int fwd_head_group(const attention::VarlenParams& p, const char* force, bool long_keys) {
  if (p.heads_k <= 0 || p.heads_q % p.heads_k != 0) return 1;
  const int64_t g = p.heads_q / p.heads_k;
  if (g < 2 || g > kMaxHeadGroup) return 1;
  if (force != nullptr && std::strcmp(force, "grouped") == 0) return int(g);
  if (force != nullptr && (std::strcmp(force, "packed") == 0 || std::strcmp(force, "sequence") == 0)) return 1;
  return p.max_seqlen_q <= kGroupAutoMaxQ && long_keys ? int(g) : 1;
}

// Grouped tiles run longest first (sequence_rank.cuh; its ranks need 4 bytes a sequence of the
// workspace): 8-13% faster than input order on verify and chunk calls (H100, thirty-eighth
// session). SCREE_SM90_GROUPED_ORDER=input keeps the input order (tests compare the two).
inline bool grouped_longest_first() {
  const char* order = std::getenv("SCREE_SM90_GROUPED_ORDER");
  return order == nullptr || std::strcmp(order, "input") != 0;
}

// Tokens of one grouped tile: 128 / G (rows past tokens x G stay unused where G does not divide 128).
SCREE_HOST_DEVICE inline int group_tokens(int group) { return kGroupRows / group; }

}  // namespace scree::cuda_attention::sm90

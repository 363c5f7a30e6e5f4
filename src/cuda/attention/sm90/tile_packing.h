// The packed-tile schedule of the Hopper forward and backward, host side (tile_packing.cuh has the
// device code): its place in a workspace, its size bound, and when a call takes it. The forward
// packs query rows (sequences sharing a 128-query tile), the backward key rows (sequences sharing
// a 128-key tile): the same greedy with the roles of queries and keys swapped.
// SCREE_SM90_TILES=packed|sequence forces either order in both (tests run both); otherwise the
// packed one serves calls whose longest query (forward) or key (backward) sequence, as the host
// bounds it, is at most kPackAutoMaxLen, unless the forward takes head-grouped tiles
// (head_group_tiles.h; SCREE_SM90_TILES=grouped forces them).
#pragma once

#include <vector_types.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "head_group_tiles.h"
#include "scree/attention/params.h"

namespace scree::cuda_attention::sm90 {

constexpr int kPackRows = 128;       // the forward's query tile (FwdTiles::kBlockM), the backward's key tile
constexpr int kPackKeys = 256;       // the other side's span: two key blocks (forward), 2-4 query blocks (backward)
constexpr int kPackWindow = 128;     // sequences packed alone, a thread each
constexpr int kPackThreads = 1024;   // one block
constexpr int kPackAutoMaxLen = 128; // longest query sequence (host bound) the packed order serves unforced

// The forward's workspace: the tile counter (8 bytes) and its count of finished CTAs (4; see
// reset_counter_when_last), then (packed tiles) the schedule.
constexpr size_t kFwdCounterBytes = 16;

// Where the schedule lives: in the forward's workspace after the tile counter, in the backward's
// as its own part (bwd_workspace.h). Rows: the packed side's tokens (total_q forward, total_k
// backward).
struct PackedTiles {
  int4* tiles;        // capacity entries
  int* count;         // tiles written
  int* window_tiles;  // per window: its tiles, then their exclusive prefix sum
  int64_t capacity, windows;

  // Tiles never exceed (sequences with a query) + (sequence tiles of longer ones, at most 2 per 128
  // rows of them): each packed tile holds a non-empty sequence.
  static int64_t capacity_for(int64_t rows, int64_t sequences) {
    const int64_t nonempty = sequences < rows ? sequences : rows;
    return nonempty + 2 * ((rows + kPackRows - 1) / kPackRows) + 1;
  }
  static int64_t windows_for(int64_t sequences) { return (sequences + kPackWindow - 1) / kPackWindow; }
  static size_t bytes(int64_t rows, int64_t sequences) {
    return size_t(16) * size_t(capacity_for(rows, sequences)) + size_t(16) +
           size_t(4) * size_t(windows_for(sequences) + 4);
  }
  // Carves the schedule out of `at` (16-byte aligned, bytes() long).
  static PackedTiles at(char* at, int64_t rows, int64_t sequences) {
    PackedTiles s;
    s.capacity = capacity_for(rows, sequences);
    s.windows = windows_for(sequences);
    s.tiles = reinterpret_cast<int4*>(at);
    s.count = reinterpret_cast<int*>(at + 16 * s.capacity);
    s.window_tiles = s.count + 4;
    return s;
  }
};

// The forward's G (head_group_tiles.h): its auto rule takes calls whose keys sequence packing leaves alone.
inline int fwd_head_group(const attention::VarlenParams& p) {
  return fwd_head_group(p, std::getenv("SCREE_SM90_TILES"), p.max_seqlen_k > kPackKeys);
}

// by_keys: the backward (its tiles are key tiles). A forward of head-grouped tiles takes no packed ones.
inline bool packed_tiles_chosen(const attention::VarlenParams& p, bool by_keys = false) {
  if (p.paged) return false;  // a packed tile's keys are one run of packed rows
  if (!by_keys && fwd_head_group(p) > 1) return false;
  if (const char* force = std::getenv("SCREE_SM90_TILES")) {
    if (std::strcmp(force, "packed") == 0) return true;
    if (std::strcmp(force, "sequence") == 0) return false;
  }
  return (by_keys ? p.max_seqlen_k : p.max_seqlen_q) <= kPackAutoMaxLen;
}

}  // namespace scree::cuda_attention::sm90

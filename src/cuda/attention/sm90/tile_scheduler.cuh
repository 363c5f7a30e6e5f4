// The persistent tile scheduler of the Hopper kernels: one CTA per SM; the producer thread takes
// the next tile of TileOrder from a global counter (dynamic, like the hardware's block scheduler,
// so a CTA that drew short tiles takes more) and publishes it to the consumers through shared
// memory (TileSlots). Measured on an H200 (NOTES.md): a static round-robin of the same order lost
// 35% on mixed lengths against the counter.
//
// TileOrder: tile t -> (head, tile index within the sequence, sequence), heads outermost (the
// tiles running at one time share one head's K/V: L2 reuse), sequences fastest. Longest first
// without reading lengths on the host: with `descending`, tile indices from the last down, so
// tiles that exist only in long sequences come first (the forward, where a causal mask also makes
// them the costliest; the non-causal backward, where every key tile of a sequence costs its query
// length); ascending for the causal backward, where key tile 0 sees every query and is the
// costliest of its sequence. Tiles past a sequence's end are skipped by the caller.
// `tiles_outermost` (the deterministic backward over sequences longer than 16 tiles): tile index,
// then head, then sequence, so the key tiles of one (sequence, head), whose dQ adds must follow
// each other, run a wave apart instead of side by side (side by side, each waited a global-memory
// round trip for its neighbour every step: 5x slower than the default order on mixed lengths,
// NOTES.md).
// `tiles_fastest` (the non-deterministic backward, unmasked or causal over <= 8 key tiles): tile
// index fastest, then head, then sequence, so the CTAs of one wave hold all key tiles of a few
// (sequence, head) pairs, whose Q, dO and dQ accumulator then stay in L2.
// `packed` (the forward over short sequences, tile_packing.cuh): tile t is entry t / heads of the
// device-computed schedule with head t % heads (the query heads of one tile side by side: a GQA
// group's K/V read once into L2), `sequences` the schedule's capacity until the kernel reads its
// count (bounded_by_device_count).
// `group` (the forward's head-grouped tiles, head_group_tiles.h): `heads` counts KV heads, and a
// tile of the sequence holds 128 / group tokens of the group's query heads. `rank` (their
// longest-first order, sequence_rank.cuh; at_ranked): rank outermost, read through rank[], then
// tile index, then head. The causal backward over more than 8 key tiles of varied lengths ranks
// its sequences too (at_ranked_keys): the key-tile-fastest order above, longest sequences first.
#pragma once

#include <cstdint>

namespace scree::cuda_attention::sm90 {

struct TileOrder {
  int64_t sequences, tiles, heads;  // tiles: per sequence, ceil(max length / tile)
  bool descending;
  bool tiles_outermost = false;
  bool tiles_fastest = false;
  const int4* packed = nullptr;
  const int* packed_count = nullptr;
  int group = 1;
  const int* rank = nullptr;
  __device__ __forceinline__ int64_t count() const { return sequences * tiles * heads; }
  __device__ __forceinline__ void at(int64_t t, int64_t& b, int& tile, int& h) const {
    int i;
    if (packed != nullptr) {
      b = t / heads;
      h = int(t % heads);
      tile = 0;
      return;
    }
    if (tiles_fastest) {
      i = int(t % tiles);
      const int64_t r = t / tiles;
      h = int(r % heads);
      b = r / heads;
    } else if (tiles_outermost) {
      const int64_t per_tile = sequences * heads;
      i = int(t / per_tile);
      const int64_t r = t % per_tile;
      h = int(r / sequences);
      b = r % sequences;
    } else {
      const int64_t per_head = sequences * tiles;
      h = int(t / per_head);
      const int64_t r = t % per_head;
      i = int(r / sequences);
      b = r % sequences;
    }
    tile = descending ? int(tiles - 1 - i) : i;
  }
  // The order through `rank` (only the grouped forward's kernels call it: the others keep at()'s code).
  __device__ __forceinline__ void at_ranked(int64_t t, int64_t& b, int& tile, int& h) const {
    const int64_t per_sequence = tiles * heads;
    const int64_t r = t / per_sequence, rem = t % per_sequence;
    const int i = int(rem / heads);
    h = int(rem % heads);
    b = rank[r];
    tile = descending ? int(tiles - 1 - i) : i;
  }
  // The backward's ranked order (only its producer calls it): rank outermost, then head,
  // then key tile fastest, so the CTAs of one wave hold all key tiles of a few (sequence, head)
  // pairs, longest sequences first.
  __device__ __forceinline__ void at_ranked_keys(int64_t t, int64_t& b, int& tile, int& h) const {
    const int i = int(t % tiles);
    const int64_t r = t / tiles;
    h = int(r % heads);
    b = rank[r / heads];
    tile = descending ? int(tiles - 1 - i) : i;
  }
};

// The order with its tiles per sequence cut to the exact longest sequence where the device knows it
// (VarlenParams::max_seqlen_q_device) and the host passed only a bound: every thread reads the same
// value, written by an earlier kernel in stream order, so producer and consumers agree on it.
// `tile`: queries a tile (128 / G for head-grouped tiles).
__device__ __forceinline__ TileOrder bounded_by_device_max(TileOrder order, const int64_t* device_max, int64_t tile) {
  if (device_max != nullptr) {
    const int64_t longest = *device_max;  // a negative value (bad offsets, raised on the host) -> 0
    const int64_t tiles = longest > 0 ? (longest + tile - 1) / tile : 0;
    order.tiles = tiles < order.tiles ? tiles : order.tiles;
  }
  return order;
}

// A packed order's entries cut to the schedule's count (written by pack_tiles_kernel before the launch).
__device__ __forceinline__ TileOrder bounded_by_device_count(TileOrder order) {
  if (order.packed != nullptr) {
    const int64_t n = *order.packed_count;
    order.sequences = n < order.sequences ? (n > 0 ? n : 0) : order.sequences;
  }
  return order;
}

// The counter: a CTA's first tile is its own index; later ones are gridDim.x + the counter's old
// value (the counter is zero before the launch).
struct TileCounter {
  unsigned long long* counter;
  __device__ __forceinline__ int64_t first() const { return blockIdx.x; }
  __device__ __forceinline__ int64_t next() const { return int64_t(gridDim.x) + int64_t(atomicAdd(counter, 1ull)); }
};

// The forward's counter puts itself back to zero: each CTA's scheduling thread, after its last
// next(), counts its CTA in `done` (the word after the counter), and the CTA counted last zeroes
// both. The next forward in the stream's order then finds them zero and needs no memset before
// it (VarlenParams::workspace_counter_zero): a memset node before each forward cost GPU time
// between the call's start and the kernel's, and host time for its launch.
__device__ __forceinline__ void reset_counter_when_last(unsigned long long* counter) {
  unsigned* done = reinterpret_cast<unsigned*>(counter + 1);
  __threadfence();  // this CTA's last atomicAdd on the counter is performed before it is counted
  if (atomicAdd(done, 1u) == gridDim.x - 1) {  // every other CTA fetched its last tile already
    __threadfence();
    atomicExch(counter, 0ull);
    atomicExch(done, 0u);
  }
}

// The producer's tile j reaches the consumers in slot j % 2 (the other slot may still be read by
// consumers finishing tile j - 1): its index (-1: no tile is left), or the tile decoded (the
// backward: the consumers then skip the order's 64-bit divisions and the offsets' global loads).
// Written before an mbarrier arrive (release) that the consumers wait on (acquire).
template <class Tile = int64_t>
struct TileSlots {
  Tile slot[2];
  __device__ __forceinline__ void publish(int j, const Tile& t) { slot[j & 1] = t; }
  __device__ __forceinline__ Tile read(int j) const { return slot[j & 1]; }
};

}  // namespace scree::cuda_attention::sm90

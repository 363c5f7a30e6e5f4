// The Hopper backward's dQ writer: one thread per consumer warpgroup (lane 0 of warps 1 and 2 of
// the producer warpgroup, idle otherwise) that takes a staged dQ tile out of shared memory and
// adds it to the fp32 accumulator in global memory (two TMA reduce-adds), so that neither the wait
// for the last add to have read the boxes nor, in deterministic mode, the wait for the adds that
// must come first sits in a consumer's step. The hand-over (DqHandover, per consumer warpgroup) is
// two mbarriers, whose arrive / wait are release / acquire, so the job record written by the
// warpgroup's thread 0 is seen by the writer (named barriers were reported as a race by racecheck):
//   consumers: wait `free`, store dQ (thread 0: the job), fence, arrive `staged` (128 arrivals);
//   writer:    wait `staged`, issue the adds, wait until they have read the boxes, arrive `free`.
// The first wait on `free` passes at once (parity 1 of a fresh barrier, as in pipeline.cuh). A job
// with h < 0 ends the writer. Deterministic mode: the writer waits until the adds that come before
// this one in the schedule's order (a per-block counter in global memory) are done, and releases
// its own as soon as it has completed, so the sums are the same bits on every run.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "../bwd_workspace.h"
#include "../varlen_tile.cuh"
#include "ptx.cuh"
#include "tma.cuh"

namespace scree::cuda_attention::sm90 {

using attention::QueryRange;
using attention::VarlenBackwardParams;
using attention::visible_queries;

// What a consumer warpgroup staged: its dQ tile of query head h, query block mb of sequence s,
// from key tile n_tile; `sole`: a packed key tile, the only one adding to these queries (its
// block's last rows may be the next tile's queries, to which it adds zeros: exact in any order).
// Written by the warpgroup's thread 0 before its `staged` arrive.
struct DqJob {
  SeqTile s;
  int h, mb, n_tile;
  bool sole;
};

struct DqHandover {
  uint64_t staged;  // 128 arrivals: the warpgroup has stored a dQ tile (and its job)
  uint64_t free;    // 1 arrival: the writer's adds have read the boxes
  DqJob job;
  // One thread, before the block's first barrier (with the kernel's other mbarriers).
  __device__ __forceinline__ void init() { mbar_init(&staged, 128), mbar_init(&free, 1); }
};

// The consumer side, around its stores of one dQ tile into the boxes; free_parity starts at 1.
__device__ __forceinline__ void dq_wait_free(DqHandover& ho, uint32_t& free_parity) {
  mbar_wait(&ho.free, free_parity);
  free_parity ^= 1;
}
__device__ __forceinline__ void dq_publish(DqHandover& ho) {
  fence_proxy_async_smem();  // the stores reach the TMA unit's (async) proxy
  mbar_arrive(&ho.staged);
}

// Whether key tile n of sequence s walks query block mb (the same range bwd_tile_at computes).
template <int kM, int kN>
__device__ __forceinline__ bool tile_sees_block(const VarlenBackwardParams& p, const SeqTile& s, int n, int mb) {
  const QueryRange qr = visible_queries(p, int64_t(n) * kN, int64_t(n) * kN + kN, s.q_len, s.k_len);
  return qr.hi > qr.lo && int(qr.lo) / kM <= mb && int((qr.hi + kM - 1) / kM) > mb;
}

// Deterministic mode: how many key tiles of this sequence add to query block mb before tile n in
// the schedule's order (the tiles that see a block form one range of n; binary search for its end
// on the schedule's side of n).
template <int kM, int kN>
__device__ __forceinline__ int dq_adds_before(const VarlenBackwardParams& p, const SeqTile& s, int n, int mb,
                                              bool descending) {
  const int last = (s.k_len + kN - 1) / kN - 1;
  if (descending) {  // tiles n+1 .. end of the range came first
    int lo = n, hi = last;  // the range's end is in [lo, hi]
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (tile_sees_block<kM, kN>(p, s, mid, mb)) lo = mid; else hi = mid - 1;
    }
    return lo - n;
  }
  int lo = 0, hi = n;  // tiles start of the range .. n-1 came first
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (tile_sees_block<kM, kN>(p, s, mid, mb)) hi = mid; else lo = mid + 1;
  }
  return n - lo;
}

__device__ __forceinline__ int load_acquire_gpu(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void add_release_gpu(int* p, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// The writer of one consumer warpgroup (one thread), until the job with h < 0. boxes: the
// warpgroup's two fp32 boxes of 32 columns (BwdTiles::kDqRows rows: 64 or 80); (row0, col0): the tile's query and head-dim
// offsets in a block.
template <int kM, int kN>
__device__ __forceinline__ void dq_writer(const VarlenBackwardParams& p, const BwdWorkspace& ws,
                                          const CUtensorMap* tm_dq, const char* box0, const char* box1,
                                          DqHandover& ho, int row0, int col0, bool deterministic, bool descending) {
  for (uint32_t parity = 0;; parity ^= 1) {
    mbar_wait(&ho.staged, parity);
    const DqJob j = ho.job;
    if (j.h < 0) break;
    const int m0 = j.mb * kM;
    int* sem = nullptr;
    if (deterministic) {
      sem = ws.dq_sem + int64_t(j.h) * p.total_q + j.s.q_start + m0;
      const int before = j.sole ? 0 : dq_adds_before<kM, kN>(p, j.s, j.n_tile, j.mb, descending);
      while (load_acquire_gpu(sem) < 2 * before) {  // two adds (warpgroups) per key tile
      }
      fence_proxy_async_global();
    }
    const int row = int(j.s.q_start) + m0 + row0;
    tma_reduce_add_3d(tm_dq, box0, col0, j.h, row);
    tma_reduce_add_3d(tm_dq, box1, col0 + 32, j.h, row);
    bulk_commit();
    bulk_wait_read<0>();
    mbar_arrive(&ho.free);
    if (sem != nullptr) {  // released once done (visible to this thread), off the consumers' path
      bulk_wait<0>();
      fence_proxy_async_global();
      add_release_gpu(sem, 1);
    }
  }
  bulk_wait<0>();  // shared memory stays valid until the last adds have read it
}

}  // namespace scree::cuda_attention::sm90

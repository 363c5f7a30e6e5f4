// The named barriers (bar.sync / bar.arrive ids) of the Hopper kernels, one enum so that no two
// roles of one kernel share an id (id 0 is __syncthreads'; 16 exist). sync waits until `threads`
// threads have arrived or synced on the id; arrive counts this thread without waiting.
#pragma once

namespace scree::cuda_attention::sm90 {

enum class NamedBarrier : int {
  // forward: consumer warpgroup 0 / 1 / 2 may issue its products (its turn; fwd_turn)
  kFwdTurn0 = 1,
  kFwdTurn1 = 2,
  kFwdTurn2 = 8,
  // backward: consumer warpgroup 0 / 1 has written its half of dS^T (the other's dQ may read it)
  kBwdDsWritten0 = 3,
  kBwdDsWritten1 = 4,
  // paged forward: consumer warpgroup 0 / 1 zeroed the V rows past a sequence's end (its own 128)
  kFwdPagedTail0 = 5,
  kFwdPagedTail1 = 6,
  // paged forward copying pages with cp.async: the producer warpgroup's next tile is published
  kFwdProducerTile = 7,
  // backward over packed key tiles: consumer warpgroup 0 / 1 staged the tile's sequence offsets
  kBwdPackedSeqs0 = 9,
  kBwdPackedSeqs1 = 10,
  // backward with 80-query blocks: consumer warpgroup 0 / 1's warps have read their dK / dV
  // staging rows (in its dS slab, whose query rows every warp's next dS stores cross)
  kBwdEpilogue0 = 13,
  kBwdEpilogue1 = 14,
};

__device__ __forceinline__ NamedBarrier operator+(NamedBarrier b, int i) { return NamedBarrier(int(b) + i); }

// The forward's turn barrier of consumer warpgroup cw (0..2).
__device__ __forceinline__ NamedBarrier fwd_turn(int cw) {
  return cw == 2 ? NamedBarrier::kFwdTurn2 : NamedBarrier::kFwdTurn0 + cw;
}

__device__ __forceinline__ void named_sync(NamedBarrier id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(int(id)), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(NamedBarrier id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(int(id)), "r"(threads) : "memory");
}

}  // namespace scree::cuda_attention::sm90

// A ring of shared-memory stages filled by TMA and drained by consumer threads, guarded by two
// mbarriers a stage: "full" (the producer's arrive with the stage's transaction bytes; complete
// when the bytes have landed) and "empty" (every consumer thread arrives once it is done reading).
// PipelineState walks the ring: the stage index and the parity of the phase to wait for. The
// producer starts at parity 1, which a freshly initialised barrier reports complete, so the first
// round of "empty" waits returns at once (no special case for the first kStages loads).
#pragma once

#include <cstdint>

#include "ptx.cuh"

namespace scree::cuda_attention::sm90 {

template <int kStages>
struct PipelineState {
  int index = 0;
  uint32_t phase = 0;
  __device__ __forceinline__ void advance() {
    if (++index == kStages) index = 0, phase ^= 1;
  }
};

template <int kStages>
struct MbarRing {
  uint64_t full[kStages];
  uint64_t empty[kStages];

  // One thread, before the block's first barrier; consumers: the threads that release a stage;
  // producers: the arrivals that fill one (1: a TMA arrive with its bytes; n: n cp.async threads).
  __device__ __forceinline__ void init(uint32_t consumers, uint32_t producers = 1) {
    for (int i = 0; i < kStages; ++i) mbar_init(&full[i], producers), mbar_init(&empty[i], consumers);
  }
  static __device__ __forceinline__ PipelineState<kStages> producer_start() { return {0, 1}; }

  // Producer: wait until the stage is free, then announce the bytes its loads will bring.
  __device__ __forceinline__ void acquire(const PipelineState<kStages>& s, uint32_t bytes) {
    mbar_wait(&empty[s.index], s.phase);
    mbar_arrive_expect_tx(&full[s.index], bytes);
  }
  __device__ __forceinline__ uint64_t* full_bar(const PipelineState<kStages>& s) { return &full[s.index]; }
  // A producer thread whose copies announce nothing (cp.async arrivals): wait until the stage is free.
  __device__ __forceinline__ void wait_empty(const PipelineState<kStages>& s) { mbar_wait(&empty[s.index], s.phase); }

  // Consumers: wait until the stage's loads have landed; release it when done reading.
  __device__ __forceinline__ void wait(const PipelineState<kStages>& s) { mbar_wait(&full[s.index], s.phase); }
  __device__ __forceinline__ void release(const PipelineState<kStages>& s) { mbar_arrive(&empty[s.index]); }
  __device__ __forceinline__ void release(int index) { mbar_arrive(&empty[index]); }
};

}  // namespace scree::cuda_attention::sm90

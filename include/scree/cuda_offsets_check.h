// The device side of a Layout's check of offsets that live on a CUDA GPU: one kernel reduces the
// offsets to four numbers [offsets[0], offsets[-1], smallest step, largest step] (steps
// offsets[i+1] - offsets[i]; [o0, o0, 0, 0] for a single offset) and writes them straight into
// pinned, mapped host memory, with one event recorded behind it. The host polls ready() (never
// blocks) and reads value() once the event has completed, so checking a new cu_seqlens costs one
// launch and one event record of host time and never synchronises the device.
//
// Compiled only with SCREE_WITH_CUDA (src/cuda/layout/offsets_summary.cu). Framework-free and free
// of CUDA headers: streams and events are opaque here, so bindings compiled by the host compiler
// can include it.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

namespace scree::cuda {

class OffsetsSummary {
 public:
  // Launches the reduction of `count` (n+1 >= 1) contiguous int32 (`int64` false) or int64 offsets
  // at device pointer `offsets` on `device`, on `stream` (a cudaStream_t; 0 is the legacy default
  // stream), and records an event behind it. The calling thread's current device is restored.
  // Throws scree::Error: InvalidOffsets for count < 1, Unsupported while `stream` is capturing a
  // CUDA graph (the kernel would only run at replay), DeviceFailure naming the CUDA call that failed.
  // `device_copy` (optional, 4 int64 of device memory on `device`) receives the same four numbers,
  // for kernels later on the stream (VarlenParams::max_seqlen_q_device).
  static std::unique_ptr<OffsetsSummary> start(const void* offsets, int64_t count, bool int64, int device,
                                               void* stream, int64_t* device_copy = nullptr);

  // Whether the four numbers have reached the host: cudaEventQuery, never blocks. Throws
  // scree::Error(DeviceFailure) for any error other than "not ready".
  bool ready();

  // The four numbers; waits for the event (cudaEventSynchronize) only when not ready() yet.
  std::array<int64_t, 4> value();

  // Hands the event and the host slot back for reuse, without waiting for the device (see the .cu).
  ~OffsetsSummary();

  OffsetsSummary(const OffsetsSummary&) = delete;
  OffsetsSummary& operator=(const OffsetsSummary&) = delete;

 private:
  OffsetsSummary() = default;

  void* event_ = nullptr;           // cudaEvent_t, of device_'s pool
  int64_t* slot_ = nullptr;         // 4 int64 in pinned, mapped host memory, written by the kernel
  int device_ = 0;
  std::atomic<bool> done_{false};  // the event was seen complete (value() may run with the GIL released)
};

}  // namespace scree::cuda

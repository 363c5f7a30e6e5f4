// The device check of offsets on a CUDA GPU (include/scree/cuda_offsets_check.h): one block reduces
// the steps of the offsets to their smallest and largest value and thread 0 writes
// [offsets[0], offsets[-1], min step, max step] into pinned, mapped host memory; an event recorded
// behind the kernel tells the host when the four numbers are there. This replaces four framework
// kernels, a pinned tensor, an async copy and a framework event (~100 us of host time on an H200
// host) with one launch and one event record.
//
// Host memory comes from a process-wide pool: slabs of pinned, mapped memory (cudaHostAlloc is slow,
// ~100s of us, so never one per check) cut into slots handed out from a free list under a mutex.
// Events (cudaEventDisableTiming, the cheapest kind) are pooled per device, since an event can only
// be recorded on a stream of the device it was created on.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "scree/cuda_device_guard.h"
#include "scree/cuda_offsets_check.h"
#include "scree/error.h"

namespace scree::cuda {
namespace {

constexpr int kThreads = 256;  // one block: cu_seqlens hold a few to a few thousand offsets
constexpr int kWarps = kThreads / 32;
// 4 int64 = 32 bytes, padded to a cache line so that the host's reads of one slot never share a line
// with the device's writes to the next (a line shared over PCIe/C2C would be moved back and forth).
constexpr size_t kSlotBytes = 64;
constexpr size_t kSlotsPerSlab = 256;    // 16 KiB per cudaHostAlloc
constexpr size_t kMaxPooledEvents = 64;  // per device; more checks in flight create and destroy events

void fail(cudaError_t e, const char* call) {
  cudaGetLastError();  // leave no non-sticky error behind for the framework's next check
  throw Error(ErrorKind::DeviceFailure,
              std::string(call) + " failed in the device check of offsets: " + cudaGetErrorString(e));
}

void check(cudaError_t e, const char* call) {
  if (e != cudaSuccess) fail(e, call);
}

// Relaxed stream-capture mode for this thread while querying or waiting on our events: in the
// default (global) mode CUDA refuses event queries while any stream of the process captures a graph,
// although events recorded outside the capture are unaffected by it (torch's caching allocator does
// the same for its events). Restores the thread's mode afterwards.
class RelaxedCapture {
 public:
  RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode_); }
  ~RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode_); }
  RelaxedCapture(const RelaxedCapture&) = delete;
  RelaxedCapture& operator=(const RelaxedCapture&) = delete;

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
};

// cudaEventQuery that leaves no "not ready" behind as the thread's last error (the runtime records
// it, and a framework's next error check would take it for a failure of its own).
cudaError_t query(void* event) {
  RelaxedCapture relaxed;
  const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (e == cudaErrorNotReady) cudaGetLastError();
  return e;
}

// A slot and an event whose check was dropped before its kernel finished.
struct Retired {
  int64_t* slot;
  void* event;
  int device;
};

class Pool {
 public:
  // Never destroyed: objects may outlive static destruction (Python tears modules down late, and the
  // CUDA runtime may be unloaded by then), so the slabs and events stay with the process.
  static Pool& get() {
    static Pool* pool = new Pool;
    return *pool;
  }

  int64_t* take_slot() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_slots_.empty()) sweep_locked();
    if (free_slots_.empty()) grow_locked();
    int64_t* s = free_slots_.back();
    free_slots_.pop_back();
    return s;
  }

  // An event of `device`, which must be the current device (the caller's DeviceGuard made it so).
  void* take_event(int device) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (static_cast<size_t>(device) < free_events_.size() && !free_events_[device].empty()) {
        void* e = free_events_[device].back();
        free_events_[device].pop_back();
        return e;
      }
    }
    cudaEvent_t e;
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    return e;
  }

  // Takes back what an OffsetsSummary held, never waiting for the device. A slot may return to the
  // free list only once its kernel has finished writing it: handing it to the next check earlier
  // would let the old kernel's late write land in the new check's result. Waiting for the event here
  // would be a device synchronisation hidden in a destructor (dropped checks are the common case when
  // a Layout's host offsets settle it first), so a slot still in flight is kept out of circulation,
  // with its event, and swept back once the event has completed. A slot or event whose event reports
  // an error (a dead context, or the runtime unloaded at exit) is leaked: nothing proves it idle.
  void release(int64_t* slot, void* event, int device, bool done) noexcept {
    const cudaError_t state = done || event == nullptr ? cudaSuccess : query(event);
    try {
      std::lock_guard<std::mutex> lock(mu_);
      if (state == cudaSuccess) {
        if (slot != nullptr) free_slots_.push_back(slot);
        if (event != nullptr) give_event_locked(device, event);
      } else if (state == cudaErrorNotReady) {
        retired_.push_back({slot, event, device});
      }
    } catch (...) {
      // bad_alloc or a mutex error while growing a list: leaking one slot is the safe outcome
    }
  }

 private:
  void give_event_locked(int device, void* event) {
    if (static_cast<size_t>(device) >= free_events_.size()) free_events_.resize(static_cast<size_t>(device) + 1);
    if (free_events_[device].size() < kMaxPooledEvents) free_events_[device].push_back(event);
    else cudaEventDestroy(static_cast<cudaEvent_t>(event));
  }

  // Returns retired slots whose kernels have finished (never waits).
  void sweep_locked() {
    size_t kept = 0;
    for (const Retired& r : retired_) {
      const cudaError_t e = query(r.event);
      if (e == cudaSuccess) {
        if (r.slot != nullptr) free_slots_.push_back(r.slot);
        give_event_locked(r.device, r.event);
      } else if (e == cudaErrorNotReady) {
        retired_[kept++] = r;
      }  // else: leaked, as in release()
    }
    retired_.resize(kept);
  }

  void grow_locked() {
    void* slab = nullptr;
    // Portable: usable from every device's context; mapped: kernels write it directly. Under unified
    // addressing (every platform CUDA 12+ supports) the host pointer is also the device pointer on
    // every device, which start() relies on; checked once per slab.
    check(cudaHostAlloc(&slab, kSlotsPerSlab * kSlotBytes, cudaHostAllocMapped | cudaHostAllocPortable),
          "cudaHostAlloc");
    void* device_view = nullptr;
    const cudaError_t e = cudaHostGetDevicePointer(&device_view, slab, 0);
    if (e != cudaSuccess || device_view != slab) {
      cudaFreeHost(slab);
      if (e != cudaSuccess) fail(e, "cudaHostGetDevicePointer");
      throw Error(ErrorKind::Unsupported,
                  "the device check of offsets needs unified addressing (mapped host memory at the same "
                  "address on host and device)");
    }
    auto* base = static_cast<char*>(slab);
    free_slots_.reserve(free_slots_.size() + kSlotsPerSlab);
    for (size_t i = kSlotsPerSlab; i-- > 0;) free_slots_.push_back(reinterpret_cast<int64_t*>(base + i * kSlotBytes));
  }

  std::mutex mu_;
  std::vector<int64_t*> free_slots_;
  std::vector<std::vector<void*>> free_events_;  // by device ordinal
  std::vector<Retired> retired_;
};

// Difference of two offsets as int64, computed unsigned so that adversarial offsets wrap instead of
// overflowing (undefined behaviour); any such step is reported as some wrong value, which the host
// check then rejects or the host validation of the same offsets would.
__device__ __forceinline__ int64_t step(int64_t next, int64_t prev) {
  return static_cast<int64_t>(static_cast<uint64_t>(next) - static_cast<uint64_t>(prev));
}

template <class T>
__global__ void __launch_bounds__(kThreads) offsets_summary_kernel(const T* __restrict__ offsets, int64_t count,
                                                                   int64_t* out, int64_t* device_copy) {
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (int64_t i = threadIdx.x; i + 1 < count; i += kThreads) {
    const int64_t d = step(static_cast<int64_t>(offsets[i + 1]), static_cast<int64_t>(offsets[i]));
    lo = d < lo ? d : lo;
    hi = d > hi ? d : hi;
  }
#pragma unroll
  for (int s = 16; s > 0; s >>= 1) {
    const int64_t olo = __shfl_xor_sync(0xffffffffu, lo, s);
    const int64_t ohi = __shfl_xor_sync(0xffffffffu, hi, s);
    lo = olo < lo ? olo : lo;
    hi = ohi > hi ? ohi : hi;
  }
  __shared__ int64_t warp_lo[kWarps], warp_hi[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_lo[warp] = lo, warp_hi[warp] = hi;
  __syncthreads();
  if (threadIdx.x != 0) return;
#pragma unroll
  for (int w = 1; w < kWarps; ++w) {
    lo = warp_lo[w] < lo ? warp_lo[w] : lo;
    hi = warp_hi[w] > hi ? warp_hi[w] : hi;
  }
  // Volatile stores go straight to the mapped host memory (no caching in L1 to be flushed later);
  // the system-scope fence orders them before the kernel's completion, which the event reports.
  const int64_t v[4] = {static_cast<int64_t>(offsets[0]), static_cast<int64_t>(offsets[count - 1]),
                        count > 1 ? lo : 0, count > 1 ? hi : 0};
  if (device_copy != nullptr)  // for later kernels on the stream (ordinary stores: the kernel boundary orders them)
    for (int i = 0; i < 4; ++i) device_copy[i] = v[i];
  volatile int64_t* o = out;
  for (int i = 0; i < 4; ++i) o[i] = v[i];
  __threadfence_system();
}

}  // namespace

std::unique_ptr<OffsetsSummary> OffsetsSummary::start(const void* offsets, int64_t count, bool int64, int device,
                                                      void* stream, int64_t* device_copy) {
  scree::require(count >= 1, ErrorKind::InvalidOffsets,
                 [] { return std::string("offsets must be a 1-D array of n+1 >= 1 entries, got none"); });
  scree::require(offsets != nullptr, ErrorKind::InvalidArgument, [] { return std::string("offsets is a null pointer"); });
  DeviceGuard guard(device);
  const auto s = static_cast<cudaStream_t>(stream);
  // A launch on a capturing stream would become a node of the graph and run only at replay; its
  // event could never be queried. The Python layer does not start checks under capture; this keeps
  // direct callers from hanging on an event that never completes.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(s, &capture), "cudaStreamIsCapturing");
  scree::require(capture == cudaStreamCaptureStatusNone, ErrorKind::Unsupported, [] {
    return std::string("offsets cannot be checked on the device while their stream captures a CUDA graph");
  });

  Pool& pool = Pool::get();
  std::unique_ptr<OffsetsSummary> r(new OffsetsSummary());
  r->device_ = device;
  r->slot_ = pool.take_slot();
  r->event_ = pool.take_event(device);  // on failure r's destructor returns the slot
  int64_t* out = r->slot_;              // the device pointer too, under unified addressing (see Pool)
  void* args[] = {&offsets, &count, &out, &device_copy};
  const void* kernel = int64 ? reinterpret_cast<const void*>(&offsets_summary_kernel<int64_t>)
                             : reinterpret_cast<const void*>(&offsets_summary_kernel<int32_t>);
  // cudaLaunchKernel returns this launch's own error; <<<>>> + cudaGetLastError could report an
  // earlier, unrelated one.
  check(cudaLaunchKernel(kernel, dim3(1), dim3(kThreads), args, 0, s), "cudaLaunchKernel (offsets summary)");
  const cudaError_t e = cudaEventRecord(static_cast<cudaEvent_t>(r->event_), s);
  if (e != cudaSuccess) {
    r->slot_ = nullptr;  // the kernel may still write it and no event says when: never reuse it
    fail(e, "cudaEventRecord");
  }
  return r;
}

bool OffsetsSummary::ready() {
  if (done_.load(std::memory_order_acquire)) return true;
  const cudaError_t e = query(event_);
  if (e == cudaErrorNotReady) return false;
  if (e != cudaSuccess) fail(e, "cudaEventQuery");
  done_.store(true, std::memory_order_release);
  return true;
}

std::array<int64_t, 4> OffsetsSummary::value() {
  if (!ready()) {
    cudaError_t e;
    {
      RelaxedCapture relaxed;
      e = cudaEventSynchronize(static_cast<cudaEvent_t>(event_));
    }
    if (e != cudaSuccess) fail(e, "cudaEventSynchronize");
    done_.store(true, std::memory_order_release);
  }
  std::atomic_thread_fence(std::memory_order_acquire);  // read the slot only after the event said done
  const volatile int64_t* s = slot_;
  return {s[0], s[1], s[2], s[3]};
}

OffsetsSummary::~OffsetsSummary() {
  if (slot_ != nullptr || event_ != nullptr) Pool::get().release(slot_, event_, device_, done_.load());
}

}  // namespace scree::cuda

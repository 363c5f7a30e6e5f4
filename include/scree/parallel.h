// Running CPU work on several cores: parallel_parts / parallel_for over a process-wide pool of
// worker threads (src/cpu/thread_pool.cpp: started on first use, asleep between calls). A thread start costs
// ~20 us (more on a busy machine), and the CPU kernels used to start num_threads() - 1 of them
// per call: on a 64-core host ~1 ms before any work, on every call. Waking a pooled worker costs
// a futex wake. The CPU kernels are mostly memory-bound copies, so work below ~1 MiB stays on the
// calling thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace scree {

// Threads to use: SCREE_NUM_THREADS if set (>0, read on every call), else the processors online
// when first asked: std::thread::hardware_concurrency() reads /sys (get_nprocs) each time, ~10 us
// of a 60 us 4 x 16-token attention call (asked several times a call; this Xeon, Python loop).
inline int num_threads() {
  if (const char* env = std::getenv("SCREE_NUM_THREADS")) {
    int t = std::atoi(env);
    if (t > 0) return t;
  }
  static const int hardware = [] {
    const unsigned hc = std::thread::hardware_concurrency();
    return hc == 0 ? 1 : static_cast<int>(hc);
  }();
  return hardware;
}

// Below this many bytes of traffic a kernel runs on the calling thread: on scree's own pool, where a
// part costs a worker's futex wake; on a shared OpenMP runtime (detail::openmp_runtime_shared),
// whose workers spin between a framework's ops, from a quarter of that. There, the backward's
// packing of 4 x 16 tokens (8 heads x 64, 0.75 MiB as counted) ran on the calling thread while the
// other one spun (benchmarks/NOTES.md, issue 20, session 39).
inline constexpr int64_t kParallelMinBytes = int64_t(1) << 20;
inline constexpr int64_t kParallelMinBytesShared = int64_t(1) << 18;

// Runs the pool's jobs in parallel regions of an OpenMP runtime that the process has already
// loaded (`library`: its path or soname, e.g. torch's libgomp; the torch glue shares torch's on
// import) instead of on scree's own workers, so that a kernel started right after a framework op
// runs on the workers that op left spinning (src/cpu/openmp_runtime.cpp says why, with the
// numbers). False, changing nothing, where the library is not loaded, lacks the OpenMP entry
// points, or the platform has no dlopen. A fork's child goes back to scree's pool.
bool share_openmp_runtime(const char* library);
// Back to scree's own pool.
void stop_sharing_openmp_runtime();
// The shared runtime's library as given, or "" where scree's own pool runs the jobs.
std::string shared_openmp_runtime();

namespace detail {

// Runs task(i) for every i in [0, parts) on the process's worker pool (src/cpu/thread_pool.cpp)
// and the calling thread, and returns once all have finished; false, having run nothing, when the
// pool is busy with another caller's job (the caller then runs the parts itself). `task` must not
// throw. Out of line so that no ISA-specific translation unit (the AVX2 attention kernels)
// provides the pool's code to the others.
bool pool_try_run(int parts, const std::function<void(int)>& task);

// Whether jobs run on a shared OpenMP runtime (share_openmp_runtime) in this process: its workers
// spin between a framework's ops, so waking one costs far less than a pool worker's futex wake.
bool openmp_runtime_shared();

}  // namespace detail

// Calls fn(part) for every part in [0, parts), on the pool's workers and the calling thread, and
// rethrows the first exception once all parts have run.
template <class Fn>
void parallel_parts(int parts, Fn&& fn) {
  if (parts <= 0) return;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(parts));
  const std::function<void(int)> task = [&](int p) {
    try {
      fn(p);
    } catch (...) {
      errors[static_cast<size_t>(p)] = std::current_exception();
    }
  };
  if (parts == 1 || !detail::pool_try_run(parts, task))
    for (int p = 0; p < parts; ++p) task(p);
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Calls fn(begin, end) on disjoint chunks covering [0, n). `bytes` is the kernel's total memory
// traffic, used only to decide whether threads pay off. `weight_prefix`, when given, is a
// non-decreasing prefix sum of length n+1 (e.g. offsets): chunks then carry equal weight instead
// of equal counts, which keeps skewed-length batches balanced.
template <class Fn>
void parallel_for(int64_t n, int64_t bytes, Fn&& fn, const int64_t* weight_prefix = nullptr) {
  if (n <= 0) return;
  int threads = num_threads();
  if (threads <= 1 || n == 1 ||
      bytes < (detail::openmp_runtime_shared() ? kParallelMinBytesShared : kParallelMinBytes)) {
    fn(int64_t(0), n);
    return;
  }
  int parts = static_cast<int>(std::min<int64_t>(threads, n));
  std::vector<int64_t> bounds(parts + 1, n);
  bounds[0] = 0;
  for (int p = 1; p < parts; ++p) {
    if (weight_prefix != nullptr && weight_prefix[n] > weight_prefix[0]) {
      int64_t target = weight_prefix[0] + (weight_prefix[n] - weight_prefix[0]) * p / parts;
      bounds[p] = std::lower_bound(weight_prefix, weight_prefix + n + 1, target) - weight_prefix;
    } else {
      bounds[p] = n * p / parts;
    }
    bounds[p] = std::clamp(bounds[p], bounds[p - 1], n);
  }
  parallel_parts(parts, [&](int p) {
    if (bounds[p] < bounds[p + 1]) fn(bounds[p], bounds[p + 1]);
  });
}

}  // namespace scree

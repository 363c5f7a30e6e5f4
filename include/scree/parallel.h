// parallel_for: split [0, n) over the machine's cores with plain std::threads. The CPU kernels
// are memory-bound copies; a thread start costs ~20 us, so work below ~1 MiB stays on one core.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

namespace scree {

// Threads to use: SCREE_NUM_THREADS if set (>0), else std::thread::hardware_concurrency().
inline int num_threads() {
  if (const char* env = std::getenv("SCREE_NUM_THREADS")) {
    int t = std::atoi(env);
    if (t > 0) return t;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

// Below this many bytes of traffic a kernel runs on the calling thread.
inline constexpr int64_t kParallelMinBytes = int64_t(1) << 20;

// Calls fn(begin, end) on disjoint chunks covering [0, n). `bytes` is the kernel's total memory
// traffic, used only to decide whether threads pay off. `weight_prefix`, when given, is a
// non-decreasing prefix sum of length n+1 (e.g. offsets): chunks then carry equal weight instead
// of equal counts, which keeps skewed-length batches balanced.
template <class Fn>
void parallel_for(int64_t n, int64_t bytes, Fn&& fn, const int64_t* weight_prefix = nullptr) {
  if (n <= 0) return;
  int threads = num_threads();
  if (bytes < kParallelMinBytes || threads <= 1 || n == 1) {
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
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(parts);
  pool.reserve(parts - 1);
  for (int p = 1; p < parts; ++p) {
    pool.emplace_back([&, p] {
      try {
        if (bounds[p] < bounds[p + 1]) fn(bounds[p], bounds[p + 1]);
      } catch (...) {
        errors[p] = std::current_exception();
      }
    });
  }
  try {
    if (bounds[0] < bounds[1]) fn(bounds[0], bounds[1]);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace scree

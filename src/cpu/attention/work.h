// Work distribution of the CPU attention: a list of independent items (e.g. sequence x head x
// query block), ordered most expensive first, pulled from one atomic counter by every thread so
// a skewed batch cannot leave a core idle while another finishes the longest sequence.
#pragma once

#include "isa.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "scree/parallel.h"

SCREE_CPU_NAMESPACE_BEGIN

struct WorkItem {
  int64_t seq, head, block;
  double cost;
};

// Runs fn(thread_index, item) for every item. `make_state(thread_index)` is called once per
// thread before its first item, so per-thread buffers are allocated once per call, never per item.
template <class Fn>
void run_items(std::vector<WorkItem>& items, double total_flops, Fn&& fn) {
  std::sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
  // ~2 MFLOP per thread: below that waking a second one costs more than it saves.
  int threads = static_cast<int>(std::min<int64_t>(num_threads(), static_cast<int64_t>(items.size())));
  if (total_flops < 2e6) threads = 1;
  std::atomic<int64_t> next{0};
  auto worker = [&](int t) {
    for (int64_t i = next.fetch_add(1); i < static_cast<int64_t>(items.size()); i = next.fetch_add(1))
      fn(t, items[static_cast<size_t>(i)]);
  };
  if (threads <= 1) {
    worker(0);
    return;
  }
  parallel_parts(threads, worker);  // the process's worker pool (scree/parallel.h), no thread starts
}

SCREE_CPU_NAMESPACE_END

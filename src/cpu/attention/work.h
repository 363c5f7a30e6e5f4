// Work distribution of the CPU attention: a list of independent items (e.g. sequence x head x
// query block), ordered most expensive first, pulled from one atomic counter by every thread (one
// item, or a short run of small items of one sequence's block across heads) so a skewed batch
// cannot leave a core idle while another finishes the longest sequence.
#pragma once

#include "isa.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "scree/parallel.h"

SCREE_CPU_NAMESPACE_BEGIN

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct WorkItem {
  int64_t seq, head, block;
  double cost;
  int64_t heads = 1;  // query heads from `head` on that the item covers (fwd_few_rows.h)
  // A few-rows item split over its keys (fwd_few_rows.h): part `split` of `splits`, whose partial
  // result goes to slot `slot` of the call's parts.
  int64_t split = 0, splits = 1, slot = -1;
};

// A thread scope that does nothing (see run_items).
struct NoThreadScope {
  int operator()(int) const { return 0; }
};

// Runs fn(thread_index, item) for every item. `scope(thread_index)` is called in each thread
// before its first item and its result is destroyed after its last one: per-thread state that
// must live in the thread itself (the AMX tile configuration: fwd_amx.cpp) is set up once per
// thread and call, never per item.
template <class Fn, class Scope = NoThreadScope>
void run_items(std::vector<WorkItem>& items, double total_flops, Fn&& fn, Scope&& scope = Scope{}) {
  // Ties in batch order (std::sort leaves equal costs in any order): the items of one (sequence,
  // head) then run back to back, its keys and values still in cache. Measured on the AMX forward,
  // 4 x 1024 tokens, 1 thread: 357 -> 371 GFLOP/s, about the run-to-run spread.
  std::sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) {
    if (a.cost != b.cost) return a.cost > b.cost;
    if (a.seq != b.seq) return a.seq < b.seq;
    return a.head != b.head ? a.head < b.head : a.block < b.block;
  });
  // ~4 MFLOP per call on scree's own pool: below that waking a second thread (a futex wake) costs
  // more than it saves. Measured on the Ice Lake Xeon (fp32 causal forward, 4 sequences x 8 heads x
  // 64, C++ loop): 16 tokens (2.1 MFLOP as counted here) 56-63 us on one thread, 69-84 on two; 24
  // tokens (4.7) a tie; 32 tokens (8.4) two threads 15-27% faster. On a shared OpenMP runtime
  // (torch's: its workers spin between ops) the wake is cheap: 0.25 MFLOP since small calls split
  // their items up front (below). With claims the crossover was ~1 MFLOP (the benchmark's stream
  // of torch calls, 2 threads, min / median: 4 x 16 tokens 85.7 / 96.6 us on one thread, 75.7 /
  // 84.1 on two; 2 x 16 (1.0 MFLOP) a tie). Split up front, on the 2-core AMX Xeon VM (8 heads x
  // 64, causal, us): 1 x 16 x 8 heads (0.5 MFLOP) 9.9 -> 8.4 alone and 42.8 -> 34.7 a step with a
  // torch SDPA call between; 2 x 16 x 4 heads 9.7 -> 8.4 and 42.2 -> 35.0; 1 x 24 x 4 heads
  // 10.2 -> 8.4 and 40.9 -> 38.5 (benchmarks/NOTES.md, session 40).
  int threads = static_cast<int>(std::min<int64_t>(num_threads(), static_cast<int64_t>(items.size())));
  if (total_flops < (detail::openmp_runtime_shared() ? 0.25e6 : 4e6)) threads = 1;
  if (threads <= 1) {  // in order, no runs to build (the small calls' host time)
    [[maybe_unused]] auto held = scope(0);
    for (const WorkItem& item : items) fn(0, item);
    return;
  }
  // Small items of one (sequence, block) across heads go to one thread together, as runs costing at
  // most 1/16 of a thread's share: the heads' rows lie side by side in memory, and a core's
  // prefetchers bring in its neighbours' lines too. Taken one by one, adjacent heads went to the two
  // threads in turn and each core's prefetched lines were the other's: 2 threads ran 8..128-token
  // sequences 1.6x faster than one, long ones 2.0x (the 2-core AVX2 EPYC); in runs, short forward
  // +5-15%, long and mixed even (benchmarks/NOTES.md, issue 20, twenty-fourth session).
  // Near the end of the list a run is capped by the work left (a quarter of a thread's share of it):
  // the last items stay single, so threads finish together. With the flat cap alone, mixed lengths
  // lost 3-5% on 16 threads (the 16-core AMX host, forward and backward; the cheapest items, last,
  // ran in runs of up to 1/16 of a thread's share; NOTES, twenty-fifth session).
  const int64_t n = static_cast<int64_t>(items.size());
  std::vector<double> left(static_cast<size_t>(n) + 1, 0.0);  // cost of items [i, n)
  for (int64_t i = n - 1; i >= 0; --i) left[size_t(i)] = left[size_t(i) + 1] + items[size_t(i)].cost;
  // Below kStaticFlops the items are split up front, each thread a contiguous share of the list by
  // cost (an item goes where its cost's midpoint falls): no claims at all. Claimed, each claim
  // moved the counter's line between the cores: the compare-exchange and the load before it held
  // ~5% of the 4 x 16-token fp32 forward's samples (2 threads, perf, the 2-core AMX Xeon VM).
  // Split so (A/B, same VM, torch's OpenMP runtime, us a call, 8 heads x 64, causal): 4 x 16
  // forward 36.4 -> 33.0, forward+backward 243 -> 227; 4 x 32 forward 69.8 -> 59.2; 8 x 48 (38
  // MFLOP, claimed as before) unchanged. At 4 MFLOP the limit left the 4 x 32 forward and the
  // 4 x 16 backward claimed (-0..-4% there). On a shared OpenMP runtime only, where the workers
  // spin between ops and start their share at once: a pool worker woken by a futex may start late,
  // and claims let the caller take its items meanwhile (not measured split up front).
  constexpr double kStaticFlops = 16e6;
  if (total_flops < kStaticFlops && detail::openmp_runtime_shared()) {
    const double total = std::max(left[0], 1e-300);
    // Thread t runs items [first[t], first[t + 1]): the midpoints grow with i, so the shares are
    // contiguous and found in one pass.
    std::vector<int64_t> first(static_cast<size_t>(threads) + 1, 0);
    int part = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double mid = (left[0] - left[size_t(i)] + 0.5 * items[size_t(i)].cost) / total;
      for (const int owner = std::min(threads - 1, static_cast<int>(mid * threads)); part < owner;)
        first[size_t(++part)] = i;
    }
    while (part < threads) first[size_t(++part)] = n;
    parallel_parts(threads, [&](int t) {
      [[maybe_unused]] auto held = scope(t);
      for (int64_t i = first[size_t(t)]; i < first[size_t(t) + 1]; ++i) fn(t, items[size_t(i)]);
    });
    return;
  }
  const double run_cost = left[0] / (16.0 * threads);
  std::vector<int64_t> starts;  // run r is items [starts[r], starts[r + 1])
  for (int64_t i = 0; i < n;) {
    starts.push_back(i);
    const WorkItem& first = items[static_cast<size_t>(i)];
    const double cap = std::min(run_cost, left[size_t(i)] / (4.0 * threads));
    double cost = first.cost;
    int64_t j = i + 1;
    for (; j < n; ++j) {
      const WorkItem& w = items[static_cast<size_t>(j)];
      if (w.seq != first.seq || w.block != first.block || cost + w.cost > cap) break;
      cost += w.cost;
    }
    i = j;
  }
  starts.push_back(n);
  const int64_t runs = static_cast<int64_t>(starts.size()) - 1;
  // Small runs are claimed several at a time: the runs from the next one on whose cost stays within
  // both a share of the work left (1 / (2 x threads), so the last claims are single runs) and ~1
  // MFLOP. A claim is a locked add on a line every thread writes, after the kernel's stores: one a
  // run took 18% of the samples of the 4 x 16-token fp32 call on 2 threads (the 2-core AMX Xeon VM).
  // Claimed so, that call went 44-47 -> 38-41 us (3 alternations, torch's OpenMP workers; padded
  // SDPA 29-33). Larger runs go one a claim: claimed by share alone, one thread took a quarter of
  // eq2048's runs at once (forward 0.98-1.00x there, in the noise).
  std::atomic<int64_t> next{0};
  auto cost_from = [&](int64_t r) { return left[static_cast<size_t>(starts[static_cast<size_t>(r)])]; };
  const double claim_cost = 1e6 * left[0] / std::max(total_flops, 1.0);  // ~1 MFLOP in the items' units
  auto worker = [&](int t) {
    [[maybe_unused]] auto held = scope(t);
    for (int64_t r = next.load(std::memory_order_relaxed);;) {
      int64_t end = 0;
      do {
        if (r >= runs) return;
        const double share = std::min(cost_from(r) / (2.0 * threads), claim_cost);
        for (end = r + 1; end < runs && cost_from(r) - cost_from(end + 1) <= share;) ++end;
      } while (!next.compare_exchange_weak(r, end, std::memory_order_relaxed));
      for (int64_t i = starts[static_cast<size_t>(r)]; i < starts[static_cast<size_t>(end)]; ++i)
        fn(t, items[static_cast<size_t>(i)]);
      r = next.load(std::memory_order_relaxed);
    }
  };
  parallel_parts(threads, worker);  // the process's worker pool (scree/parallel.h), no thread starts
}

SCREE_CPU_NAMESPACE_END

// The per-call operand buffer of the CPU kernels (fwd_amx.cpp's packed K and V, bwd_amx.cpp's bf16
// Q, dO and their transposes, bwd.cpp's packed Q and dO): one buffer per calling thread, kept
// between calls up to kKeptWords, shared by the forward and the backward (a thread runs one call
// at a time, and a call holds one Workspace at a time).
// Why kept: a fresh allocation is mmap'ed and page-faulted on every call: 10.1-10.4 against
// 8.5-9.1 ms kept for the forward's 8 MiB of 4 x 1024 tokens, 4 kv heads, D = 128, 2 threads.
// Above kKeptWords a block of the host cache (scree/host_blocks.h; page-aligned), returned to it
// after the call: not held per calling thread, yet written before, so its pages do not fault again
// (the 16k-token short d128 backward's 64 MiB of packed Q and dO: 16,400 faults a call on the 2-core
// VM as a fresh buffer). `data` starts a line (aligned.h: tiles).
#pragma once

#include "isa.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <tuple>
#include <vector>

#include "aligned.h"
#include "scree/host_blocks.h"

SCREE_CPU_NAMESPACE_BEGIN

inline constexpr size_t kKeptWords = size_t(64) << 20 >> 2;  // 64 MiB

struct HostBlockRelease {
  void operator()(void* p) const noexcept { release_host_block(p); }
};

struct Workspace {
  std::unique_ptr<void, HostBlockRelease> own;
  uint32_t* data;
  explicit Workspace(size_t words) {
    thread_local LineArray<uint32_t> kept;
    thread_local size_t have = 0;
    if (words > kKeptWords) {
      own.reset(acquire_host_block(words * sizeof(uint32_t)));
      data = static_cast<uint32_t*>(own.get());
      return;
    }
    if (words > have) {
      kept = line_array<uint32_t>(words);
      have = words;
    }
    data = kept.get();
  }
};

// A kernel's per-worker scratch (its Buffers), kept by the calling thread between calls and rebuilt
// only when the shape arguments change: built per call, each one was zero-filled and, past the mmap
// threshold, page-faulted again (a 4 x 16-token fp32 forward: 74 -> 53 us a call kept; perf and a
// C++ loop, this Xeon). The kernels initialise whatever they read, as they must anyway when one
// worker runs several items.
template <class B, class... Args>
std::vector<B>& kept_buffers(int threads, Args... args) {
  thread_local std::vector<B> kept;
  thread_local std::tuple<Args...> shape;
  const std::tuple<Args...> want(args...);
  if (!kept.empty() && shape != want) kept.clear();
  shape = want;
  while (int(kept.size()) < threads) kept.emplace_back(args...);
  return kept;
}

// The backwards' per-worker scratch, kept (kept_buffers, built with no dQ accumulator, which grows
// to `dq_elems`) where the accumulators are small: built per call, a few short sequences' backward
// allocated, zero-filled and freed them every time, and with two threads the frees' TLB shootdowns
// made the call slower than one thread's (4 x 16 tokens: 305 against 148 us; perf, this Xeon).
// Larger ones (up to a sequence's rows x group x D) are this call's own, in `own`.
inline constexpr size_t kKeptDqBytes = size_t(4) << 20;
template <class B, class C, class... Args>
std::vector<B>& backward_buffers(std::vector<B>& own, int threads, int64_t dq_elems, Args... args) {
  if (size_t(dq_elems) * sizeof(C) > kKeptDqBytes) {
    own.reserve(threads);
    for (int t = 0; t < threads; ++t) own.emplace_back(args..., dq_elems);
    return own;
  }
  std::vector<B>& kept = kept_buffers<B>(threads, args..., int64_t(0));
  for (B& b : kept)
    if (int64_t(b.dq.size()) < dq_elems) b.dq.resize(size_t(dq_elems));
  return kept;
}

SCREE_CPU_NAMESPACE_END

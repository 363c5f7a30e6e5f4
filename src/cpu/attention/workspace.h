// The per-call operand buffer of the AMX kernels (the amx build only: fwd_amx.cpp's packed K and
// V, bwd_amx.cpp's bf16 Q, dO and their transposes): one buffer per calling thread, kept between
// calls up to kKeptWords, shared by the forward and the backward (a thread runs one call at a time).
// Why kept: a fresh allocation is mmap'ed and page-faulted on every call: 10.1-10.4 against
// 8.5-9.1 ms kept for the forward's 8 MiB of 4 x 1024 tokens, 4 kv heads, D = 128, 2 threads.
// Above kKeptWords a buffer for this call alone (holding more than 64 MiB per calling thread
// between calls would cost more than the faults save). `data` starts a line (aligned.h: tiles).
#pragma once

#include "isa.h"

#include <cstddef>
#include <cstdint>

#include "aligned.h"

SCREE_CPU_NAMESPACE_BEGIN

inline constexpr size_t kKeptWords = size_t(64) << 20 >> 2;  // 64 MiB

struct Workspace {
  LineArray<uint32_t> own;
  uint32_t* data;
  explicit Workspace(size_t words) {
    thread_local LineArray<uint32_t> kept;
    thread_local size_t have = 0;
    if (words > kKeptWords) {
      own = line_array<uint32_t>(words);
      data = own.get();
      return;
    }
    if (words > have) {
      kept = line_array<uint32_t>(words);
      have = words;
    }
    data = kept.get();
  }
};

SCREE_CPU_NAMESPACE_END

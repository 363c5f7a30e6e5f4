// Software prefetch of the rows the CPU attention kernels read or write once per work item (the
// forward's Q, V and output rows; the backward's Q, dO, O, K, V and gradient rows), all of them
// heads x head dim elements apart in the user's arrays.
#pragma once

#include "isa.h"

#include <cstdint>

SCREE_CPU_NAMESPACE_BEGIN

// One row of `bytes` bytes asked into L2 (prefetcht1) line by line, for reading or (for_write) for
// writing. The rows of q, k, v and out sit heads x D elements apart (2 KiB at hidden 512), past
// the hardware prefetchers' reach, so a loop over rows that asks for no row ahead waits on each
// row's first line: on 8..128-token sequences (fp32, one thread, this Ice Lake VM) the Q rows'
// copy held 8% of the forward's samples and the output rows' stores (their read for ownership) 5%.
// Into L1 (prefetcht0) 4 rows ahead, the waits moved into the prefetches themselves (the line fill
// buffers were full); into L2 8 rows ahead: short d64 / d128 / d128 causal +25..30% / +11..15% /
// +12..21%, eq2048 d128 causal +8%, others even (A/B, two runs; benchmarks/NOTES.md, issue 20).
inline void prefetch_row(const void* row, int64_t bytes, bool for_write = false) {
  const char* at = static_cast<const char*>(row);
  if (for_write) {
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(at + b, 1, 2);
  } else {
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(at + b, 0, 2);
  }
}
// Rows asked ahead by the loops over rows.
constexpr int64_t kRowsAhead = 8;

SCREE_CPU_NAMESPACE_END

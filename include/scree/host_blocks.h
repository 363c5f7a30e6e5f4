// Host memory for the outputs of scree's CPU calls, kept for reuse once freed (a caching allocator
// for the host, as frameworks keep one for the GPU). Why: torch takes every CPU tensor above 128 KiB
// with posix_memalign, which glibc serves from fresh pages on every call (its 64-byte alignment asks
// for more than the block just freed, so that block is never reused), and a fresh page costs a
// fault on first touch: 1.5-1.9 us per 4 KiB page on the 2-core Xeon VM (32 MiB: 12-15 ms first
// touch against 2.3-3.4 ms rewritten). A 16k-token short d128 forward on that VM (32 MiB output)
// ran 40 ms at 8,200 faults a call and 20 ms with glibc told to keep large blocks
// (benchmarks/NOTES.md, session 42).
// A block is a private anonymous mapping (page-aligned; new[] where there is no mmap), released
// into the cache when its owner frees it and handed out again for a request of at least 7/8 of its
// size; the cache holds at most SCREE_CPU_CACHE_MB MiB (read at each release; default 1024, 0 keeps
// nothing), the blocks freed longest ago leaving first. Thread-safe.
#pragma once

#include <cstddef>

namespace scree {

struct HostCacheInfo {
  size_t cached_bytes = 0;   // in freed blocks kept for reuse
  size_t cached_blocks = 0;
  size_t live_bytes = 0;     // in blocks handed out and not yet released
  size_t hits = 0, misses = 0;  // acquires served from the cache / by a new mapping, since the start
};

// A block of at least `bytes` (> 0) bytes, page-aligned, its contents undefined. Throws
// std::bad_alloc when the system has no memory for it.
void* acquire_host_block(size_t bytes);
// Returns a block from acquire_host_block to the cache (or to the system past the cap).
void release_host_block(void* block) noexcept;
// Returns every cached block to the system; the bytes returned.
size_t empty_host_cache() noexcept;
HostCacheInfo host_cache_info() noexcept;

}  // namespace scree

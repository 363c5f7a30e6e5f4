// The host block cache (include/scree/host_blocks.h): blocks are whole pages of a private mapping,
// the cache a short list scanned under one mutex (a call acquires a few blocks, each worth
// milliseconds of page faults, so a linear best-fit scan over tens of entries costs nothing).
#include "scree/host_blocks.h"

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define SCREE_HOST_BLOCKS_MMAP 1
#endif

namespace scree {
namespace {

constexpr size_t kDefaultCapMiB = 1024;

size_t cap_bytes() {
  if (const char* env = std::getenv("SCREE_CPU_CACHE_MB")) {
    char* end = nullptr;
    const unsigned long long mib = std::strtoull(env, &end, 10);
    if (end != env) return size_t(mib) << 20;
  }
  return kDefaultCapMiB << 20;
}

size_t page_size() {
#if defined(SCREE_HOST_BLOCKS_MMAP)
  static const size_t page = [] {
    const long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? size_t(p) : size_t(4096);
  }();
  return page;
#else
  return 4096;
#endif
}

void* map_pages(size_t bytes) {
#if defined(SCREE_HOST_BLOCKS_MMAP)
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return p;
#else
  return ::operator new(bytes, std::align_val_t(4096));
#endif
}

void unmap_pages(void* p, size_t bytes) noexcept {
#if defined(SCREE_HOST_BLOCKS_MMAP)
  munmap(p, bytes);
#else
  (void)bytes;
  ::operator delete(p, std::align_val_t(4096));
#endif
}

struct Cached {
  void* p;
  size_t bytes;
  uint64_t released;  // release order: the smallest leaves first
};

struct Cache {
  std::mutex m;
  std::unordered_map<void*, size_t> live;  // handed out: its size
  std::vector<Cached> cached;
  size_t cached_bytes = 0, live_bytes = 0, hits = 0, misses = 0;
  uint64_t clock = 0;
};

// Never destroyed: blocks may be released by other libraries' objects torn down after this one.
Cache& cache() {
  static Cache* c = new Cache();
  return *c;
}

}  // namespace

void* acquire_host_block(size_t bytes) {
  const size_t page = page_size();
  if (bytes > SIZE_MAX - page) throw std::bad_alloc();
  const size_t want = ((bytes == 0 ? 1 : bytes) + page - 1) / page * page;  // whole pages, at least one
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.m);
    // Best fit among the blocks this request fills to at least 7/8: a large block is not spent on
    // a small request, and a shape seen again (the usual case: the same layer every step) fits exactly.
    size_t best = c.cached.size();
    for (size_t i = 0; i < c.cached.size(); ++i) {
      const size_t b = c.cached[i].bytes;
      if (b >= want && want >= b - b / 8 && (best == c.cached.size() || b < c.cached[best].bytes)) best = i;
    }
    if (best != c.cached.size()) {
      const Cached hit = c.cached[best];
      c.live.emplace(hit.p, hit.bytes);  // first: if it throws, the block stays cached
      c.cached[best] = c.cached.back();
      c.cached.pop_back();
      c.cached_bytes -= hit.bytes;
      c.live_bytes += hit.bytes;
      ++c.hits;
      return hit.p;
    }
    ++c.misses;
  }
  void* p = map_pages(want);  // outside the lock (its pages fault in later, where they are written)
  std::lock_guard<std::mutex> lock(c.m);
  try {
    c.live.emplace(p, want);
  } catch (...) {
    unmap_pages(p, want);
    throw;
  }
  c.live_bytes += want;
  return p;
}

void release_host_block(void* block) noexcept {
  if (block == nullptr) return;
  Cache& c = cache();
  // Unmapped under the lock (~1 ms for 32 MiB on the 2-core VM): releases are a few a call, and
  // nothing here may allocate for a list of blocks to unmap later.
  std::lock_guard<std::mutex> lock(c.m);
  const auto it = c.live.find(block);
  if (it == c.live.end()) return;  // not one of ours: nothing to do
  const size_t bytes = it->second;
  c.live.erase(it);
  c.live_bytes -= bytes;
  const size_t cap = cap_bytes();
  bool kept = false;
  if (bytes <= cap) {
    try {
      c.cached.push_back({block, bytes, ++c.clock});
      c.cached_bytes += bytes;
      kept = true;
    } catch (...) {  // no memory for the entry: the block goes back to the system
    }
  }
  if (!kept) unmap_pages(block, bytes);
  while (c.cached_bytes > cap) {  // the blocks freed longest ago leave first
    size_t oldest = 0;
    for (size_t i = 1; i < c.cached.size(); ++i)
      if (c.cached[i].released < c.cached[oldest].released) oldest = i;
    const Cached out = c.cached[oldest];
    c.cached[oldest] = c.cached.back();
    c.cached.pop_back();
    c.cached_bytes -= out.bytes;
    unmap_pages(out.p, out.bytes);
  }
}

size_t empty_host_cache() noexcept {
  Cache& c = cache();
  std::vector<Cached> leaving;
  {
    std::lock_guard<std::mutex> lock(c.m);
    leaving.swap(c.cached);
    c.cached_bytes = 0;
  }
  size_t freed = 0;
  for (const Cached& x : leaving) {
    unmap_pages(x.p, x.bytes);
    freed += x.bytes;
  }
  return freed;
}

HostCacheInfo host_cache_info() noexcept {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.m);
  HostCacheInfo info;
  info.cached_bytes = c.cached_bytes;
  info.cached_blocks = c.cached.size();
  info.live_bytes = c.live_bytes;
  info.hits = c.hits;
  info.misses = c.misses;
  return info;
}

}  // namespace scree

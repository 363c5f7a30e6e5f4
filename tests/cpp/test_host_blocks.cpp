// The host block cache (src/cpu/host_blocks.cpp): a released block is handed out again for a
// request it fills to at least 7/8 (not for a smaller one), the cache holds at most
// SCREE_CPU_CACHE_MB MiB (the blocks released longest ago leave first; 0 keeps nothing), emptying it
// returns every cached byte, a foreign pointer is ignored, and threads acquiring and releasing at
// once neither lose nor share a block.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <set>
#include <thread>
#include <vector>

#include "scree/host_blocks.h"

namespace {

constexpr size_t kMiB = size_t(1) << 20;

// Each test starts from an empty cache and the default cap, and leaves them so.
class HostBlocks : public ::testing::Test {
 protected:
  void SetUp() override {
    unsetenv("SCREE_CPU_CACHE_MB");
    scree::empty_host_cache();
  }
  void TearDown() override {
    unsetenv("SCREE_CPU_CACHE_MB");
    scree::empty_host_cache();
  }
};

TEST_F(HostBlocks, ReleasedBlockIsReusedForTheSameSize) {
  const scree::HostCacheInfo before = scree::host_cache_info();
  void* a = scree::acquire_host_block(3 * kMiB + 5);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 4096, 0u);
  std::memset(a, 0x5a, 3 * kMiB + 5);  // the whole request is writable
  EXPECT_GE(scree::host_cache_info().live_bytes, 3 * kMiB + 5);
  scree::release_host_block(a);
  scree::HostCacheInfo after = scree::host_cache_info();
  EXPECT_EQ(after.cached_blocks, 1u);
  EXPECT_GE(after.cached_bytes, 3 * kMiB + 5);
  void* b = scree::acquire_host_block(3 * kMiB);
  EXPECT_EQ(b, a);
  EXPECT_EQ(static_cast<unsigned char*>(b)[0], 0x5a);  // the same pages, not fresh ones
  after = scree::host_cache_info();
  EXPECT_EQ(after.hits, before.hits + 1);
  EXPECT_EQ(after.misses, before.misses + 1);
  EXPECT_EQ(after.cached_blocks, 0u);
  scree::release_host_block(b);
}

TEST_F(HostBlocks, LargeBlockIsNotSpentOnASmallRequest) {
  void* big = scree::acquire_host_block(8 * kMiB);
  scree::release_host_block(big);
  void* small = scree::acquire_host_block(6 * kMiB);  // 6/8 < 7/8 of the cached block
  EXPECT_NE(small, big);
  EXPECT_EQ(scree::host_cache_info().cached_blocks, 1u);
  void* close = scree::acquire_host_block(7 * kMiB + kMiB / 2);  // >= 7/8: reused
  EXPECT_EQ(close, big);
  scree::release_host_block(small);
  scree::release_host_block(close);
}

TEST_F(HostBlocks, BestFitPicksTheSmallestBlockThatFits) {
  void* a = scree::acquire_host_block(4 * kMiB + 4096);
  void* b = scree::acquire_host_block(4 * kMiB);
  scree::release_host_block(a);
  scree::release_host_block(b);
  EXPECT_EQ(scree::acquire_host_block(4 * kMiB), b);
  EXPECT_EQ(scree::acquire_host_block(4 * kMiB), a);
  scree::release_host_block(a);
  scree::release_host_block(b);
}

TEST_F(HostBlocks, CapEvictsTheOldestAndZeroKeepsNothing) {
  setenv("SCREE_CPU_CACHE_MB", "5", 1);
  void* a = scree::acquire_host_block(2 * kMiB);
  void* b = scree::acquire_host_block(2 * kMiB);
  void* c = scree::acquire_host_block(2 * kMiB);
  scree::release_host_block(a);
  scree::release_host_block(b);
  scree::release_host_block(c);  // 6 MiB > 5: a, released first, leaves
  scree::HostCacheInfo info = scree::host_cache_info();
  EXPECT_EQ(info.cached_blocks, 2u);
  EXPECT_EQ(info.cached_bytes, 4 * kMiB);
  void* big = scree::acquire_host_block(6 * kMiB);  // larger than the cap: never cached
  scree::release_host_block(big);
  EXPECT_EQ(scree::host_cache_info().cached_bytes, 4 * kMiB);
  setenv("SCREE_CPU_CACHE_MB", "0", 1);
  void* d = scree::acquire_host_block(kMiB);
  scree::release_host_block(d);  // cap 0: d leaves, and so do the two cached blocks
  info = scree::host_cache_info();
  EXPECT_EQ(info.cached_blocks, 0u);
  EXPECT_EQ(info.cached_bytes, 0u);
}

TEST_F(HostBlocks, EmptyReturnsEveryCachedByteAndForeignPointersAreIgnored) {
  void* a = scree::acquire_host_block(kMiB);
  void* b = scree::acquire_host_block(3 * kMiB);
  scree::release_host_block(a);
  scree::release_host_block(b);
  int local = 0;
  scree::release_host_block(&local);  // not a block: ignored
  scree::release_host_block(nullptr);
  scree::release_host_block(a);       // already released: ignored
  EXPECT_EQ(scree::empty_host_cache(), 4 * kMiB);
  const scree::HostCacheInfo info = scree::host_cache_info();
  EXPECT_EQ(info.cached_bytes, 0u);
  EXPECT_EQ(info.live_bytes, 0u);
}

TEST_F(HostBlocks, ZeroBytesGivesAPageAndImpossibleSizesThrow) {
  void* p = scree::acquire_host_block(0);
  ASSERT_NE(p, nullptr);
  scree::release_host_block(p);
  EXPECT_THROW(scree::acquire_host_block(SIZE_MAX), std::bad_alloc);  // rounding up would wrap
  EXPECT_THROW(scree::acquire_host_block(size_t(1) << 62), std::bad_alloc);  // no such mapping
  EXPECT_EQ(scree::host_cache_info().live_bytes, 0u);
}

TEST_F(HostBlocks, ThreadsNeverShareABlock) {
  constexpr int kThreads = 4, kRounds = 200;
  std::vector<std::thread> threads;
  std::vector<int> bad(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &bad] {
      for (int r = 0; r < kRounds; ++r) {
        const size_t bytes = (1 + (r + t) % 3) * 256 * 1024;
        auto* p = static_cast<unsigned char*>(scree::acquire_host_block(bytes));
        std::memset(p, t + 1, bytes);
        for (size_t i = 0; i < bytes; i += 4096) bad[t] += p[i] != t + 1;  // another thread wrote here
        scree::release_host_block(p);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(bad[t], 0) << "thread " << t;
  EXPECT_EQ(scree::host_cache_info().live_bytes, 0u);
}

}  // namespace

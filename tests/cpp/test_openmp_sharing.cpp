// parallel_parts / parallel_for on a shared OpenMP runtime (scree::share_openmp_runtime,
// src/cpu/openmp_runtime.cpp), here the compiler's libgomp loaded by the test as a framework would:
// only a loaded OpenMP library is taken, every part runs once inside the runtime's parallel region,
// exceptions, nested and concurrent calls behave as on scree's pool, a fork's child and
// stop_sharing_openmp_runtime go back to the pool.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

#if !defined(_WIN32)
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "scree/parallel.h"

namespace {

#if !defined(_WIN32)
constexpr int64_t kBig = int64_t(1) << 30;  // "bytes" that make parallel_for use threads
constexpr const char* kRuntime = "libgomp.so.1";

using IntFn = int (*)();

class OpenMpSharing : public ::testing::Test {
 protected:
  void SetUp() override {
    handle_ = dlopen(kRuntime, RTLD_NOW | RTLD_GLOBAL);
    if (handle_ == nullptr) GTEST_SKIP() << kRuntime << " is not installed";
    level_ = reinterpret_cast<IntFn>(dlsym(handle_, "omp_get_level"));
    ASSERT_NE(level_, nullptr);
    ASSERT_TRUE(scree::share_openmp_runtime(kRuntime));
  }
  void TearDown() override { scree::stop_sharing_openmp_runtime(); }
  void* handle_ = nullptr;
  IntFn level_ = nullptr;  // omp_get_level(): 1 inside the runtime's parallel region, 0 outside
};

TEST(OpenMpSharingRefused, OnlyALoadedOpenMpLibrary) {
  EXPECT_FALSE(scree::share_openmp_runtime("libscree-no-such-runtime.so"));
  EXPECT_FALSE(scree::share_openmp_runtime(""));
  EXPECT_FALSE(scree::share_openmp_runtime(nullptr));
  EXPECT_FALSE(scree::share_openmp_runtime("libc.so.6"));  // loaded, but no OpenMP entry points
  EXPECT_EQ(scree::shared_openmp_runtime(), "");
}

TEST_F(OpenMpSharing, EveryPartRunsOnceInTheRuntimesRegion) {
  EXPECT_EQ(scree::shared_openmp_runtime(), kRuntime);
  for (int parts : {2, 3, 17, 256}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(parts));
    std::atomic<int> outside{0};
    for (int round = 0; round < 20; ++round)
      scree::parallel_parts(parts, [&](int p) {
        hits[size_t(p)]++;
        if (level_() != 1) outside++;
      });
    for (int p = 0; p < parts; ++p) EXPECT_EQ(hits[size_t(p)].load(), 20) << "part " << p << " of " << parts;
    EXPECT_EQ(outside.load(), 0) << "parts run outside the OpenMP region";
  }
  scree::stop_sharing_openmp_runtime();
  EXPECT_EQ(scree::shared_openmp_runtime(), "");
  std::atomic<int> inside{0};
  scree::parallel_parts(8, [&](int) { inside += level_() != 0; });
  EXPECT_EQ(inside.load(), 0) << "scree's own pool runs no OpenMP region";
}

TEST_F(OpenMpSharing, ForCoversTheRangeOnce) {
  const int64_t n = 100003;
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  scree::parallel_for(n, kBig, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << i;
}

TEST_F(OpenMpSharing, ExceptionsReachTheCaller) {
  EXPECT_THROW(scree::parallel_parts(8, [](int p) {
                 if (p == 5) throw std::runtime_error("part 5");
               }),
               std::runtime_error);
  std::atomic<int> sum{0};
  scree::parallel_parts(8, [&](int p) { sum += p; });
  EXPECT_EQ(sum.load(), 28);
}

TEST_F(OpenMpSharing, NestedCallsComplete) {
  std::atomic<int64_t> total{0};
  scree::parallel_parts(4, [&](int) {
    scree::parallel_for(1000, kBig, [&](int64_t b, int64_t e) { total += e - b; });
  });
  EXPECT_EQ(total.load(), 4000);
}

TEST_F(OpenMpSharing, ConcurrentCallersAllComplete) {
  std::vector<std::thread> callers;
  std::vector<int64_t> sums(4, 0);
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&, c] {
      for (int round = 0; round < 100; ++round) {
        std::atomic<int64_t> s{0};
        scree::parallel_for(10000, kBig, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) s += i;
        });
        sums[size_t(c)] += s.load();
      }
    });
  for (auto& t : callers) t.join();
  for (int64_t s : sums) EXPECT_EQ(s, int64_t(100) * (int64_t(10000) * 9999 / 2));
}

TEST_F(OpenMpSharing, ChildAfterForkUsesScreesPool) {
  scree::parallel_parts(4, [](int) {});  // the parent's runtime has run a region before the fork
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::atomic<int> n{0}, inside{0};
    scree::parallel_parts(16, [&](int) { n++, inside += level_() != 0; });
    _exit(n.load() == 16 && inside.load() == 0 && scree::shared_openmp_runtime().empty() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}
#endif

}  // namespace

// The worker pool behind parallel_parts / parallel_for (src/cpu/thread_pool.cpp), run two ways:
// on scree's own workers, and on a shared OpenMP runtime (src/cpu/openmp_runtime.cpp; here the
// compiler's libgomp, loaded by the test as a framework would load its own). Either way every
// part runs exactly once, exceptions reach the caller, a task may itself call parallel_for, callers
// on several threads at once all complete, and a child process after fork() gets a working pool
// (scree's own: the parent's OpenMP workers do not exist there). Shared, every part runs inside
// the runtime's parallel region, a team of all its threads however few the parts; only a loaded
// OpenMP library is taken.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if !defined(_WIN32)
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "scree/parallel.h"

namespace {

constexpr int64_t kBig = int64_t(1) << 30;  // "bytes" that make parallel_for use threads
constexpr const char* kRuntime = "libgomp.so.1";

// An entry point of the runtime (loaded here once, as a framework would load it) by name, or null.
void* omp_symbol(const char* name) {
#if !defined(_WIN32)
  static void* handle = dlopen(kRuntime, RTLD_NOW | RTLD_GLOBAL);
  return handle == nullptr ? nullptr : dlsym(handle, name);
#else
  (void)name;
  return nullptr;
#endif
}

// omp_get_level() of the loaded runtime (1 inside its parallel region, 0 outside), or null.
using IntFn = int (*)();
IntFn omp_level() { return reinterpret_cast<IntFn>(omp_symbol("omp_get_level")); }

// Param: whether the jobs run on the shared OpenMP runtime.
class Pool : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!GetParam()) return;
    if (omp_level() == nullptr) GTEST_SKIP() << kRuntime << " is not installed";
    ASSERT_TRUE(scree::share_openmp_runtime(kRuntime));
  }
  void TearDown() override { scree::stop_sharing_openmp_runtime(); }
  // Whether the calling part runs where it should: inside the runtime's region when shared.
  bool placed() const { return omp_level() == nullptr || omp_level()() == (GetParam() ? 1 : 0); }
};

INSTANTIATE_TEST_SUITE_P(Parallel, Pool, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return std::string(i.param ? "OpenMp" : "Own"); });

TEST_P(Pool, EveryPartRunsOnce) {
  EXPECT_EQ(scree::shared_openmp_runtime(), GetParam() ? kRuntime : "");
  for (int parts : {1, 2, 3, 17, 256}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(parts));
    std::atomic<int> misplaced{0};
    for (int round = 0; round < 20; ++round)
      scree::parallel_parts(parts, [&](int p) {
        hits[size_t(p)]++;
        if (parts > 1 && !placed()) misplaced++;
      });
    for (int p = 0; p < parts; ++p) EXPECT_EQ(hits[size_t(p)].load(), 20) << "part " << p << " of " << parts;
    EXPECT_EQ(misplaced.load(), 0) << "parts ran on the other pool";
  }
}

// On the shared runtime a job of fewer parts than the runtime's threads still opens a region of all
// of them: a smaller team made libgomp reshape the framework's, and its next op ran 2x as long
// (openmp_runtime.cpp).
TEST_P(Pool, SharedRegionsKeepTheRuntimesTeam) {
  if (!GetParam()) GTEST_SKIP() << "scree's own pool";
  const auto team_size = reinterpret_cast<IntFn>(omp_symbol("omp_get_num_threads"));
  const auto max_threads = reinterpret_cast<IntFn>(omp_symbol("omp_get_max_threads"));
  // 8 threads whatever the machine's cores (as torch.set_num_threads(8) would set them).
  const auto set_threads = reinterpret_cast<void (*)(int)>(omp_symbol("omp_set_num_threads"));
  ASSERT_TRUE(team_size != nullptr && max_threads != nullptr && set_threads != nullptr);
  const int before = max_threads();
  set_threads(8);
  for (int parts : {2, 3}) {
    std::atomic<int> seen{-1};
    scree::parallel_parts(parts, [&](int) { seen = team_size(); });
    EXPECT_EQ(seen.load(), 8) << parts << " parts";
  }
  set_threads(before);
}

TEST_P(Pool, ForCoversTheRangeOnce) {
  const int64_t n = 100003;
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  scree::parallel_for(n, kBig, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << i;
}

TEST_P(Pool, ExceptionsReachTheCaller) {
  EXPECT_THROW(scree::parallel_parts(8, [](int p) {
                 if (p == 5) throw std::runtime_error("part 5");
               }),
               std::runtime_error);
  // The pool still works after a failed job.
  std::atomic<int> sum{0};
  scree::parallel_parts(8, [&](int p) { sum += p; });
  EXPECT_EQ(sum.load(), 28);
}

TEST_P(Pool, NestedCallsComplete) {
  std::atomic<int64_t> total{0};
  scree::parallel_parts(4, [&](int) {
    scree::parallel_for(1000, kBig, [&](int64_t b, int64_t e) { total += e - b; });
  });
  EXPECT_EQ(total.load(), 4000);
}

TEST_P(Pool, ConcurrentCallersAllComplete) {
  std::vector<std::thread> callers;
  std::vector<int64_t> sums(8, 0);
  for (int c = 0; c < 8; ++c)
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

#if !defined(_WIN32)
TEST_P(Pool, ChildAfterForkUsesScreesPool) {
  scree::parallel_parts(4, [](int) {});  // the parent's pool (or runtime) has run a job before the fork
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::atomic<int> n{0}, inside{0};
    IntFn level = omp_level();
    scree::parallel_parts(16, [&](int) { n++, inside += level != nullptr && level() != 0; });
    _exit(n.load() == 16 && inside.load() == 0 && scree::shared_openmp_runtime().empty() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(OpenMpSharing, OnlyALoadedOpenMpLibrary) {
  EXPECT_FALSE(scree::share_openmp_runtime("libscree-no-such-runtime.so"));
  EXPECT_FALSE(scree::share_openmp_runtime(""));
  EXPECT_FALSE(scree::share_openmp_runtime(nullptr));
  EXPECT_FALSE(scree::share_openmp_runtime("libc.so.6"));  // loaded, but no OpenMP entry points
  EXPECT_EQ(scree::shared_openmp_runtime(), "");
}
#endif

}  // namespace

// The worker pool behind parallel_parts / parallel_for (src/cpu/thread_pool.cpp): every part runs
// exactly once, exceptions reach the caller, a task may itself call parallel_for, callers on
// several threads at once all complete, and a child process after fork() gets a working pool.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

#if !defined(_WIN32)
#include <sys/wait.h>
#include <unistd.h>
#endif

#include "scree/parallel.h"

namespace {

constexpr int64_t kBig = int64_t(1) << 30;  // "bytes" that make parallel_for use threads

TEST(Parallel, EveryPartRunsOnce) {
  for (int parts : {1, 2, 3, 17, 256}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(parts));
    for (int round = 0; round < 20; ++round) scree::parallel_parts(parts, [&](int p) { hits[size_t(p)]++; });
    for (int p = 0; p < parts; ++p) EXPECT_EQ(hits[size_t(p)].load(), 20) << "part " << p << " of " << parts;
  }
}

TEST(Parallel, ForCoversTheRangeOnce) {
  const int64_t n = 100003;
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  scree::parallel_for(n, kBig, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << i;
}

TEST(Parallel, ExceptionsReachTheCaller) {
  EXPECT_THROW(scree::parallel_parts(8, [](int p) {
                 if (p == 5) throw std::runtime_error("part 5");
               }),
               std::runtime_error);
  // The pool still works after a failed job.
  std::atomic<int> sum{0};
  scree::parallel_parts(8, [&](int p) { sum += p; });
  EXPECT_EQ(sum.load(), 28);
}

TEST(Parallel, NestedCallsRunInline) {
  std::atomic<int64_t> total{0};
  scree::parallel_parts(4, [&](int) {
    scree::parallel_for(1000, kBig, [&](int64_t b, int64_t e) { total += e - b; });
  });
  EXPECT_EQ(total.load(), 4000);
}

TEST(Parallel, ConcurrentCallersAllComplete) {
  std::vector<std::thread> callers;
  std::vector<int64_t> sums(8, 0);
  for (int c = 0; c < 8; ++c)
    callers.emplace_back([&, c] {
      for (int round = 0; round < 200; ++round) {
        std::atomic<int64_t> s{0};
        scree::parallel_for(10000, kBig, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) s += i;
        });
        sums[size_t(c)] += s.load();
      }
    });
  for (auto& t : callers) t.join();
  for (int64_t s : sums) EXPECT_EQ(s, int64_t(200) * (int64_t(10000) * 9999 / 2));
}

#if !defined(_WIN32)
TEST(Parallel, ChildAfterForkHasAPool) {
  scree::parallel_parts(4, [](int) {});  // the parent's pool exists before the fork
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::atomic<int> n{0};
    scree::parallel_parts(16, [&](int) { n++; });
    _exit(n.load() == 16 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}
#endif

}  // namespace

// The process-wide worker pool behind scree::parallel_parts / parallel_for (include/scree/parallel.h):
// num_threads() - 1 workers, started on first use, asleep on a condition variable between jobs.
// A job is a task over part indices [0, parts) that the caller and the workers claim from one
// atomic counter. One job at a time: a second caller (another thread, or a task that itself calls
// parallel_for) finds the pool busy and runs its parts alone, which is correct and cannot deadlock.
// Where a framework's OpenMP runtime is shared (openmp_runtime.cpp), jobs run there instead.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if !defined(_WIN32)
#include <unistd.h>
#endif

#include "openmp_runtime.h"
#include "scree/parallel.h"

namespace scree::detail {
namespace {

class ThreadPool {
 public:
  explicit ThreadPool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  bool try_run(int parts, const std::function<void(int)>& task) {
    bool expected = false;
    if (threads_.empty() || !busy_.compare_exchange_strong(expected, true)) return false;
    {
      std::lock_guard<std::mutex> lock(m_);
      task_ = &task;
      parts_ = parts;
      next_.store(0);
      ++generation_;
    }
    wake_.notify_all();
    for (int i = next_.fetch_add(1); i < parts; i = next_.fetch_add(1)) task(i);
    {
      // Every part is claimed; wait until the workers that joined have left the job, so that none
      // can claim from the next job's counter with this job's task.
      std::unique_lock<std::mutex> lock(m_);
      done_.wait(lock, [this] { return active_ == 0; });
      task_ = nullptr;
    }
    busy_.store(false);
    return true;
  }

 private:
  void work() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      // A worker that wakes after its job ended (task_ reset) sleeps on; it joins each job once.
      wake_.wait(lock, [&] { return task_ != nullptr && generation_ != seen; });
      seen = generation_;
      const std::function<void(int)>* task = task_;
      const int parts = parts_;
      ++active_;
      lock.unlock();
      for (int i = next_.fetch_add(1); i < parts; i = next_.fetch_add(1)) (*task)(i);
      lock.lock();
      if (--active_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex m_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* task_ = nullptr;  // the posted job, null between jobs
  int parts_ = 0;
  int active_ = 0;           // workers inside the current job
  uint64_t generation_ = 0;  // jobs posted so far
  std::atomic<int> next_{0};
  std::atomic<bool> busy_{false};
};

// Created on first use and never destroyed: its workers sleep until the process exits (joining them
// from a static destructor can hang an interpreter's shutdown). A child after fork() has none of
// the parent's threads (torch's DataLoader workers fork), so it starts a pool of its own.
ThreadPool& pool() {
  static std::mutex m;
  static ThreadPool* p = nullptr;
  std::lock_guard<std::mutex> lock(m);
#if !defined(_WIN32)
  static pid_t owner = 0;
  if (p == nullptr || owner != getpid()) {
    p = new ThreadPool(num_threads() - 1);
    owner = getpid();
  }
#else
  if (p == nullptr) p = new ThreadPool(num_threads() - 1);
#endif
  return *p;
}

}  // namespace

bool pool_try_run(int parts, const std::function<void(int)>& task) {
  return openmp_try_run(parts, task) || pool().try_run(parts, task);
}

}  // namespace scree::detail

// Sharing a framework's OpenMP runtime (scree::share_openmp_runtime, scree/parallel.h).
// Why: torch runs its CPU ops on OpenMP (libgomp), whose workers spin for a while after each op
// (GOMP_SPINCOUNT) before sleeping. A scree kernel started in that window ran its second thread on
// a core a spinning torch worker held: on this 2-core Xeon, attention right after a torch matmul
// took 1.06-1.44x as long as back to back (benchmarks/NOTES.md, issue 20 step 6). Run on the same
// runtime, the spinning workers are the ones that pick the job up.
// The runtime is reached through its GOMP_parallel entry (the libgomp ABI that compiled
// `#pragma omp parallel` calls; LLVM's and Intel's runtimes export it too), looked up in a library
// the process has already loaded: scree links no OpenMP runtime itself.
#include "openmp_runtime.h"

#include <atomic>
#include <mutex>
#include <string>

#if !defined(_WIN32)
#include <dlfcn.h>
#include <unistd.h>
#endif

#include "scree/parallel.h"

namespace scree {
namespace {

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpMaxThreads = int (*)();
using OmpThreadQuery = int (*)();  // omp_get_thread_num / omp_get_num_threads

struct Shared {
  std::mutex m;
  std::string library;  // "" until shared
  std::atomic<GompParallel> parallel{nullptr};
  std::atomic<OmpMaxThreads> max_threads{nullptr};
  std::atomic<OmpThreadQuery> thread_num{nullptr}, team_threads{nullptr};
  std::atomic<long> owner{0};  // the process that shared it: a fork's child has none of its workers
};

Shared& shared() {
  static Shared* s = new Shared;  // never destroyed: a job may run during interpreter shutdown
  return *s;
}

long this_process() {
#if !defined(_WIN32)
  return long(getpid());
#else
  return 0;
#endif
}

// One parallel region's job. Part i runs on the team's thread i % (team size), not on whichever
// thread claims it first: the runtime keeps thread i the same worker from one region to the next,
// so a part that the caller maps to the same data every call (run_items' thread shares, their
// per-part buffers and output rows) finds that data in its own core's cache. Claimed from a
// counter, the parts changed cores on every call, their buffers and output lines with them. (The
// 4 x 16-token forward's C++ call took 17.1 us on the 16-core host's 16 threads against 39.8 on
// one, for 32 items of ~1.2 us. Fixed, on the 2-core VM: that call -5..-8%, its forward+backward
// -10..-18%; the host not yet measured. benchmarks/NOTES.md, session 43.)
struct Job {
  const std::function<void(int)>* task;
  int parts;
  OmpThreadQuery thread_num, team_threads;
};
void run_parts(void* data) {
  const Job& j = *static_cast<const Job*>(data);
  // The team the runtime gave (it may be smaller than asked), so that every part runs.
  const int team = j.team_threads(), me = j.thread_num();
  for (int i = me; i < j.parts; i += team) (*j.task)(i);
}
}  // namespace

bool share_openmp_runtime(const char* library) {
#if !defined(_WIN32)
  if (library == nullptr || *library == '\0') return false;
  // RTLD_NOLOAD: only a runtime the framework already loaded (a second copy would bring its own
  // workers, the contention this avoids).
  void* handle = dlopen(library, RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return false;
  auto parallel = reinterpret_cast<GompParallel>(dlsym(handle, "GOMP_parallel"));
  auto max_threads = reinterpret_cast<OmpMaxThreads>(dlsym(handle, "omp_get_max_threads"));
  auto thread_num = reinterpret_cast<OmpThreadQuery>(dlsym(handle, "omp_get_thread_num"));
  auto team_threads = reinterpret_cast<OmpThreadQuery>(dlsym(handle, "omp_get_num_threads"));
  if (parallel == nullptr || max_threads == nullptr || thread_num == nullptr || team_threads == nullptr) {
    dlclose(handle);
    return false;
  }
  Shared& s = shared();
  std::lock_guard<std::mutex> lock(s.m);
  s.library = library;
  s.max_threads = max_threads;
  s.thread_num = thread_num;
  s.team_threads = team_threads;
  s.owner = this_process();
  s.parallel.store(parallel);  // last: a job that sees it sees the rest (seq_cst)
  return true;  // the handle stays open: the runtime must outlive every later job
#else
  (void)library;
  return false;
#endif
}

void stop_sharing_openmp_runtime() {
  Shared& s = shared();
  std::lock_guard<std::mutex> lock(s.m);
  s.parallel.store(nullptr);
  s.library.clear();
}

namespace detail {

bool openmp_runtime_shared() {
  const Shared& s = shared();
  return s.parallel.load() != nullptr && s.owner == this_process();
}

}  // namespace detail

std::string shared_openmp_runtime() {
  Shared& s = shared();
  std::lock_guard<std::mutex> lock(s.m);
  return detail::openmp_runtime_shared() ? s.library : std::string();
}

namespace detail {

bool openmp_try_run(int parts, const std::function<void(int)>& task) {
  Shared& s = shared();
  const GompParallel parallel = s.parallel.load();
  if (parallel == nullptr || s.owner != this_process()) return false;
  // The team: the framework's thread count (torch.set_num_threads sets the calling thread's
  // OpenMP default), even for fewer parts (the threads past them find none and return; at most
  // `parts` threads work, so SCREE_NUM_THREADS, already applied to parts, still caps them). A
  // smaller team made libgomp reshape torch's: its next full-width op ran 2x as long, and torch's
  // bf16 SDPA page-faulted 12% more (eq2048 d128 bf16, 16-core host: 7.3 -> 14.9 ms after a
  // 4-part scree job between two calls; after a 16-part one or a 1-part one, which opens no
  // region: 7.1-7.6; benchmarks/NOTES.md, issue 20).
  const int runtime_threads = s.max_threads.load()();
  const int team = runtime_threads > 0 ? runtime_threads : 1;
  Job job{&task, parts, s.thread_num.load(), s.team_threads.load()};
  parallel(run_parts, &job, unsigned(team), 0);
  return true;
}

}  // namespace detail
}  // namespace scree

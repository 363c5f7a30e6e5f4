// scree's CPU jobs on a framework's OpenMP workers (openmp_runtime.cpp), the pool's side of it:
// thread_pool.cpp asks here first and falls back to its own workers.
#pragma once

#include <functional>

namespace scree::detail {

// Runs task(i) for i in [0, parts) in one parallel region of the shared OpenMP runtime (the caller
// is one of its threads) and returns true; false, having run nothing, when no runtime is shared
// (or this process is a fork of the one that shared it).
bool openmp_try_run(int parts, const std::function<void(int)>& task);

}  // namespace scree::detail

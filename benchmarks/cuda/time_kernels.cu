// Kernel-level timing of the CUDA attention path (C++ only, no framework): the TARGETS.md
// workloads (32k tokens, hidden 2048, bf16), forward and backward, median of CUDA-event timings
// over 20 runs after warm-up, useful TFLOP/s. A development tool for kernel iterations; the
// reported comparison against FA-2 / cuDNN is benchmarks/bench_attention_gpu.py (same process,
// same inputs as the baselines).   usage: scree_time_kernels [workload ...]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "scree/attention/cuda.h"

namespace {

using scree::DType;
using scree::attention::VarlenBackwardParams;

#define CHECK(x)                                                                    \
  do {                                                                              \
    cudaError_t rc_ = (x);                                                          \
    if (rc_ != cudaSuccess) {                                                       \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(rc_));                \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

struct Workload {
  std::string name;
  int lo, hi;  // lengths uniform in [lo, hi]; lo == hi: equal lengths
  int d;
  bool causal;
};

std::vector<int> lengths_for(const Workload& w, int total, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> u(w.lo, w.hi);
  std::vector<int> out;
  int sum = 0;
  while (true) {
    int l = u(rng);
    if (sum + l > total) break;
    out.push_back(l), sum += l;
  }
  return out;
}

template <class F>
float median_ms(F&& f, int reps = 20) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    CHECK(cudaEventRecord(a));
    f();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void run(const Workload& w) {
  const int total_target = 32768, hidden = 2048;
  const int H = hidden / w.d;
  const auto L = lengths_for(w, total_target, 0);
  std::vector<int32_t> off{0};
  double flops = 0;
  int max_len = 0;
  for (int l : L) {
    off.push_back(off.back() + l);
    flops += 4.0 * l * l * w.d * H * (w.causal ? 0.5 : 1.0);
    max_len = std::max(max_len, l);
  }
  const int64_t T = off.back();
  const size_t n = size_t(T) * H * w.d;
  std::vector<__nv_bfloat16> host(n);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (auto& x : host) x = __float2bfloat16(normal(rng));
  void *q, *k, *v, *o, *g, *dq, *dk, *dv, *cu, *ws;
  float* lse;
  for (void** p : {&q, &k, &v, &o, &g, &dq, &dk, &dv}) CHECK(cudaMalloc(p, n * 2));
  for (void* p : {q, k, v, g}) CHECK(cudaMemcpy(p, host.data(), n * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&lse, size_t(T) * H * 4));
  CHECK(cudaMalloc(&cu, off.size() * 4));
  CHECK(cudaMemcpy(cu, off.data(), off.size() * 4, cudaMemcpyHostToDevice));

  VarlenBackwardParams p;
  p.dtype = DType::BFloat16;
  p.q = q, p.k = k, p.v = v, p.out = o, p.lse = lse;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = p.out_row_stride = int64_t(H) * w.d;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.out_head_stride = w.d;
  p.cu_seqlens_q = p.cu_seqlens_k = {cu, false};
  p.num_sequences = int64_t(L.size()), p.total_q = p.total_k = T, p.max_seqlen_q = p.max_seqlen_k = max_len;
  p.heads_q = p.heads_k = H, p.head_dim = p.head_dim_v = w.d;
  p.scale = 1.0 / std::sqrt(double(w.d)), p.causal = w.causal;
  p.dout = g, p.dout_row_stride = int64_t(H) * w.d, p.dout_head_stride = w.d;
  p.dq = dq, p.dk = dk, p.dv = dv, p.lse_in = lse;
  p.dq_row_stride = p.dk_row_stride = p.dv_row_stride = int64_t(H) * w.d;
  p.dq_head_stride = p.dk_head_stride = p.dv_head_stride = w.d;
  // The larger one: deterministic, on the portable path (which always keeps the fp32 dq accumulator
  // that the Hopper kernel leaves out where every sequence's keys fit one tile).
  setenv("SCREE_CUDA_PATH", "sm80", 1);
  const size_t ws_bytes = scree::attention::varlen_bwd_cuda_workspace_bytes(p, true);
  unsetenv("SCREE_CUDA_PATH");
  CHECK(cudaMalloc(&ws, ws_bytes));

  // Each kernel on both paths where the card has the Hopper one (SCREE_CUDA_PATH forces a path).
  auto on = [&](const char* path, auto&& f) {
    setenv("SCREE_CUDA_PATH", path, 1);
    const float ms = median_ms(f);
    unsetenv("SCREE_CUDA_PATH");
    return ms;
  };
  setenv("SCREE_CUDA_PATH", "sm90", 1);
  const std::string path = scree::attention::cuda_forward_path(p);
  unsetenv("SCREE_CUDA_PATH");
  // The forward as scree's torch glue calls it: a workspace zeroed once (each forward leaves its
  // tile counter zero, so no memset runs before the kernel) and the packed-tile schedule kept
  // between calls (written by the first). fwd_memset: the same with the counter zeroed each call.
  void *fws = nullptr, *sched = nullptr;
  const size_t fws_bytes = scree::attention::varlen_fwd_cuda_workspace_bytes(p.total_q, p.num_sequences);
  const size_t sched_bytes = scree::attention::cuda_tile_schedule_bytes(p.total_q, p.num_sequences);
  CHECK(cudaMalloc(&fws, fws_bytes));
  CHECK(cudaMemset(fws, 0, fws_bytes));
  CHECK(cudaMalloc(&sched, sched_bytes));
  scree::attention::VarlenParams fp = p;
  fp.tile_schedule = sched, fp.tile_schedule_bytes = sched_bytes;
  auto fwd_with = [&](bool zeroed) {
    fp.workspace_counter_zero = zeroed;
    fp.tile_schedule_ready = scree::attention::varlen_fwd_cuda(fp, fws, fws_bytes, nullptr);
  };
  auto fwd = [&] { fwd_with(true); };
  auto fwd_memset = [&] { fwd_with(false); };
  auto bwd = [&] { scree::attention::varlen_bwd_cuda(p, ws, ws_bytes, false, nullptr); };
  auto bwd_det = [&] { scree::attention::varlen_bwd_cuda(p, ws, ws_bytes, true, nullptr); };
  const float f90 = on(path.c_str(), fwd), f80 = path != "sm80" ? on("sm80", fwd) : f90;
  const float f90_memset = on(path.c_str(), fwd_memset);
  const float b90 = on(path.c_str(), bwd), b80 = path != "sm80" ? on("sm80", bwd) : b90;
  const float bdet = on(path.c_str(), bwd_det);
  const double bf = 2.5 * flops / 1e9;
  std::printf("%-20s seqs %4zu  fwd[%s] %7.3f ms %6.1f TFLOP/s (memset %7.3f) | fwd[sm80] %6.1f | bwd[%s] %7.3f ms "
              "%6.1f | bwd[sm80] %6.1f | bwd det[%s] %6.1f\n",
              w.name.c_str(), L.size(), path.c_str(), f90, flops / f90 / 1e9, f90_memset, flops / f80 / 1e9,
              path.c_str(), b90, bf / b90, bf / b80, path.c_str(), bf / bdet);
  for (void* ptr : {q, k, v, o, g, dq, dk, dv, cu, ws, fws, sched}) cudaFree(ptr);
  cudaFree(lse);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<Workload> all = {
      {"eq2048 d128", 2048, 2048, 128, false}, {"eq8192 d128 causal", 8192, 8192, 128, true},
      {"mix d128", 64, 4096, 128, false},      {"mix d128 causal", 64, 4096, 128, true},
      {"short d128", 16, 512, 128, false},     {"short d128 causal", 16, 512, 128, true},
      {"mix d64", 64, 4096, 64, false},        {"short d64", 16, 512, 64, false},
      {"tiny d128", 1, 64, 128, false},        {"tiny d128 causal", 1, 64, 128, true},
      {"tiny d64", 1, 64, 64, false},
      // Long causal of mixed lengths (~7 sequences of 512..8192): where 80-query causal steps pay.
      {"longmix d128 causal", 512, 8192, 128, true},
  };
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  for (const auto& w : all) {
    bool pick = argc == 1;
    for (int i = 1; i < argc; ++i) pick |= w.name.find(argv[i]) != std::string::npos;
    if (!pick) continue;
    try {
      run(w);
    } catch (const std::exception& e) {
      std::printf("%-20s FAILED: %s\n", w.name.c_str(), e.what());
    }
  }
}

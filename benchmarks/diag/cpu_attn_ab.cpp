// A/B timing of the CPU attention kernels of the amx build (src/cpu/attention: fwd.cpp, bwd.cpp,
// fwd_amx.cpp, bwd_amx.cpp and their headers) outside Python, for measurement only (not part of
// scree). cpu_attn_ab.sh builds one binary per copy of the kernel folder and runs them alternately.
// Usage: BIN fwd|bwd f32|bf16 [calls] [workload substrings..., or =NAME for one workload exactly]
// (AB_COLD_MB=N: N MB written between calls, so each call starts with its inputs out of cache);
// one line per workload: name, best and median GFLOP/s of `calls` calls (useful FLOPs as
// bench_attention_cpu.py counts them: the backward alone 2.5x the forward's), and checksums of the outputs (same seeded inputs, so two
// versions that compute the same bits print the same sums). Inputs are 64-byte aligned, as torch's
// CPU allocations are.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "amx_os.h"
#include "scree/attention/params.h"

namespace scree::cpu::amx {
void varlen_fwd(const attention::VarlenParams& p);
void varlen_bwd(const attention::VarlenBackwardParams& p);
}  // namespace scree::cpu::amx

namespace {

uint16_t bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return uint16_t((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

float from_bf16(uint16_t b) {
  uint32_t x = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// A buffer of n elements of `bytes` each, 64-byte aligned.
struct Buf {
  void* p;
  size_t n, bytes;
  Buf(size_t n_, size_t bytes_) : n(n_), bytes(bytes_) {
    p = std::aligned_alloc(64, (n * bytes + 63) / 64 * 64);
    std::memset(p, 0, n * bytes);
  }
  ~Buf() { std::free(p); }
  float get(size_t i) const {
    return bytes == 4 ? static_cast<const float*>(p)[i] : from_bf16(static_cast<const uint16_t*>(p)[i]);
  }
  void set(size_t i, float x) {
    if (bytes == 4)
      static_cast<float*>(p)[i] = x;
    else
      static_cast<uint16_t*>(p)[i] = bf16(x);
  }
  double abs_sum() const {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += std::fabs(get(i));
    return s;
  }
};

std::vector<int64_t> lengths(const std::string& kind, int64_t tokens, std::mt19937_64& rng) {
  std::vector<int64_t> lens;
  if (kind == "call") return {16, 16, 16, 16};  // bench_attention_cpu.py's per-call batch
  if (kind.rfind("eq", 0) == 0) {
    const int64_t L = std::stoll(kind.substr(2));
    for (int64_t t = 0; t + L <= tokens; t += L) lens.push_back(L);
    return lens;
  }
  const int64_t lo = kind == "mix" ? 16 : 8, hi = kind == "mix" ? 1024 : 128;
  std::uniform_int_distribution<int64_t> u(lo, hi);
  int64_t sum = 0;
  while (sum < tokens) lens.push_back(u(rng)), sum += lens.back();
  return lens;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s fwd|bwd f32|bf16 [calls] [workloads...]\n", argv[0]);
    return 2;
  }
  const bool bwd = std::string(argv[1]) == "bwd", f32 = std::string(argv[2]) == "f32";
  // float32 runs the build's vector code (no tile instruction), and so does bfloat16 in a build
  // without SCREE_CPU_AMX (cpu_attn_ab.sh's AB_BUILD): only the amx build's bf16 needs the tiles.
#if defined(SCREE_CPU_AMX)
  if (!f32 && !scree::cpu::amx_bf16_usable()) {
    std::fprintf(stderr, "no AMX\n");
    return 1;
  }
#endif
  const int calls = argc > 3 ? std::atoi(argv[3]) : 10;
  std::vector<std::string> only(argv + std::min(argc, 4), argv + argc);
  // Heads x head dim (the rows' stride): 512 as bench_attention_cpu.py, or AB_HIDDEN.
  const int64_t hidden = std::getenv("AB_HIDDEN") ? std::atoll(std::getenv("AB_HIDDEN")) : 512;
  // AB_COLD_MB: before each timed call, write that many MB of another buffer, so that the call finds
  // its inputs in DRAM as a call between other work does (benchmarks/diag/cpu_cold_call.py); 0: the
  // calls run back to back, their inputs in cache as far as they fit.
  const size_t cold = std::getenv("AB_COLD_MB") ? size_t(std::atoll(std::getenv("AB_COLD_MB"))) << 20 : 0;
  std::vector<char> sweep(cold);
  auto evict = [&] {
    for (size_t i = 0; i < cold; i += 64) sweep[i] = char(sweep[i] + 1);
  };
  std::mt19937_64 rng(0);
  for (const char* kind : {"eq1024", "eq2048", "mix", "short", "call"})
    for (auto [D, causal] : {std::pair{64, false}, {128, false}, {128, true}, {64, true}}) {
      // The per-call batch only as bench_attention_cpu.py times it (d64 causal), the others without it.
      if ((std::string(kind) == "call") != (D == 64 && causal)) continue;
      const std::string name = std::string(kind) + " d" + std::to_string(D) + (causal ? " causal" : "");
      const std::vector<int64_t> lens = lengths(kind, 4096, rng);
      if (!only.empty() &&
          std::none_of(only.begin(), only.end(), [&](const std::string& s) {
            return s[0] == '=' ? name == s.substr(1) : name.find(s) != std::string::npos;
          }))
        continue;
      const int64_t H = hidden / D;
      std::vector<int64_t> cu(1, 0);
      for (int64_t L : lens) cu.push_back(cu.back() + L);
      const int64_t T = cu.back();
      const size_t n = size_t(T * H * D), eb = f32 ? 4 : 2;
      Buf q(n, eb), k(n, eb), v(n, eb), out(n, eb), dout(n, eb), dq(n, eb), dk(n, eb), dv(n, eb);
      std::vector<float> lse(H * T);
      std::normal_distribution<float> nd;
      std::mt19937_64 g(42);
      for (Buf* x : {&q, &k, &v, &dout})
        for (size_t i = 0; i < n; ++i) x->set(i, nd(g));
      scree::attention::VarlenBackwardParams p;
      p.dtype = f32 ? scree::DType::Float32 : scree::DType::BFloat16;
      p.q = q.p, p.k = k.p, p.v = v.p, p.out = out.p, p.lse = lse.data();
      p.q_row_stride = p.k_row_stride = p.v_row_stride = p.out_row_stride = H * D;
      p.q_head_stride = p.k_head_stride = p.v_head_stride = p.out_head_stride = D;
      p.cu_seqlens_q = p.cu_seqlens_k = {cu.data(), true};
      p.num_sequences = int64_t(lens.size());
      p.total_q = p.total_k = T;
      p.max_seqlen_q = p.max_seqlen_k = *std::max_element(lens.begin(), lens.end());
      p.heads_q = p.heads_k = H;
      p.head_dim = p.head_dim_v = D;
      p.scale = 1.0 / std::sqrt(double(D));
      p.causal = causal;
      // AB_SOFTCAP: a softcap (tanh) on every score, as Gemma-2-style models use.
      if (std::getenv("AB_SOFTCAP")) p.softcap = std::atof(std::getenv("AB_SOFTCAP"));
      p.dout = dout.p, p.dq = dq.p, p.dk = dk.p, p.dv = dv.p, p.lse_in = lse.data();
      p.dout_row_stride = p.dq_row_stride = p.dk_row_stride = p.dv_row_stride = H * D;
      p.dout_head_stride = p.dq_head_stride = p.dk_head_stride = p.dv_head_stride = D;
      double flops = 0;
      for (int64_t L : lens) flops += 4.0 * L * L * D * H;
      if (causal) flops /= 2;
      if (bwd) flops *= 2.5;
      scree::cpu::amx::varlen_fwd(p);  // the backward's out and lse; warm-up
      if (bwd) scree::cpu::amx::varlen_bwd(p);
      std::vector<double> t;
      for (int c = 0; c < calls; ++c) {
        evict();
        const auto t0 = std::chrono::steady_clock::now();
        if (bwd)
          scree::cpu::amx::varlen_bwd(p);
        else
          scree::cpu::amx::varlen_fwd(p);
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(t.begin(), t.end());
      double lsum = 0;
      for (float l : lse) lsum += l;
      std::printf("%-20s best %7.1f median %7.1f GFLOP/s  sums %.6e %.6e", name.c_str(), flops / t[0] / 1e9,
                  flops / t[t.size() / 2] / 1e9, out.abs_sum(), lsum);
      if (bwd) std::printf(" %.6e %.6e %.6e", dq.abs_sum(), dk.abs_sum(), dv.abs_sum());
      std::printf("\n");
    }
  return 0;
}

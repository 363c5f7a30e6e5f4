// A/B timing of the AMX bf16 attention forward (src/cpu/attention/fwd_amx.cpp) outside Python, for
// measurement only (not part of scree). Build one binary per version of fwd_amx.cpp (a copy of
// the file and of the amx_tiles.h / vec512.h it should see, in one folder, is picked up first by
// its quoted includes), then run the binaries alternately (benchmarks/diag/amx_fwd_ab.sh):
//   g++ -O3 -std=c++17 -DSCREE_CPU_ISA=amx -DSCREE_CPU_AMX=1 $AMX_FLAGS (CMakeLists.txt's) -ffp-contract=fast
//       -Iinclude -Isrc/cpu/attention benchmarks/diag/amx_fwd_ab.cpp DIR/fwd_amx.cpp
//       src/cpu/thread_pool.cpp -lpthread -o BIN
// Usage: BIN [calls] [workload substrings...]; prints one line per workload: name, best and median
// GFLOP/s of `calls` calls (useful FLOPs as bench_attention_cpu.py counts them), and a checksum of
// the output (to compare versions: same inputs, seeded).
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
#include "fwd_amx.h"
#include "scree/attention/params.h"

namespace {

struct Workload {
  std::string name;
  std::vector<int64_t> lens;
  int64_t D;
  bool causal;
};

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

std::vector<int64_t> lengths(const std::string& kind, int64_t tokens, std::mt19937_64& rng) {
  std::vector<int64_t> lens;
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
  if (!scree::cpu::amx_bf16_usable()) {
    std::fprintf(stderr, "no AMX\n");
    return 1;
  }
  const int calls = argc > 1 ? std::atoi(argv[1]) : 10;
  std::vector<std::string> only(argv + std::min(argc, 2), argv + argc);
  std::mt19937_64 rng(0);
  std::vector<Workload> wls;
  for (const char* kind : {"eq1024", "eq2048", "mix", "short"})
    for (auto [D, causal] : {std::pair{64, false}, {128, false}, {128, true}}) {
      const std::string name = std::string(kind) + " d" + std::to_string(D) + (causal ? " causal" : "");
      wls.push_back({name, lengths(kind, 4096, rng), D, causal});
    }
  for (const Workload& w : wls) {
    if (!only.empty() && std::none_of(only.begin(), only.end(), [&](const std::string& s) {
          return w.name.find(s) != std::string::npos;
        }))
      continue;
    const int64_t H = 512 / w.D, D = w.D;
    std::vector<int64_t> cu(1, 0);
    for (int64_t L : w.lens) cu.push_back(cu.back() + L);
    const int64_t T = cu.back();
    std::vector<uint16_t> q(T * H * D), k(T * H * D), v(T * H * D), out(T * H * D);
    std::vector<float> lse(H * T);
    std::normal_distribution<float> nd;
    std::mt19937_64 g(42);
    for (auto* x : {&q, &k, &v})
      for (auto& e : *x) e = bf16(nd(g));
    // AMX_AB_RISE=r: key t of a sequence of length L scaled by 1 + r t / (L sqrt(D)), so that the
    // rows' maxima rise across key blocks (fwd_amx.cpp's one-pass softmax and its redo).
    if (const char* rise = std::getenv("AMX_AB_RISE"))
      for (size_t b = 0; b + 1 < cu.size(); ++b)
        for (int64_t t = cu[b]; t < cu[b + 1]; ++t)
          for (int64_t e = 0; e < H * D; ++e)
            k[t * H * D + e] = bf16(from_bf16(k[t * H * D + e]) *
                                    float(1 + std::atof(rise) * double(t - cu[b]) / double(cu[b + 1] - cu[b]) /
                                                  std::sqrt(double(D))));
    scree::attention::VarlenParams p;
    p.dtype = scree::DType::BFloat16;
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.lse = lse.data();
    p.q_row_stride = p.k_row_stride = p.v_row_stride = p.out_row_stride = H * D;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = p.out_head_stride = D;
    p.cu_seqlens_q = p.cu_seqlens_k = {cu.data(), true};
    p.num_sequences = int64_t(w.lens.size());
    p.total_q = p.total_k = T;
    p.max_seqlen_q = p.max_seqlen_k = *std::max_element(w.lens.begin(), w.lens.end());
    p.heads_q = p.heads_k = H;
    p.head_dim = p.head_dim_v = D;
    p.scale = 1.0 / std::sqrt(double(D));
    p.causal = w.causal;
    double flops = 0;
    for (int64_t L : w.lens) flops += 4.0 * L * L * D * H;
    if (w.causal) flops /= 2;
    std::vector<double> t;
    scree::cpu::amx::forward_bf16_amx(p);  // warm-up
    for (int c = 0; c < calls; ++c) {
      const auto t0 = std::chrono::steady_clock::now();
      scree::cpu::amx::forward_bf16_amx(p);
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    double sum = 0, lsum = 0;
    for (uint16_t o : out) sum += std::fabs(from_bf16(o));
    for (float l : lse) lsum += l;
    std::printf("%-20s best %7.1f median %7.1f GFLOP/s  |out| %.6e lse %.6e\n", w.name.c_str(), flops / t[0] / 1e9,
                flops / t[t.size() / 2] / 1e9, sum, lsum);
  }
  return 0;
}

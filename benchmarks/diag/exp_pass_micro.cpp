// Microbenchmark of the CPU forward's exp pass on its own: e^(s - shift) over an S^T block (n key
// rows x cols query columns, one vector of columns at a time down the key rows, sums kept), as
// fwd.cpp runs it. Compares simd.h's vexp<float, true> one vector at a time, vexp_lanes in
// lockstep of 2, 4 and 8, and the single-vector form simd.h had before the lockstep (kept here only
// as the baseline: a clamp and final select, 2^n through an int conversion, degree-6 Taylor; with
// AVX-512, the VSCALEFPS form with degree-6 Taylor and two selects that the AVX-512 build had).
// Prints ns per vector. Build (AVX2 build's flags; for AVX-512 add
// -mavx512f -mavx512bw -mavx512vl -mavx512dq) and run:
//   g++ -O3 -std=c++17 -DSCREE_CPU_ISA=avx2 -mavx2 -mfma -mf16c -ffp-contract=fast \
//     -Isrc/cpu/attention benchmarks/diag/exp_pass_micro.cpp -o /tmp/exp_pass_micro && /tmp/exp_pass_micro 96 96
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "simd.h"

using namespace scree::cpu::SCREE_CPU_ISA;
using V = vec_t<float>;
using I = Simd<float>::ivec;
constexpr int W = Simd<float>::width;

V exp_before(V x) {
#if defined(__AVX512F__)
  const __m512 xv = reinterpret_cast<__m512>(x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xv, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xv);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 q = _mm512_set1_ps(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(c));
  V out = reinterpret_cast<V>(_mm512_scalef_ps(q, n));
  out = x < splat<float>(-87.3365447504f) ? splat<float>(0.f) : out;
  return x > splat<float>(88.3762626647949f) ? splat<float>(__builtin_inff()) : out;
#else
  const V lo = splat<float>(-87.3365447504f);
  const auto under = x < lo;
  const V xc = under ? lo : x;
  const V magic = splat<float>(12582912.0f);
  const V n = (xc * 1.44269504088896341f + magic) - magic;
  V r = xc - n * 0.693145751953125f;
  r = r - n * 1.42860682030941723212e-6f;
  V p = splat<float>(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = p * r + c;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const V out = p * scale;
  return under ? splat<float>(0.f) : out;
#endif
}

// U = 0: exp_before one vector at a time; 1: vexp<float, true>; else vexp_lanes<float, U, true>.
template <int U>
__attribute__((noinline)) void pass(const float* st, float* pt, float* l, int n, int cols, float sh) {
  constexpr int G = U < 1 ? 1 : U;
  for (int c = 0; c < cols; c += W) {
    const V shift = splat<float>(sh);
    V sum{};
    int j = 0;
    for (; j + G <= n; j += G) {
      V e[G];
      for (int u = 0; u < G; ++u) e[u] = load<float>(st + (j + u) * cols + c) - shift;
      if constexpr (U == 0) e[0] = exp_before(e[0]);
      else if constexpr (U == 1) e[0] = vexp<float, true>(e[0]);
      else vexp_lanes<float, G, true>(e);
      for (int u = 0; u < G; ++u) store<float>(pt + (j + u) * cols + c, e[u]), sum += e[u];
    }
    for (; j < n; ++j) {
      const V e = vexp<float, true>(load<float>(st + j * cols + c) - shift);
      store<float>(pt + j * cols + c, e), sum += e;
    }
    store<float>(l + c, sum);
  }
}

template <int U>
void run(const char* name, int n, int cols) {
  const int reps = 20000;
  std::vector<float> st(size_t(n) * cols), pt(st.size()), l(cols);
  for (float& x : st) x = -float(std::rand() % 1000) / 100.f;
  const auto t0 = std::chrono::steady_clock::now();
  for (int rep = 0; rep < reps; ++rep) pass<U>(st.data(), pt.data(), l.data(), n, cols, 0.1f * float(rep & 1));
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%-34s %6.2f ns a vector (l[0] %.3f: keeps the work)\n", name, t / (double(reps) * n * cols / W) * 1e9, l[0]);
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 96, cols = argc > 2 ? std::atoi(argv[2]) : 96;
  for (int round = 0; round < 2; ++round) {
    run<0>("before (single, degree 6)", n, cols);
    run<1>("vexp<float, true> (single)", n, cols);
    run<2>("vexp_lanes<float, 2, true>", n, cols);
    run<4>("vexp_lanes<float, 4, true>", n, cols);
    run<8>("vexp_lanes<float, 8, true>", n, cols);
  }
}

// Compiled once per CPU attention build with that build's flags (tests/cpp/CMakeLists.txt): the
// exponentials of simd.h over given inputs, for test_simd_exp.cpp to compare with std::exp. It
// asserts nothing itself; the test, compiled without the ISA flags, calls it only where the CPU
// has the instructions.
#include <cstdint>
#include <cstring>

#include "simd.h"

#define SCREE_PROBE_NAME2(isa) scree_simd_exp_probe_##isa
#define SCREE_PROBE_NAME(isa) SCREE_PROBE_NAME2(isa)

// e^x of x[0 .. n) (n a multiple of the width times kExpLanes): general (vexp<float>), nonpos
// (vexp<float, true>, one vector at a time) and lanes (vexp_nonpositive<float, kExpLanes>).
extern "C" void SCREE_PROBE_NAME(SCREE_CPU_ISA)(const float* x, int64_t n, float* general, float* nonpos,
                                                 float* lanes) {
  using namespace scree::cpu::SCREE_CPU_ISA;
  using V = vec_t<float>;
  constexpr int W = Simd<float>::width;
  for (int64_t i = 0; i < n; i += W) {
    store<float>(general + i, vexp<float>(load<float>(x + i)));
    store<float>(nonpos + i, vexp<float, true>(load<float>(x + i)));
  }
  for (int64_t i = 0; i < n; i += W * kExpLanes) {
    V v[kExpLanes];
    for (int u = 0; u < kExpLanes; ++u) v[u] = load<float>(x + i + u * W);
    vexp_nonpositive<float, kExpLanes>(v);
    for (int u = 0; u < kExpLanes; ++u) store<float>(lanes + i + u * W, v[u]);
  }
}

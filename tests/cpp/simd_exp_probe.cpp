// Compiled once per CPU attention build with that build's flags (tests/cpp/CMakeLists.txt): the
// exponentials of simd.h over given inputs, for test_simd_exp.cpp to compare with std::exp. It
// asserts nothing itself; the test, compiled without the ISA flags, calls it only where the CPU
// has the instructions.
#include <cstdint>
#include <cstring>

#include "simd.h"

#define SCREE_PROBE_NAME2(isa) scree_simd_exp_probe_##isa
#define SCREE_PROBE_NAME(isa) SCREE_PROBE_NAME2(isa)

// e^x of x[0 .. n) (n a multiple of the width times kExpLanes) one vector at a time, general
// (vexp<float>) and non-positive (vexp<float, true>), and kExpLanes at a time (vexp_lanes), general
// and non-positive.
extern "C" void SCREE_PROBE_NAME(SCREE_CPU_ISA)(const float* x, int64_t n, float* general, float* nonpos,
                                                 float* lanes_general, float* lanes) {
  using namespace scree::cpu::SCREE_CPU_ISA;
  using V = vec_t<float>;
  constexpr int W = Simd<float>::width;
  for (int64_t i = 0; i < n; i += W) {
    store<float>(general + i, vexp<float>(load<float>(x + i)));
    store<float>(nonpos + i, vexp<float, true>(load<float>(x + i)));
  }
  for (int64_t i = 0; i < n; i += W * kExpLanes) {
    V v[kExpLanes], w[kExpLanes];
    for (int u = 0; u < kExpLanes; ++u) v[u] = w[u] = load<float>(x + i + u * W);
    vexp_lanes<float, kExpLanes, false>(w);
    vexp_lanes<float, kExpLanes, true>(v);
    for (int u = 0; u < kExpLanes; ++u) store<float>(lanes_general + i + u * W, w[u]), store<float>(lanes + i + u * W, v[u]);
  }
}

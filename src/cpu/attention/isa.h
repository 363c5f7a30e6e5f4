// The instruction-set namespace of the CPU attention sources. Every template in these headers
// lives in an inline namespace per ISA (scree::cpu::avx2, scree::cpu::generic): the same template
// compiled with and without -mavx2 must not become one weak symbol that the linker picks at random
// (it did, and the AVX2 kernels ran the portable code: 3 vs 114 GFLOP/s).
#pragma once

#ifndef SCREE_CPU_ISA
#error "SCREE_CPU_ISA must name the instruction-set variant (see CMakeLists.txt)"
#endif

#define SCREE_CPU_NAMESPACE_BEGIN \
  namespace scree::cpu {          \
  inline namespace SCREE_CPU_ISA {
#define SCREE_CPU_NAMESPACE_END \
  }                             \
  }

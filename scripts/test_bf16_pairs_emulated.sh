#!/usr/bin/env bash
# The avx512bf16 build's bfloat16 forward (src/cpu/attention/bf16_pairs.h: Q, K, P and V as bf16
# pairs for VDPBF16PS) on a machine without AVX512-BF16: builds the C++ tests with
# SCREE_CPU_BF16_PAIRS_EMULATED, which gives the avx2, avx512 and portable builds the same pair
# operations in plain C++, and runs the attention tests forced to the avx2 and portable builds, so
# the pairs' layout, masking and odd lengths are checked against the fp64 reference wherever the
# suite runs (scripts/test.sh calls it). The instruction itself is tested where a CPU has it
# (tests/python/test_cpu_isa.py, SCREE_CPU_ISA=avx512bf16).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=${BF16_PAIRS_BUILD_DIR:-build/cpp-bf16-pairs-emulated}
cmake -S . -B "$dir" -G Ninja -DSCREE_BUILD_TESTS=ON -DSCREE_CUDA=OFF "-DSCREE_CPU_BUILDS=generic;avx2" \
  -DCMAKE_CXX_FLAGS=-DSCREE_CPU_BF16_PAIRS_EMULATED >/dev/null
cmake --build "$dir" --target scree_cpp_tests
for isa in avx2 generic; do
  echo "bf16 pairs, emulated, SCREE_CPU_ISA=$isa"
  SCREE_CPU_ISA=$isa "$dir/tests/cpp/scree_cpp_tests" --gtest_filter='AttentionFwd*' --gtest_brief=1
done

#!/usr/bin/env bash
# Runs every test: sets the machine up (scripts/setup.sh), builds and runs the C++ GoogleTest suite
# with ctest, then the Python suite with pytest, then builds the docs with warnings as errors. CUDA tests skip where there is no GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Without a GPU (CI) nothing could run CUDA code: the Python extension is built without it, and
# the C++ test build compiles one CUDA instance per path (head dim 64, bf16, for sm_80 and the
# sm_90a Hopper forward: ~2.5 min on 2 cores)
# when nvcc is present, so that a broken kernel cannot land unseen. With a GPU: everything.
if nvidia-smi -L >/dev/null 2>&1; then
  CPP_CUDA=(-DSCREE_CUDA="${SCREE_CUDA:-AUTO}")
else
  export SCREE_CUDA=${SCREE_CUDA:-OFF}
  CPP_CUDA=(-DSCREE_CUDA=AUTO "-DSCREE_CUDA_ARCHS=80;90a" -DSCREE_HEADDIMS=64 -DSCREE_CUDA_DTYPES=bf16)
fi
# Each phase's seconds go to the log (CI must end inside 30 minutes: the log says where they went).
t0=$SECONDS
phase() { echo "test.sh: $1 took $((SECONDS - t0)) s"; t0=$SECONDS; }
source scripts/setup.sh test
PY=${PYTHON:-python3}
phase "setup (installs, the editable build)"

# The C++ tests compile only the CPU kernel builds this machine runs (as the extension's own run-time
# check sees them, SCREE_CPU_ISA capping it): a build it lacks would run the best one below it anyway.
# The extension (setup.sh) compiled every build, so one that does not compile has failed already.
# On a 2-core AVX2 machine this is 3 of the 5 builds (~160 s) less.
cpu_builds=generic
for isa in avx2 avx512 avx512bf16 amx; do
  if [ "$(SCREE_CPU_ISA=$isa "$PY" -c 'from scree import _C; print(_C.cpu_isa())')" = "$isa" ]; then
    cpu_builds="$cpu_builds;$isa"
  fi
done
echo "C++ tests: CPU kernel builds $cpu_builds"
cmake -S . -B build/cpp -G Ninja -DSCREE_BUILD_TESTS=ON "${CPP_CUDA[@]}" "-DSCREE_CPU_BUILDS=$cpu_builds" >/dev/null
cmake --build build/cpp
phase "C++ test build"
ctest --test-dir build/cpp --output-on-failure -j 2
phase "ctest"
# The avx512bf16 build's bf16 pairs in plain C++ (no CPU here need have AVX512-BF16): ~1.3 min on 2 cores.
bash scripts/test_bf16_pairs_emulated.sh
phase "bf16 pairs, emulated (build and tests)"

"$PY" -m pytest tests/python -q "$@"
phase "pytest"

bash scripts/docs.sh
phase "docs"

#!/usr/bin/env bash
# Runs every test: sets the machine up (scripts/setup.sh), builds and runs the C++ GoogleTest suite
# with ctest, then the Python suite with pytest. CUDA tests skip where there is no GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh test
PY=${PYTHON:-python3}

cmake -S . -B build/cpp -G Ninja -DSCREE_BUILD_TESTS=ON -DSCREE_CUDA="${SCREE_CUDA:-OFF}" >/dev/null
cmake --build build/cpp
ctest --test-dir build/cpp --output-on-failure

"$PY" -m pytest tests/python -q "$@"

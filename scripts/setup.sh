#!/usr/bin/env bash
# Installs everything scree needs on a fresh machine from this repo's own files: the build tools,
# torch (the CPU build on this project's machines, only when torch is missing), JAX and MLX (CPU;
# only when missing), GoogleTest for the
# C++ tests, and scree itself (editable, with its test, benchmark and docs extras). Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore)

"${PIP[@]}" "scikit-build-core>=0.10" "nanobind>=2.4" numpy
if ! "$PY" -c "import torch" 2>/dev/null; then
  # 2.13.0 is the CPU wheel on this project's machines; an unpinned torch would pull a CUDA build.
  "${PIP[@]}" "torch==2.13.0"
fi
# JAX (CPU) and MLX (its CPU build on Linux) for the cross-backend tests, pinned to versions that
# install here. Before scree's own build, which compiles the XLA FFI handlers when jax imports.
# Not fatal: a framework that cannot be installed has its tests skip, naming the import error.
if ! "$PY" -c "import jax" 2>/dev/null; then
  "${PIP[@]}" "jax==0.10.2" "jaxlib==0.10.2" || echo "setup.sh: jax did not install; its tests will skip" >&2
fi
if ! "$PY" -c "import mlx.core" 2>/dev/null; then
  if [ "$(uname -s)" = "Darwin" ]; then MLX="mlx==0.32.4"; else MLX="mlx[cpu]==0.32.4"; fi
  "${PIP[@]}" "$MLX" || echo "setup.sh: $MLX did not install; its tests will skip" >&2
fi
# transformers for the HuggingFace integration (scree.integrations.transformers), its tests and
# examples/04; pinned to the version tested here. Not fatal: without it those tests skip.
if ! "$PY" -c "import transformers" 2>/dev/null; then
  "${PIP[@]}" "transformers==5.24.0" || echo "setup.sh: transformers did not install; its tests will skip" >&2
fi
# kernels (HuggingFace's Kernel Hub loader): register_kernel() serves continuous batching through its
# local overrides. transformers 5.24 asks for 0.18.2 <= kernels < 0.19, which the package index does
# not have; 0.17.2 has the same local-override API (the test bypasses transformers' version check
# and says so). Not fatal: without it that test skips.
if ! "$PY" -c "import kernels" 2>/dev/null; then
  "${PIP[@]}" "kernels==0.17.2" || echo "setup.sh: kernels did not install; the generate_batch test will skip" >&2
fi
if [ "${1:-}" = "test" ] && [ ! -f /usr/include/gtest/gtest.h ]; then
  if command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq libgtest-dev >/dev/null
  else
    echo "GoogleTest headers missing and no apt-get: install googletest to run the C++ tests" >&2
    exit 1
  fi
fi
# Editable install; scikit-build-core keeps its build dir under build/ so rebuilds are incremental.
"${PIP[@]}" --no-build-isolation -e ".[test,bench,docs]"

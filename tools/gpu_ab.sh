#!/usr/bin/env bash
# Kernel experiments in one GPU call: builds benchmarks/cuda/time_kernels once per variant (each a
# set of compile-time switches, e.g. -DSCREE_SM90_BLOCK_N=176), in parallel, then times every
# variant on the same card, one after another, so their numbers compare. Optionally profiles the
# first variant with Nsight Compute (PROFILE="workload name"). Writes OUTDIR/ab.txt (the timings),
# OUTDIR/build-NAME.log and OUTDIR/ncu.txt.
#
#   usage: tools/gpu_ab.sh OUTDIR "name:-DFLAG=1 -DOTHER=2" "base:" ...
#   environment: AB_HEADDIMS (default 128), AB_DTYPES (bf16), AB_ARCHS (90a),
#                AB_WORKLOADS (time_kernels filters, default "d128"), PROFILE (a workload to profile)
set -uo pipefail
out=${1:?usage: tools/gpu_ab.sh OUTDIR name:flags ...}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
read -r -a workloads <<<"${AB_WORKLOADS:-d128}"
names=()
declare -A flags_of
for spec in "$@"; do
  name=${spec%%:*}
  flags=${spec#*:}
  names+=("$name")
  flags_of[$name]=$flags
  (
    cmake -S . -B "build/ab-$name" -G Ninja -DSCREE_BUILD_TESTS=ON -DSCREE_CUDA=ON \
      -DSCREE_CUDA_ARCHS="${AB_ARCHS:-90a}" -DSCREE_HEADDIMS="${AB_HEADDIMS:-128}" \
      -DSCREE_CUDA_DTYPES="${AB_DTYPES:-bf16}" -DCMAKE_CUDA_FLAGS="$flags" &&
      cmake --build "build/ab-$name" --target scree_time_kernels
  ) >"$out/build-$name.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
  bin=build/ab-$name/tests/cpp/scree_time_kernels
  echo "== $name: ${flags_of[$name]}" | tee -a "$out/ab.txt"
  if [ -x "$bin" ]; then
    timeout 120 "$bin" "${workloads[@]}" 2>&1 | tee -a "$out/ab.txt"
  else
    echo "build failed (build-$name.log)" | tee -a "$out/ab.txt"
    tail -20 "$out/build-$name.log"
  fi
done
if [ -n "${PROFILE:-}" ] && command -v ncu >/dev/null; then
  timeout 200 ncu --kernel-name regex:varlen_fwd_sm90 --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
    --section ComputeWorkloadAnalysis --section SourceCounters \
    "build/ab-${names[0]}/tests/cpp/scree_time_kernels" "$PROFILE" >"$out/ncu.txt" 2>&1
  grep -E "Issue Slots|Eligible|No Eligible|Stall|stall|Warp Cycles|Duration|Tensor|Pipe" "$out/ncu.txt" | head -40
fi

#!/usr/bin/env bash
# Kernel experiments in one GPU call: builds benchmarks/cuda/time_kernels once per variant (each a
# set of compile-time switches, e.g. -DSCREE_SM90_BLOCK_N=176, and optionally another source tree,
# e.g. an older commit's `git archive` carried in an excluded folder), in parallel, then times every
# variant on the same card, one after another, so their numbers compare. Optionally profiles the first
# variant's kernel with Nsight Compute (PROFILE="workload name") and then runs its CUDA gtest
# (AB_TEST=1: the kernels against the fp64 CPU oracle). Writes OUTDIR/ab.txt (timings and
# test result), OUTDIR/ab_summary.txt (tools/ab_summary.py: medians and ratios),
# OUTDIR/build-NAME.log, OUTDIR/ncu.txt (the sections) and OUTDIR/ncu_sass.csv (per SASS
# instruction: executions and warp stall samples, to see where the warps wait).
#
#   usage: tools/gpu_ab.sh OUTDIR "name:-DFLAG=1 -DOTHER=2" "base@.abold:" ...   (name[@SRCDIR]:flags)
#   environment: AB_HEADDIMS (default 128), AB_DTYPES (bf16), AB_ARCHS (90a),
#                AB_WORKLOADS (time_kernels filters, default "d128"), AB_TEST (1: run the gtest),
#                AB_ROUNDS (default 1: rounds of timings, the variants alternating; ab_summary.txt
#                gets each variant's median per workload and its ratio to the variant named base),
#                PROFILE (a workload to profile), PROFILE_KERNEL (kernel name regex, varlen_fwd_sm90)
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
  head=${spec%%:*}
  flags=${spec#*:}
  name=${head%%@*}
  src=.
  [ "$head" != "$name" ] && src=${head#*@}
  names+=("$name")
  flags_of[$name]="$src $flags"
  targets=(scree_time_kernels)
  [ "${AB_TEST:-}" = 1 ] && [ ${#names[@]} = 1 ] && targets+=(scree_cuda_tests)
  (
    cmake -S "$src" -B "build/ab-$name" -G Ninja -DSCREE_BUILD_TESTS=ON -DSCREE_CUDA=ON \
      -DSCREE_CUDA_ARCHS="${AB_ARCHS:-90a}" -DSCREE_HEADDIMS="${AB_HEADDIMS:-128}" \
      -DSCREE_CUDA_DTYPES="${AB_DTYPES:-bf16}" -DCMAKE_CUDA_FLAGS="$flags" &&
      cmake --build "build/ab-$name" --target "${targets[@]}"
  ) >"$out/build-$name.log" 2>&1 &
done
wait
# The variants alternate round by round: two builds of the same kernel read up to ~7% apart in one
# run (benchmarks/NOTES.md, session 35), so a single pass cannot tell a few percent apart.
for (( round = 1; round <= ${AB_ROUNDS:-1}; ++round )); do
  for name in "${names[@]}"; do
    bin=build/ab-$name/tests/cpp/scree_time_kernels
    echo "== $name round $round: ${flags_of[$name]}" | tee -a "$out/ab.txt"
    if [ -x "$bin" ]; then
      timeout 120 "$bin" "${workloads[@]}" 2>&1 | tee -a "$out/ab.txt"
    else
      echo "build failed (build-$name.log)" | tee -a "$out/ab.txt"
      (( round == 1 )) && tail -20 "$out/build-$name.log"
    fi
  done
done
python3 tools/ab_summary.py "$out/ab.txt" | tee "$out/ab_summary.txt"
if [ -n "${PROFILE:-}" ] && command -v ncu >/dev/null; then
  timeout 240 ncu --clock-control none --kernel-name "regex:${PROFILE_KERNEL:-varlen_fwd_sm90}" --launch-skip 3 \
    --launch-count 1 --set full --import-source no -o "$out/prof" \
    "build/ab-${names[0]}/tests/cpp/scree_time_kernels" "$PROFILE" >"$out/ncu_run.txt" 2>&1
  ncu -i "$out/prof.ncu-rep" --page details >"$out/ncu.txt" 2>&1
  ncu -i "$out/prof.ncu-rep" --page source --csv --print-source sass >"$out/ncu_sass.csv" 2>&1
  rm -f "$out/prof.ncu-rep"
  grep -E "Issue Slots|Eligible|No Eligible|Stall|stall|Warp Cycles|Duration|Tensor|Pipe" "$out/ncu.txt" | head -40
fi
if [ "${AB_TEST:-}" = 1 ]; then
  echo "== gtest ${names[0]}" | tee -a "$out/ab.txt"
  timeout 300 "build/ab-${names[0]}/tests/cpp/scree_cuda_tests" 2>&1 | grep -E "^\[  (PASSED|FAILED) |FAILED|Failure" \
    | head -30 | tee -a "$out/ab.txt"
fi

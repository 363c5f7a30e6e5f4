#!/usr/bin/env bash
# Hardening run of the C++ core (issue 14), for a developer machine, not CI:
#  1. builds scree_core and the GoogleTest suite with ASan+UBSan (SCREE_SANITIZE, build/asan) and
#     runs every C++ test under them;
#  2. if clang++ is on PATH, builds the libFuzzer targets tests/cpp/fuzz_*.cpp (SCREE_FUZZ,
#     build/fuzz) and runs each for a time budget; fuzz_attention runs twice, on the kernels cpuid
#     picks (AVX2 where available) and on the portable ones (SCREE_CPU_ISA=generic), sharing one
#     corpus. Corpora persist in build/fuzz/corpus/<name>, so each run continues the last; a
#     crashing input lands in build/fuzz/artifacts/<name>/ (rerun it:
#     build/fuzz/tests/cpp/scree_fuzz_<name> <file>, with SCREE_CPU_ISA=generic for
#     attention_generic) and belongs in the matching gtest.
# Usage: tools/sanitize_cpp.sh [seconds per fuzzer, default 120]
#   SANITIZERS=address,undefined  JOBS=2  SKIP_TESTS=1 (fuzz only)  SKIP_FUZZ=1 (tests only)
#   (SANITIZERS=thread SKIP_FUZZ=1 runs the tests under TSan in build/san-thread.)
# Exits non-zero when a test or a fuzzer failed.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-120}
sanitizers=${SANITIZERS:-address,undefined}
jobs=${JOBS:-2}
build=build/asan
[[ $sanitizers == address,undefined ]] || build=build/san-${sanitizers//,/-}
status=0
# Every finding must stop the process (UBSan: -fno-sanitize-recover, set by CMake) and print a stack.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

if [[ -z "${SKIP_TESTS:-}" ]]; then
  echo "== C++ tests under -fsanitize=$sanitizers ($build)"
  cmake -S . -B "$build" -G Ninja -DSCREE_BUILD_TESTS=ON -DSCREE_CUDA=OFF -DSCREE_SANITIZE="$sanitizers" >/dev/null &&
    cmake --build "$build" -j"$jobs" &&
    ctest --test-dir "$build" -j"$jobs" --output-on-failure || status=1
fi

if [[ -z "${SKIP_FUZZ:-}" ]]; then
  if ! command -v clang++ >/dev/null; then
    echo "== fuzzers skipped: clang++ not found (libFuzzer needs clang; apt-get install clang)"
  else
    echo "== libFuzzer targets under -fsanitize=fuzzer,$sanitizers (build/fuzz), ${seconds}s each"
    names=(layout pack reduce attention)
    # Only the fuzz targets (fuzz_attention links scree_core, both attention kernel builds).
    if cmake -S . -B build/fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DSCREE_BUILD_TESTS=ON -DSCREE_CUDA=OFF \
        -DSCREE_SANITIZE="$sanitizers" -DSCREE_FUZZ=ON >/dev/null &&
        cmake --build build/fuzz -j"$jobs" --target "${names[@]/#/scree_fuzz_}"; then
      # attention_generic: the attention fuzzer on the portable kernels (SCREE_CPU_ISA=generic).
      for name in "${names[@]}" attention_generic; do
        target=${name%_generic} isa=
        [[ $name == *_generic ]] && isa=generic
        corpus=build/fuzz/corpus/$target artifacts=build/fuzz/artifacts/$name/ log=build/fuzz/fuzz_$name.log
        mkdir -p "$corpus" "$artifacts"
        SCREE_CPU_ISA=$isa build/fuzz/tests/cpp/scree_fuzz_"$target" "$corpus" -max_total_time="$seconds" -timeout=20 \
          -rss_limit_mb=2048 -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1
        rc=$?
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
        if [[ $rc -eq 0 ]]; then
          echo "fuzz_$name: ok, ${runs:-?} inputs in ${seconds}s, corpus $(ls "$corpus" | wc -l) files"
        else
          status=1
          echo "fuzz_$name: FAILED (exit $rc), artifacts in $artifacts; the report:"
          grep -E -A12 'ERROR|runtime error|check failed' "$log" | head -40
        fi
      done
    else
      status=1
    fi
  fi
fi
exit $status

#!/usr/bin/env bash
# A/B of two versions of the CPU attention kernels (see cpu_attn_ab.cpp; the amx build, or AB_BUILD's): builds
# DIR_A and DIR_B (each a copy of src/cpu/attention) into two binaries and runs them alternately
# ROUNDS times; per workload, prints every round's median GFLOP/s of A and B and the median over
# rounds (a noisy neighbour on this 2-core VM slows whichever runs then). With AB_PEAK=fp32|bf16,
# each round also times torch's 2048^3 matmul in that dtype (2 threads, median of 5), the peak the
# percentages of bench_attention_cpu.py refer to.
#   benchmarks/diag/cpu_attn_ab.sh DIR_A DIR_B fwd|bwd f32|bf16 [ROUNDS] [CALLS] [workload substrings...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
A=$1 B=$2 mode=$3 dtype=$4 rounds=${5:-5} calls=${6:-10}
shift $(( $# < 6 ? $# : 6 ))
# AB_BUILD picks the kernels' flags (default amx; the harness's namespace stays `amx` whatever the
# flags): amx (bf16 on the tiles), avx512bf16 (bf16 on VDPBF16PS), avx512, avx2 (bf16 converted);
# two words ("avx512 avx512bf16") build A with the first and B with the second (A = B = one tree:
# one version's two builds).
read -r -a builds <<<"${AB_BUILD:-amx}"
build_A=${builds[0]} build_B=${builds[1]:-${builds[0]}}
avx512="-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq"
out=${AB_OUT:-/tmp/cpu_attn_ab}
mkdir -p "$out"
for v in A B; do
  dir=${!v} build_v=build_$v
  case ${!build_v} in
    amx) isa_flags="-DSCREE_CPU_AMX=1 $avx512 -mamx-tile -mamx-bf16 -mavx512bf16" ;;
    avx512bf16) isa_flags="$avx512 -mavx512bf16" ;;
    avx512) isa_flags="$avx512" ;;
    avx2) isa_flags="-mavx2 -mfma -mf16c" ;;
    *) echo "AB_BUILD: amx, avx512bf16, avx512 or avx2" >&2; exit 2 ;;
  esac
  amx_sources=()
  [ "${!build_v}" = amx ] && amx_sources=("$dir/fwd_amx.cpp" "$dir/bwd_amx.cpp")
  g++ -O3 -std=c++17 -DSCREE_CPU_ISA=amx $isa_flags -ffp-contract=fast -I"$root/include" -I"$dir" \
    "$root/benchmarks/diag/cpu_attn_ab.cpp" "$dir/fwd.cpp" "$dir/bwd.cpp" "${amx_sources[@]}" \
    "$root/src/cpu/thread_pool.cpp" "$root/src/cpu/openmp_runtime.cpp" "$root/src/cpu/host_blocks.cpp" -lpthread -ldl -o "$out/$v" &
done
wait
: > "$out/peak"
for r in $(seq "$rounds"); do
  for v in A B; do "$out/$v" "$mode" "$dtype" "$calls" "$@" > "$out/$v.$r"; done
  if [ -n "${AB_PEAK:-}" ]; then
    python3 - "${AB_PEAK}" >> "$out/peak" <<'PY'
import sys, time, torch
torch.set_num_threads(2)
dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1]]
a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
a @ b
ts = []
for _ in range(5):
    t0 = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t0)
print(2 * 2048**3 / sorted(ts)[2] / 1e9)
PY
  fi
done
python3 - "$out" "$rounds" <<'PY'
import sys, statistics, collections
out, rounds = sys.argv[1], int(sys.argv[2])
res = collections.defaultdict(lambda: collections.defaultdict(list))
check = {}
for v in "AB":
    for r in range(1, rounds + 1):
        for line in open(f"{out}/{v}.{r}"):
            name, rest = line[:20].strip(), line[20:].split()
            res[name][v].append(float(rest[3]))
            check[(name, v)] = " ".join(rest[5:])
peaks = [float(x) for x in open(f"{out}/peak")]
peak = statistics.median(peaks) if peaks else None
if peak:
    print(f"matmul peak (median of rounds) {peak:.0f} GFLOP/s: {' '.join(f'{x:.0f}' for x in peaks)}")
for name, d in res.items():
    a, b = statistics.median(d["A"]), statistics.median(d["B"])
    pct = f"  %peak A {100 * a / peak:4.1f} B {100 * b / peak:4.1f}" if peak else ""
    print(f"{name:<20} A {a:7.1f} B {b:7.1f}  B/A {b / a:5.3f}{pct}   A {' '.join(f'{x:.0f}' for x in d['A'])} | "
          f"B {' '.join(f'{x:.0f}' for x in d['B'])}" + ("" if check[(name, 'A')] == check[(name, 'B')] else
          f"   outputs differ: A {check[(name, 'A')]} B {check[(name, 'B')]}"))
PY

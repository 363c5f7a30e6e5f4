#!/usr/bin/env bash
# A/B of two versions of the AMX bf16 forward (see amx_fwd_ab.cpp): builds DIR_A/fwd_amx.cpp and
# DIR_B/fwd_amx.cpp (each folder may hold its own amx_tiles.h / vec512.h) into two binaries and
# runs them alternately ROUNDS times; per workload, prints every round's median GFLOP/s of A and B
# and the median over rounds (a noisy neighbour on this 2-core VM slows whichever runs then).
#   benchmarks/diag/amx_fwd_ab.sh DIR_A DIR_B [ROUNDS] [CALLS] [workload substrings...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
A=$1 B=$2 rounds=${3:-5} calls=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
flags="-O3 -std=c++17 -DSCREE_CPU_ISA=amx -DSCREE_CPU_AMX=1 -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl
       -mavx512dq -mamx-tile -mamx-bf16 -mavx512bf16 -ffp-contract=fast -I$root/include -I$root/src/cpu/attention"
out=${AB_OUT:-/tmp/amx_fwd_ab}
mkdir -p "$out"
for v in A B; do
  dir=${!v}
  g++ $flags "$root/benchmarks/diag/amx_fwd_ab.cpp" "$dir/fwd_amx.cpp" "$root/src/cpu/thread_pool.cpp" -lpthread \
    -o "$out/$v" &
done
wait
for r in $(seq "$rounds"); do
  for v in A B; do "$out/$v" "$calls" "$@" > "$out/$v.$r"; done
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
for name, d in res.items():
    a, b = statistics.median(d["A"]), statistics.median(d["B"])
    print(f"{name:<20} A {a:7.1f} B {b:7.1f}  B/A {b / a:5.3f}   A {' '.join(f'{x:.0f}' for x in d['A'])} | "
          f"B {' '.join(f'{x:.0f}' for x in d['B'])}" + ("" if check[(name, 'A')] == check[(name, 'B')] else
          f"   outputs differ: A {check[(name, 'A')]} B {check[(name, 'B')]}"))
PY

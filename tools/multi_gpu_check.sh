#!/usr/bin/env bash
# One call on a multi-GPU machine (issue 19): the context-parallel tests on 2 and 4 GPUs (NCCL, one
# process a GPU, bfloat16 against the fp64 result by FlashAttention's rule: tests/python/cp_worker.py)
# and benchmarks/bench_context_parallel.py, logs and results into the folder named on the command
# line. Needs scree with its CUDA kernels importable (a wheel in .whl/, as tools/gpu_check.sh, or
# an installed one). Exit status 1 if any step failed.
#
#   usage: tools/multi_gpu_check.sh OUTDIR      (in the device tool: tools/multi_gpu_check.sh "$OUT")
#   environment: BENCH_ARGS (extra benchmark arguments), CP_TIMEOUT_S (per test run, default 300)
set -uo pipefail
out=${1:?usage: tools/multi_gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl > "$out/install.log" 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
status=0
{
  echo "# multi_gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse HEAD 2>/dev/null || echo unknown), $gpus GPUs"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | sort | uniq -c
} > "$out/summary.txt"
for world in 2 4; do
  if (( world > gpus )); then echo "tests x$world: NOT RUN ($gpus GPUs)" >> "$out/summary.txt"; continue; fi
  for case in causal_gqa full_mha causal_window_softcap ring_causal_gqa ring_full_softcap; do
    port=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    if timeout "${CP_TIMEOUT_S:-300}" "$PY" tests/python/cp_worker.py "$world" "$port" "$case" cuda >> "$out/tests.log" 2>&1; then
      echo "tests x$world $case: ok" >> "$out/summary.txt"
    else
      echo "tests x$world $case: FAILED (tests.log)" >> "$out/summary.txt"; status=1
    fi
  done
done
if (cd benchmarks && "$PY" bench_context_parallel.py --out "$out" ${BENCH_ARGS:-}) > "$out/bench.log" 2>&1; then
  echo "bench: ok" >> "$out/summary.txt"
else
  echo "bench: FAILED (bench.log)" >> "$out/summary.txt"; status=1
fi
tail -20 "$out/bench.log" >> "$out/summary.txt"
cat "$out/summary.txt"
exit $status

#!/usr/bin/env bash
# Installs a built scree wheel (scripts/build_wheel.sh) into a fresh virtual environment on a
# machine with a GPU and runs the CUDA test subset against it, from outside the checkout so that
# `import scree` can only find the wheel. The environment sees the machine's own torch / JAX
# (--system-site-packages: the frameworks are the user's, scree is ours) and no compiler: nvcc, cc
# and c++ are hidden from PATH and CC / CXX / CUDACXX point at `false`, so nothing can be built.
#
#   usage: tools/wheel_check.sh WHEEL OUTDIR        (device tool: tools/wheel_check.sh .wheel/*.whl "$OUT/wheel")
#
# OUTDIR gets wheel_check.log (install, import, pytest -m cuda) and prints a one-line verdict.
set -uo pipefail
wheel=$(readlink -f "${1:?usage: tools/wheel_check.sh WHEEL OUTDIR}")
out=${2:?usage: tools/wheel_check.sh WHEEL OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
env_dir=$(mktemp -d)/venv
work=$(mktemp -d)
log="$out/wheel_check.log"

(  # a subshell: a step that fails exits it, and the verdict below is still written
  echo "# wheel_check $(date -u +%Y-%m-%dT%H:%M:%SZ): $(basename "$wheel") ($(stat -c %s "$wheel") bytes)"
  "$PY" -m venv --system-site-packages "$env_dir" || exit 1
  # Where python3 is itself a virtual environment (the GPU machine's is), --system-site-packages
  # reaches only the base interpreter's packages: a .pth file adds the frameworks' own.
  site=$("$env_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() if "site-packages" in p))' \
    > "$site/_frameworks.pth"
  # The tests, copied out of the checkout (pytest would otherwise put its parent on sys.path).
  cp -r "$repo/tests/python" "$work/tests"
  orig_path=$PATH orig_cc=${CC:-} orig_cxx=${CXX:-}
  # A PATH with the venv and the system's basic tools only, with no compiler on it.
  nocc=$(mktemp -d)
  for tool in "$PY" git uname env sh bash nvidia-smi; do
    p=$(command -v "$tool") && ln -sf "$p" "$nocc/$(basename "$tool")"
  done
  export PATH="$env_dir/bin:$nocc"
  export CC=false CXX=false CUDACXX=false
  unset PYTHONPATH
  for c in nvcc cc c++ gcc g++; do
    if command -v "$c" >/dev/null; then echo "FAIL: $c is still reachable"; exit 1; fi
  done
  echo "no compiler on PATH: ok"
  python -m pip install --no-index --no-deps --no-cache-dir "$wheel" || exit 1
  cd "$work"
  python - <<'EOF' || exit 1
import scree, scree._C as C
print("scree from", scree.__file__)
assert "/site-packages/" in scree.__file__, "scree was not imported from the installed wheel"
print("cuda compiled:", C.cuda_compiled(), "head dims:", C.cuda_head_dims(), "devices:", C.cuda_device_count())
assert C.cuda_compiled() and C.cuda_device_count() > 0, "the wheel's CUDA kernels do not see the GPU"
EOF
  tests=("$work/tests/test_attention_cuda.py" "$work/tests/test_cuda_layout.py" "$work/tests/test_no_sync.py"
         "$work/tests/test_paged.py")
  XLA_PYTHON_CLIENT_PREALLOCATE=false python -m pytest -q -p no:cacheprovider -m cuda "${tests[@]}" \
    -k "not torch_compile" ${PYTEST_ARGS:-} || exit 1
  # torch.compile's own code generator (inductor, through Triton) compiles C launchers with the host
  # C compiler, so the compiled tests run in the machine's own environment again (the wheel still
  # the scree they import): a requirement of inductor's, not of the wheel's.
  export PATH="$env_dir/bin:$orig_path"
  if [ -n "$orig_cc" ]; then export CC=$orig_cc; else unset CC; fi
  if [ -n "$orig_cxx" ]; then export CXX=$orig_cxx; else unset CXX; fi
  unset CUDACXX
  echo "torch.compile tests, in the machine's environment (inductor needs its C compiler; CC=${CC:-unset})"
  XLA_PYTHON_CLIENT_PREALLOCATE=false python -m pytest -q -p no:cacheprovider -m cuda "${tests[@]}" \
    -k "torch_compile" ${PYTEST_ARGS:-}
) > "$log" 2>&1
rc=$?
if [ $rc -eq 0 ]; then verdict="PASS"; else verdict="FAIL (rc $rc)"; fi
echo "wheel_check: $verdict; $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$log" | tail -1)" | tee -a "$log"
exit $rc

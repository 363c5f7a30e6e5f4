#!/usr/bin/env bash
# FlashAttention-4 (the GPU benchmark's peer, DESIGN §7) for the GPU machine, which has no network:
# `fetch` downloads its wheels here and splits them into two carried folders (one call carries at
# most 64 MiB with the checkout, and the cutlass-dsl cu13 libraries alone are 88 MB); `stage` (first
# call on the device) copies the first folder outside the checkout; `install` (the next call, made
# while the machine is still warm) joins the parts and unpacks every wheel into one folder, then
# prints the PYTHONPATH to export.
# The cu13 libraries travel as a tar.xz of the wheel's files (63.5 MB against the wheel's 88.3):
# both parts then leave room for a scree wheel (~13 MB) beside the first, so two calls carry
# everything a benchmark needs (with the wheel's zip, three: 88.3 + 9.6 MB of small wheels + 12.9).
#
#   here:         tools/fa4_wheels.sh fetch                     (writes .fa1/ and .fa2/, git-excluded)
#   call 1:       tools/fa4_wheels.sh stage                     (carry [".fa1"])
#   call 2:       eval "$(tools/fa4_wheels.sh install)"; ...     (carry [".fa2"])
# tools/gpu_check.sh does both when it finds .fa1/ or .fa2/ in the checkout (its header has the recipe).
#
# Why unpack instead of `pip install --target`: the three cutlass-dsl wheels (-libs-base, -libs-core,
# -libs-cu13) all put files under one `nvidia_cutlass_dsl/` folder, and `pip install --target` skips a
# wheel whose top folder exists already, leaving `cutlass.cute` missing (a session lost two device
# calls to it); and the wheels' own .pth, which would put `dsl_packages` first on the path, runs only
# from site-packages, so PYTHONPATH names it. Versions: FA-4 4.0.0b40 with nvidia-cutlass-dsl 4.7.1
# and quack-kernels 0.6.5 ran on the H200 (2026-12-05; quack 0.6 needs cutlass-dsl >= 4.7, quack
# 0.5.3 pins 4.6.0.dev0); earlier runs had b36 on cutlass-dsl 4.8.1.
set -euo pipefail
cd "$(dirname "$0")/.."
FA4=${FA4_VERSION:-4.0.0b40} DSL=${CUTLASS_DSL_VERSION:-4.7.1} QUACK=${QUACK_VERSION:-0.6.5}
part_bytes=${FA4_PART1_BYTES:-25000000}  # of the tar.xz: the first part with the small wheels (~34.6 MB;
# + a 12.9 MB scree wheel + the ~16.7 MB checkout = 64.2 MB), the rest (~38.5 MB) alone: each call's carry
# stays under 64 MiB (67.1 MB)
site=${FA4_SITE:-/tmp/fa4_site}  # (tools/gpu_check.sh reads the same variable)

case ${1:-} in
  fetch)
    for d in /.fa1/ /.fa2/; do grep -qxF "$d" .git/info/exclude || echo "$d" >>.git/info/exclude; done
    rm -rf .fa1 .fa2 && mkdir -p .fa1 .fa2
    tmp=$(mktemp -d)
    platforms=()
    for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014; do
      platforms+=(--platform "${tag}_x86_64")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d "$tmp" "flash-attn-4==$FA4" "nvidia-cutlass-dsl==$DSL" \
      "nvidia-cutlass-dsl-libs-base==$DSL" "nvidia-cutlass-dsl-libs-core==$DSL" \
      "nvidia-cutlass-dsl-libs-cu13==$DSL" "quack-kernels==$QUACK" "apache-tvm-ffi<0.2,>=0.1.11" \
      torch-c-dlpack-ext
    big=$(ls "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl)
    mkdir "$tmp/files" && python3 -m zipfile -e "$big" "$tmp/files/"
    (cd "$tmp/files" && tar cf - . | xz -T0 -6) > "$tmp/cu13.tar.xz"
    (cd .fa1 && split -b "$part_bytes" "$tmp/cu13.tar.xz" cu13.tar.xz.part.)
    rm -rf "$tmp/files" "$big"
    find .fa1 -name '*.part.a[b-z]' -exec mv {} .fa2/ \;
    find "$tmp" -name '*.whl' ! -name 'nvidia_cutlass_dsl_libs_cu13-*' -exec mv {} .fa1/ \;
    rm -rf "$tmp"
    du -sh .fa1 .fa2
    ;;
  stage)
    mkdir -p /tmp/fa4_wheels && cp .fa1/* /tmp/fa4_wheels/ && ls /tmp/fa4_wheels >&2
    ;;
  install)
    root=$(pwd)
    cd /tmp/fa4_wheels
    mkdir -p "$site"
    if [ -e cu13.tar.xz.part.aa ]; then
      # (Python's lzma, not the xz tool, which a bare machine may lack)
      cat cu13.tar.xz.part.aa "$root"/.fa2/cu13.tar.xz.part.a[b-z] | python3 -c \
        'import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1])' "$site" \
        && rm -f cu13.tar.xz.part.aa
    fi
    for w in *.whl; do python3 -m zipfile -e "$w" "$site/" >&2; done
    echo "export PYTHONPATH=$site/nvidia_cutlass_dsl/dsl_packages:$site\${PYTHONPATH:+:\$PYTHONPATH}"
    ;;
  *)
    echo "usage: tools/fa4_wheels.sh fetch|stage|install" >&2
    exit 2
    ;;
esac

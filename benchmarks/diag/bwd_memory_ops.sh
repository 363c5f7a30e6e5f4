#!/usr/bin/env bash
# Nsight Compute's per-operation L2 / DRAM counters (reads, writes, reduce-adds, their L2 misses, the
# fabric between the two L2 halves, local-memory sectors) of the backward's main kernel, FA-4's and
# scree's, on mix d128, causal and not (bwd_profile.py drives each call). Needs scree and FA-4
# importable (on the GPU machine: tools/fa4_wheels.sh). One text file a (method, mask) in OUTDIR.
#
#   benchmarks/diag/bwd_memory_ops.sh OUTDIR
set -u
out=${1:?usage: bwd_memory_ops.sh OUTDIR}
mkdir -p "$out"
M=dram__bytes_read.sum,dram__bytes_write.sum,lts__d_sectors_fill_device.sum
for op in read write red atom; do M=$M,lts__t_sectors_op_$op.sum,lts__t_sectors_op_${op}_lookup_miss.sum; done
M=$M,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read_lookup_miss.sum
M=$M,lts__t_sectors_srcunit_tex_op_red.sum,lts__t_sectors_srcunit_ltcfabric.sum
M=$M,l1tex__t_sectors_pipe_lsu_mem_local_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_local_op_st.sum
M=$M,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,gpu__time_duration.sum
for causal in --causal ""; do
  for m in fa4 scree; do
    f="$out/ncu_${m}${causal:+_causal}.txt"
    timeout 140 ncu --profile-from-start off -k "regex:varlen_bwd_sm90|FlashAttentionBackwardSm90" --launch-count 1 \
      --section SpeedOfLight --section MemoryWorkloadAnalysis_Tables --print-details all --metrics "$M" \
      python3 "$(dirname "$0")/bwd_profile.py" --method $m --kind mix $causal > "$f" 2>&1
    grep -E "dram__bytes|local_op" "$f"
  done
done

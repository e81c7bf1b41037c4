#!/usr/bin/env bash
# Nsight Compute on one warm carafe forward per kernel at 16x256x128x128 (the shape of issue 4's
# bandwidth target). Kernels: $PROFILE_SPECS, DTYPE:IMPL pairs of benchmarks/bench_gpu.py --once
# (default: fp32:cuda bf16:cuda-async bf16:cuda-mma, i.e. the tiled FFMA kernel with cp.async
# staging in both dtypes and the tensor-core forward). Sections: speed of light, memory workload,
# warp state (cycles per issued instruction); metrics: shared-memory bank conflicts and
# instructions executed ("L2 Compression Input Sectors" counted the sectors written, on an H100).
# About 20 s per kernel on an H100. Report in $OUT/ncu.txt (else /tmp/uplab_gpu_check/ncu.txt),
# the headline lines printed at the end. ncu runs with its default clock control (base clocks), so
# its durations are for comparing kernels, not for the benchmark table.
# PROFILE_STALLS=1 adds the warp stall reasons of the first kernel (ncu's raw warp-state metrics).
# Usage: bash benchmarks/profile_kernels.sh      (also: PROFILE=1 bash benchmarks/gpu_check.sh)
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-${TMPDIR:-/tmp}/uplab_gpu_check}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

NCU="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)"
if [ -z "$NCU" ]; then
    echo "skipped: ncu not found"
    exit 0
fi
report="$OUT_DIR/ncu.txt"
: >"$report"
for spec in ${PROFILE_SPECS:-fp32:cuda bf16:cuda-async bf16:cuda-mma}; do
    # the third launch of the forward kernel (reassemble*) is warm
    echo "=== carafe $spec" >>"$report"
    timeout 120 "$NCU" --kernel-name regex:reassemble --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --metrics l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,smsp__inst_executed.sum \
        "$PYTHON" benchmarks/bench_gpu.py --once "carafe:$spec" >>"$report" 2>&1
    echo "carafe $spec: ncu exit $?"
done
if [ "${PROFILE_STALLS:-0}" = 1 ]; then
    # warp stall reasons (cycles per issued instruction, by reason) of the first kernel, from the
    # raw metrics of the warp-state section
    first="${PROFILE_SPECS:-fp32:cuda}"; first="${first%% *}"
    echo "=== stalls carafe $first" >>"$report"
    timeout 120 "$NCU" --kernel-name regex:reassemble --launch-skip 2 --launch-count 1 \
        --section WarpStateStats --page raw \
        "$PYTHON" benchmarks/bench_gpu.py --once "carafe:$first" >"$OUT_DIR/ncu_stalls.txt" 2>&1
    echo "stalls carafe $first: ncu exit $?"
    grep -E "issue_stalled_.*per_issue_active" "$OUT_DIR/ncu_stalls.txt" | sort -k3 -g -r | head -12 \
        >>"$report"
fi
grep -E "^=== |stalled|Duration|DRAM Throughput|L2 Cache Throughput|bank_conflicts|inst_executed|Compression Input|Issued Instruction" "$report"

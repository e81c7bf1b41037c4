#!/usr/bin/env bash
# GPU check (make gpu-check): device name, the GPU tests of the ops, the ops benchmark, then the
# SegFormer-B1 training step per upsampler (benchmarks/bench_segformer_step.py, at most
# $SEGFORMER_TIMEOUT seconds, default 150; 0 skips it), and the guided ones with recompute=True
# (at most $SEGFORMER_RECOMPUTE_TIMEOUT seconds, default 60; informative, not part of the exit
# status).
# The whole script keeps within $GPU_CHECK_BUDGET seconds (default 290: issue 4 asks for 5 minutes
# on one H100, so that a rerun fits in the same GPU lease): the SegFormer steps get what the
# tests and the benchmark leave. A step run stopped by its limit keeps the rows it measured (the
# table is rewritten after each upsampler) and does not fail the script. Each section prints the
# seconds elapsed when it starts.
# Installs nothing from the network: needs python with torch, CuPy (cupy-cuda13x) and pytest; the
# tests and benchmarks run from the source tree (PYTHONPATH=src). Wheels found in .whl/ (e.g.
# hydra-core, omegaconf and antlr4-python3-runtime, which the SegFormer step imports through
# uplab.analysis.cost, for a GPU image without them) are unpacked into a temporary folder first.
# .whl/ is git-ignored; fill it once with (pure-Python wheels; antlr4 4.9.3 is an sdist, built):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.1
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
# Opt-in extras, after the budgeted part, informative (not part of the exit status):
#   KERNEL_VARIANTS=1  benchmarks/bench_kernel_variants.py (at most $VARIANTS_TIMEOUT s, default
#                      180);
#   MMA_VARIANTS=1     benchmarks/bench_mma_variants.py (at most $MMA_VARIANTS_TIMEOUT s, default
#                      180): the tensor-core forward's compile-time variants, K=5 first;
#   PROFILE=1          benchmarks/profile_kernels.sh: Nsight Compute on one warm carafe forward per
#                      kernel at the large shape; about 20 s per kernel.
# Files, in $OUT when it is set (else /tmp/uplab_gpu_check), at most eight (a device call returns at
# most eight): gpu_check.log (everything printed), gpu_bench.md, segformer_step.md,
# segformer_step_recompute.md, and with the extras variants.md, mma_variants.md, ncu.txt and
# ncu_stalls.txt.
# Usage: bash benchmarks/gpu_check.sh [extra arguments for benchmarks/bench_gpu.py]
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-${TMPDIR:-/tmp}/uplab_gpu_check}"
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export WANDB_MODE=offline HF_HUB_OFFLINE=1

BUDGET="${GPU_CHECK_BUDGET:-290}"
start=$SECONDS
section() { echo "== $1 (at $((SECONDS - start)) s)"; }
seconds_left() { echo $((BUDGET - (SECONDS - start))); }
smaller() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

if compgen -G ".whl/*.whl" >/dev/null; then
    SITE="$(mktemp -d)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$SITE"
fi

section "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
"$PYTHON" - <<'PY'
import torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); device: "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
try:
    import cupy
    print(f"cupy {cupy.__version__}")
except Exception as exc:
    print(f"cupy unavailable: {exc}")
PY

section "GPU tests"
# Other engineers' test files may import what this machine lacks; collect past such errors.
"$PYTHON" -m pytest -m gpu tests/ops -q -p no:cacheprovider --continue-on-collection-errors
tests_status=$?

section "benchmark"
"$PYTHON" benchmarks/bench_gpu.py --out "$OUT_DIR/gpu_bench.md" "$@"
bench_status=$?

section "SegFormer-B1 training step"
# what the budget leaves, less 45 s for the recompute pass
step_limit=$(smaller "${SEGFORMER_TIMEOUT:-150}" $(( $(seconds_left) - 45 )))
if ! import_error="$("$PYTHON" -c "import uplab.analysis.cost" 2>&1)"; then
    echo "skipped: uplab.analysis.cost does not import here: $(echo "$import_error" | tail -1)"
    step_status=1
elif [ "${SEGFORMER_TIMEOUT:-150}" -eq 0 ]; then
    echo "skipped: SEGFORMER_TIMEOUT=0"
    step_status=0
elif [ "$step_limit" -lt 30 ]; then
    echo "skipped: $(seconds_left) s of the ${BUDGET} s budget left (GPU_CHECK_BUDGET)"
    step_status=0
else
    echo "limit ${step_limit} s"
    timeout "$step_limit" "$PYTHON" benchmarks/bench_segformer_step.py --device cuda --steps 3 \
        --warmup 1 --output "$OUT_DIR/segformer_step.md"
    step_status=$?
    if [ "$step_status" -eq 124 ]; then
        echo "stopped at its ${step_limit} s limit; the rows above are kept in segformer_step.md"
        step_status=0
    fi
    # the guided upsamplers again with recompute=True (forward redone in backward, less memory)
    recompute_limit=$(smaller "${SEGFORMER_RECOMPUTE_TIMEOUT:-60}" $(( $(seconds_left) - 5 )))
    if [ "$recompute_limit" -ge 20 ]; then
        section "SegFormer-B1 training step, recompute=True (limit ${recompute_limit} s)"
        timeout "$recompute_limit" "$PYTHON" benchmarks/bench_segformer_step.py --device cuda \
            --steps 3 --warmup 1 --recompute --upsamplers bilinear,indexnet,sapa_g,fade \
            --output "$OUT_DIR/segformer_step_recompute.md"
    else
        echo "recompute pass skipped: $(seconds_left) s of the ${BUDGET} s budget left"
    fi
fi

if [ "${KERNEL_VARIANTS:-0}" = 1 ]; then
    # informative: launch variants of the tiled kernels, both halo stagings
    section "kernel variants"
    timeout "${VARIANTS_TIMEOUT:-180}" "$PYTHON" benchmarks/bench_kernel_variants.py \
        --out "$OUT_DIR/variants.md"
fi

if [ "${MMA_VARIANTS:-0}" = 1 ]; then
    # informative: the tensor-core forward's variants (tile width, stages x slabs), bit for bit
    section "tensor-core forward variants"
    timeout "${MMA_VARIANTS_TIMEOUT:-180}" "$PYTHON" benchmarks/bench_mma_variants.py \
        --out "$OUT_DIR/mma_variants.md"
fi

if [ "${PROFILE:-0}" = 1 ]; then
    section "Nsight Compute: one warm carafe forward per kernel (benchmarks/profile_kernels.sh)"
    PYTHON="$PYTHON" OUT="$OUT_DIR" bash benchmarks/profile_kernels.sh
fi

echo "== done after $((SECONDS - start)) s: tests exit $tests_status, benchmark exit $bench_status, SegFormer step exit $step_status"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ] && [ "$step_status" -eq 0 ]

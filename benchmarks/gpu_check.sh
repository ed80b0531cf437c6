#!/usr/bin/env bash
# One short GPU check of the whole pipeline, with no internet and no downloaded data.
#
#   benchmarks/gpu_check.sh [OUT_DIR]                 on a GPU (default device cuda)
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 benchmarks/gpu_check.sh OUT_DIR   the CPU path the tests run
#
# Steps (each timed): host syncs per PGD step; the throughput of a PGD-10 AT epoch on 50,000
# CIFAR-shaped images with and without channels-last; synthetic 32x32x3 ImageFolder data; PGD-AT
# epochs of preact-resnet18 in bf16; evaluation with PGD and AutoAttack (fp32, TF32 off); calibration;
# the report; torchrun with one process (NCCL on a GPU, gloo on the CPU); the resume promise (two
# --deterministic runs, two default runs, a killed and resumed run: bitwise); with GPU_CHECK_COMPILE=1,
# last, the throughput again with the model under torch.compile, and its dynamo counters (graphs,
# recompilations, graph breaks: why a compiled epoch is slow).
# Record the printed numbers in benchmarks/README.md.
# Runs from a source checkout without installing the package (PYTHONPATH=src).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp}/gpu_check}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -e "$OUT" ]; then echo "gpu_check: $OUT exists; give a new output directory" >&2; exit 2; fi
mkdir -p "$OUT"

if [ -n "${GPU_CHECK_TINY:-}" ]; then  # the CPU path of the test suite: seconds, not minutes
  MODEL=smallcnn; N_TRAIN=12; N_TEST=4; EPOCH_ARGS="--epochs 1 --attack-steps 1 --batch-size 32 --val-size 20"
  ATTACKS="pgd:steps=2,autoattack:version=fast,steps=2,n_targets=1"; EVAL_ARGS=""; CAL_ARGS="--val-size 20 --steps 1 --rounds 1"
  THROUGHPUT_ARGS="--images 64 --batch 32 --steps 1"; SYNC_ARGS="--batch 4 --steps 3"
  DETERMINISM_ARGS="--no-kill"  # the CPU's kill and resume is tested by tests/test_training.py
else
  MODEL=preact-resnet18; N_TRAIN=500; N_TEST=50; EPOCH_ARGS="--epochs 3 --attack-steps 10 --batch-size 128 --val-size 500"
  ATTACKS="pgd,autoattack"; EVAL_ARGS="--limit 100"; CAL_ARGS="--val-size 500"; THROUGHPUT_ARGS="--images 50000 --batch 512 --steps 10"
  SYNC_ARGS="--batch 64 --steps 10"
fi
CR=("$PY" -m classrobust)
step() {  # step NAME CMD...: run, time, keep the log
  local name=$1; shift
  local t0=$EPOCHREALTIME
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  echo "time $name: $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}') s"
}

echo "device: $DEVICE"
"$PY" - <<'EOF'
import torch
print(f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()})" if torch.cuda.is_available() else "")
EOF
# the measurements first: a run cut short by its time limit still reports them
step syncs "$PY" benchmarks/gpu_check.py syncs --device "$DEVICE" $SYNC_ARGS
step throughput "$PY" benchmarks/gpu_check.py throughput --device "$DEVICE" $THROUGHPUT_ARGS
step data "$PY" benchmarks/gpu_check.py data "$OUT/data" --train "$N_TRAIN" --test "$N_TEST"
DATA="folder:$OUT/data"
step train "${CR[@]}" train --dataset "$DATA" --model "$MODEL" --method pgd-at $EPOCH_ARGS \
  --precision bf16 --device "$DEVICE" --no-progress --out "$OUT/run"
step eval "${CR[@]}" eval --checkpoint "$OUT/run/model.safetensors" --attacks "$ATTACKS" $EVAL_ARGS --device "$DEVICE" \
  --no-progress --out "$OUT/run/eval"
step calibrate "${CR[@]}" calibrate --checkpoint "$OUT/run/model.safetensors" --out "$OUT/run/calibrated" \
  $CAL_ARGS --device "$DEVICE"
step report "${CR[@]}" report "$OUT/run"
step torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m classrobust train \
  --dataset "$DATA" --model "$MODEL" --method pgd-at $EPOCH_ARGS --precision bf16 \
  --device "$DEVICE" --no-progress --out "$OUT/run-ddp"
step determinism "$PY" benchmarks/gpu_check.py determinism "$OUT/data" "$OUT/determinism" --device "$DEVICE" \
  --model "$MODEL" ${DETERMINISM_ARGS:-}
if [ -n "${GPU_CHECK_COMPILE:-}" ]; then  # opt-in, last: 100 s on an H100 (2026-11-27), outside the 5-minute budget
  step throughput-compiled "$PY" benchmarks/gpu_check.py throughput --device "$DEVICE" $THROUGHPUT_ARGS --compile
fi
echo "gpu_check: all steps passed ($OUT)"

#!/usr/bin/env bash
# Every GPU check in one run (< 8 minutes on one GPU), results under OUT_DIR:
#   the CUDA tests, the trainer benchmark (cnn3 and resnet18 vs the original-style
#   pipeline), the study benchmark with 1/2/4 workers on one GPU, and a short real
#   study of fer2013-sota on the full data with the auto number of workers.
# On the device machine (torch is there, optuna is not: carry wheels in .whl/ and the
# data in .data/, see .library/device/README.md):
#   bash benchmarks/gpu_check.sh $OUT .data/fer2013.npz.xz
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: gpu_check.sh OUT_DIR DATA}
DATA=${2:?usage: gpu_check.sh OUT_DIR DATA}
# Only small results go to OUT_DIR (the device returns at most 8 files); the data cache,
# the study database and the checkpoints stay in WORK.
WORK=${WORK:-/tmp/fer-gpu-check}
mkdir -p "$OUT_DIR" "$WORK"
export PYTHONUNBUFFERED=1 FER_OPT_CACHE="$WORK/cache" FER_SHARED_DATA="$(dirname "$DATA")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
step() { echo "== $(date +%T) $*"; }

step "device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
step "CUDA tests"; timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -5 | tee "$OUT_DIR/cuda-tests.txt"
step "trainer benchmark"
timeout 150 $PY benchmarks/trainer.py --device cuda --data "$DATA" --out "$OUT_DIR/trainer-gpu.json" --workers 8
step "study benchmark (quick.yaml, 1/2/4 workers on GPU 0)"
timeout 150 $PY benchmarks/study.py --device 0 --workers 1 2 4 --data "$DATA" --out "$OUT_DIR/study-gpu.json"
step "short real study: fer2013-sota, 150 s, auto workers per GPU"
URL="sqlite:///$WORK/sota.db"
$PY -m fer_optuna.cli create-study --config studies/fer2013-sota.yaml --storage "$URL" --data "$DATA"
timeout 200 $PY -m fer_optuna.cli worker --storage "$URL" --gpu 0 --per-gpu auto --timeout 120 \
  --checkpoint-dir "$WORK/ckpt" > "$OUT_DIR/sota-workers.log" 2>&1
$PY -m fer_optuna.cli status --storage "$URL" --json > "$OUT_DIR/sota-status.json"
$PY -m fer_optuna.cli status --storage "$URL"
step "done"; ls -la "$OUT_DIR"

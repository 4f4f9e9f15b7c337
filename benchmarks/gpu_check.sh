#!/usr/bin/env bash
# Every GPU check in one run, most important first (about 9 minutes on one H200, 11 with --train):
#   the CUDA tests; inference in fp32 against bf16 (which the default should be on CUDA); the trainer benchmark (cnn3 at batch 64/128/256, vgg and resnet18 at 128,
#   against the original-style pipeline); where a cnn3 step's time goes (torch.profiler);
#   fer2013-cnn3.yaml (8 trials of 10 epochs) with 1, 2 and 4 workers on the GPU;
#   torch.compile with CUDA graphs on cnn3; a short run of fer2013-deploy-gpu.yaml and its Pareto front. With --train, also the shipped model's recipe
#   (models/fer2013-best.yaml, VGG at full width, 60 epochs, then models/fer2013-best-editions.yaml,
#   2 epochs with degraded copies), which comes back to be scored
#   on both editions of PublicTest here: python benchmarks/editions.py --models vgg-gpu.pt
# On the device machine (torch is there, optuna is not): first, here,
#   bash benchmarks/gpu_wheels.sh     # wheels in .whl/, data in .data/; then move models/*.pt aside
# then one device call that carries .whl and .data and runs
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   bash benchmarks/gpu_check.sh $OUT .data/fer2013.npz.xz [--train]
# Results come back as OUT_DIR/log.txt, OUT_DIR/results.tgz (one JSON or text file per check,
# re-packed after every step, so a run cut short keeps what it measured) and, with --train,
# the model in 15 MB parts (OUT_DIR/vgg-gpu.pt.00 ...; join them with cat).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: gpu_check.sh OUT_DIR DATA [--train]}
DATA=${2:?usage: gpu_check.sh OUT_DIR DATA [--train]}
TRAIN=${3:-}
WORK=${WORK:-/tmp/fer-gpu-check}
RES=$WORK/results
mkdir -p "$OUT_DIR" "$RES"
export PYTHONUNBUFFERED=1 FER_OPT_CACHE="$WORK/cache" FER_SHARED_DATA="$(dirname "$DATA")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
exec > >(tee -a "$OUT_DIR/log.txt") 2>&1
step() { tar -czf "$OUT_DIR/results.tgz" -C "$RES" . ; echo "== $(date +%T) $*"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())" | tee -a "$RES/gpu.txt"

step "CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -15 | tee "$RES/cuda-tests.txt"

step "inference precision on CUDA: a 3-epoch cnn3, PublicTest in fp32 and in bf16 (accuracy and seconds)"
timeout 120 $PY -m fer_optuna.cli train --data "$DATA" --device cuda --epochs 3 --out "$WORK/cnn3-3.pt" > /dev/null
for precision in fp32 bf16 fp32 bf16; do  # twice each: the first call of each warms up
  TIMEFORMAT="$precision: %R s"
  { time $PY -m fer_optuna.cli evaluate --model "$WORK/cnn3-3.pt" --data "$DATA" --device cuda --precision $precision \
      --tta --json | grep -o '"accuracy": [0-9.]*' ; } 2>&1 | tee -a "$RES/precision-cuda.txt"
done

step "trainer benchmark: cnn3 (full epochs, timed after a warm-up epoch)"
timeout 120 $PY benchmarks/trainer.py --device cuda --data "$DATA" --models cnn3 --batches 64 128 256 --workers 8 \
  --out "$RES/trainer-gpu.json"
step "trainer benchmark: vgg and resnet18 at batch 128"
timeout 90 $PY benchmarks/trainer.py --device cuda --data "$DATA" --models vgg resnet18 --batches 128 --workers 8 \
  --out "$RES/trainer-gpu-big.json"

step "where a cnn3 training step's time goes (batch 128)"
timeout 60 $PY benchmarks/step_profile.py --device cuda --model cnn3 --batch-size 128 --out "$RES/step-profile.json"

step "study benchmark: fer2013-cnn3.yaml, 8 trials of 10 epochs, 1/2/4 workers on GPU 0"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$RES/gpu-utilisation.csv" &
SMI=$!
timeout 330 $PY benchmarks/study.py --device 0 --workers 1 2 4 --study-file studies/fer2013-cnn3.yaml --trials 8 --epochs 10 \
  --data "$DATA" --out "$RES/study-gpu.json"
kill $SMI

step "torch.compile with CUDA graphs on cnn3 at batch 128 (launch overhead)"
timeout 90 $PY benchmarks/trainer.py --device cuda --data "$DATA" --models cnn3 --batches 128 --workers 8 \
  --compile reduce-overhead --out "$RES/trainer-gpu-cudagraphs.json"

step "fer2013-deploy-gpu.yaml: the accuracy/latency front, 4 workers on GPU 0 for 90 s (latency on this host's CPU)"
DEPLOY="sqlite:///$WORK/deploy.db"
$PY -m fer_optuna.cli create-study --config studies/fer2013-deploy-gpu.yaml --storage "$DEPLOY" --data "$DATA" > /dev/null
timeout 150 $PY -m fer_optuna.cli worker --storage "$DEPLOY" --gpu 0 --per-gpu 4 --timeout 90 2>&1 | tail -5
$PY -m fer_optuna.cli status --storage "$DEPLOY" | tee "$RES/deploy-gpu-front.txt"

if [ "$TRAIN" = --train ]; then
  step "the shipped model's recipe, stage 1: models/fer2013-best.yaml on the full Training set"
  timeout 200 $PY -m fer_optuna.cli train --config models/fer2013-best.yaml --data "$DATA" --device cuda \
    --out runs/fer2013-best-stage1.pt 2>&1 | tee "$RES/vgg-gpu-train.log"
  step "stage 2: models/fer2013-best-editions.yaml (fine-tuned with degraded copies)"
  timeout 100 $PY -m fer_optuna.cli train --config models/fer2013-best-editions.yaml --data "$DATA" --device cuda \
    --out "$WORK/vgg-gpu.pt" 2>&1 | tee "$RES/vgg-gpu-editions.log"
  [ -f "$WORK/vgg-gpu.pt" ] && split -b 15M -d "$WORK/vgg-gpu.pt" "$OUT_DIR/vgg-gpu.pt."
fi

step "done"; ls -la "$OUT_DIR" "$RES"

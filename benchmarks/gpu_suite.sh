#!/usr/bin/env bash
# Every GPU measurement of benchmarks/README.md in one command, for a lent GPU machine whose time is
# short (a single call, each part under its own time limit, everything written under $OUT):
#   1. tests/test_gpu.py (skipped elsewhere); training throughput of the CNN, VAE and UNet in
#      32-true, 16-mixed and bf16-mixed (gpu_throughput.py), the Trainer against a hand-written
#      loop (trainer_overhead.py), and a short fit through configs/trainer/ddp.yaml (NCCL; one
#      GPU: the code path, not a speed-up);
#   2. at once, sharing the GPU (so their times are not speed figures): four UNet segmentation variants
#      for the mean-IoU aim (unet_quality.py) and the main job, mnist_classifier.yaml with the
#      gpu_amp.yaml preset, over several seeds through cnnlab-seeds (test accuracy distribution), and
#      the VAE on dynamically binarised MNIST (vae_mnist.py --binarize). Each fit stops at a time
#      limit that keeps the whole script inside DEADLINE seconds; tests run on the best checkpoint.
#   3. (PHASES=3) the GPU tests and the Trainer's overhead alone, then three UNet runs at once: base 32
#      on training scenes drawn anew each epoch and on scenes drawn once, and the shipped base 16 on
#      fresh scenes, each to the end of its schedule where the time allows.
#
#   CNNLAB_MNIST_DIR=<folder with the four MNIST .gz files> OUT=<dir> bash benchmarks/gpu_suite.sh
#   QUICK=1 ... : a few steps of each part, on the CPU too, to check the script before a GPU run.
set -u
OUT=${OUT:-benchmarks/out/gpu}
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
PHASES=${PHASES:-12}  # which parts to run
DEADLINE=${DEADLINE:-570}  # seconds from the start by which everything is written
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
WORK=$(mktemp -d)
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR"
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/suite.log"; }

MNIST_DIR=${CNNLAB_MNIST_DIR:-$(dirname "$PWD")/shared/data/mnist}
DATA=$WORK/data
mkdir -p "$DATA/MNIST/raw"
ln -s "$(realpath "$MNIST_DIR")"/*.gz "$DATA/MNIST/raw/"

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then ACC=gpu; else ACC=cpu; fi
if [ "$QUICK" = 1 ]; then
  STEPS="--steps 4 --warmup 2"; OVERHEAD="--steps 4 --repeats 1"; EPOCHS_A=1; EPOCHS_B=1; SEEDS=0-1
  SCENES_A="--train-scenes 128"; SCENES_B="--train-scenes 128"; SMALL="--data.val_scenes=32 --data.test_scenes=32"
  SEED_ARGS="--trainer.max_epochs=1 --data.max_train_samples=512 --data.max_eval_samples=256"
  VAE="--epochs 1 --big-k 10 --big-k-images 8"; VAE_ARGS="--data.max_train_samples=512 --data.max_eval_samples=256"
else
  STEPS="--steps 200 --warmup 30"; OVERHEAD="--steps 300 --repeats 3"; EPOCHS_A=40; EPOCHS_B=30; SEEDS=0-3
  SCENES_A=""; SCENES_B="--train-scenes 20000"; SMALL=""; SEED_ARGS=""
  VAE="--epochs 20 --big-k 5000 --big-k-images 500"; VAE_ARGS=""
fi
gpu_tests() {  # tests/test_gpu.py (skipped without CUDA), its output into folder $1
  log "GPU tests"
  timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py >"$1/gpu_tests.txt" 2>&1
  log "GPU tests exit $?"
  tail -3 "$1/gpu_tests.txt" | tee -a "$OUT/suite.log"
}
unet() {  # a UNet segmentation run of parts 2 and 3 within $FIT seconds: name, then unet_quality.py arguments
  local name=$1; shift
  timeout $((FIT + 70)) $PY benchmarks/unet_quality.py segmentation --accelerator $ACC \
    --threads 2 "$@" >"$OUT/unet_$name.txt" 2>&1
  log "unet $name exit $?"
}
log "accelerator $ACC; quick $QUICK; work $WORK"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch, lightning, torchmetrics, torchvision, jsonargparse, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__, 'torchvision', torchvision.__version__, 'jsonargparse', jsonargparse.__version__)"
} 2>&1 | tee -a "$OUT/suite.log"
$PY -c "import cnnlab.cli" || { log "cnnlab does not import: stopping"; exit 1; }

# ---- 1. the GPU tests, then speed, alone on the machine
if [[ $PHASES == *1* ]]; then
gpu_tests "$WORK"
log "throughput"
timeout 150 $PY benchmarks/gpu_throughput.py --accelerator $ACC $STEPS >"$OUT/throughput.txt" 2>&1
log "throughput exit $?"
grep -A20 "^machine:" "$OUT/throughput.txt" | tee -a "$OUT/suite.log"
for precision in 32-true bf16-mixed; do
  log "trainer overhead $precision"
  timeout 60 $PY benchmarks/trainer_overhead.py --device $([ $ACC = gpu ] && echo cuda || echo cpu) \
    --precision $precision $OVERHEAD >>"$WORK/overhead.txt" 2>&1
  log "overhead exit $?"
done
grep -E "^(machine|plain|cnnlab|[0-9]+ steps)" "$WORK/overhead.txt" | tee -a "$OUT/suite.log"
if [ $ACC = gpu ]; then
  log "ddp preset, one GPU"
  timeout 60 $PY train.py fit --config configs/mnist_classifier.yaml --config configs/trainer/ddp.yaml \
    --config configs/logger/csv.yaml --data.data_dir="$DATA" --trainer.max_epochs=1 \
    --trainer.limit_train_batches=100 --trainer.enable_progress_bar=false \
    --trainer.default_root_dir="$WORK/ddp" >"$WORK/ddp.log" 2>&1
  log "ddp exit $?"
  grep -iE "nccl|distributed|global_rank|Error|stopped" "$WORK/ddp.log" | head -8 | tee -a "$OUT/suite.log"
  cat "$WORK"/ddp/*/*/summary.json 2>/dev/null | head -c 600 | tee -a "$OUT/suite.log"; echo
fi

fi

# ---- 2. quality runs, together
if [[ $PHASES == *2* ]]; then
FIT=$((DEADLINE - SECONDS - 80))  # seconds each fit may take: the rest is for tests and packing
FIT=$((FIT < 60 ? 60 : FIT))
log "quality runs, ${FIT} s fit limit each"
LIMIT="--trainer.max_time=00:00:$(printf %02d:%02d $((FIT / 60)) $((FIT % 60)))"
unet a --epochs $EPOCHS_A $SCENES_A -- $LIMIT $SMALL &
unet b --epochs $EPOCHS_B $SCENES_B --base-channels 32 -- --data.batch_size=64 $LIMIT $SMALL &
unet c --epochs $EPOCHS_B $SCENES_B --base-channels 32 -- --data.batch_size=64 --model.dice_weight=1 $LIMIT $SMALL &
unet d --epochs $EPOCHS_A $SCENES_A -- --model.dice_weight=1 $LIMIT $SMALL &
(
  timeout $((FIT + 60)) $PY -m cnnlab.seeds run --config configs/mnist_classifier.yaml \
    $([ $ACC = gpu ] && echo --config configs/trainer/gpu_amp.yaml) --config configs/logger/csv.yaml \
    --seeds $SEEDS --jobs 2 --threads 2 --timeout $FIT --root "$WORK/seeds" --name cnn_gpu \
    --data.data_dir="$DATA" --trainer.enable_progress_bar=false $SEED_ARGS >"$OUT/seeds.txt" 2>&1
  log "seeds exit $?"
  $PY -m cnnlab.seeds report cnn_gpu --root "$WORK/seeds" --wandb off >>"$OUT/seeds.txt" 2>&1
  log "seeds report exit $?"
) &
(
  timeout $((FIT + 70)) $PY benchmarks/vae_mnist.py --binarize $VAE --threads 2 --out "$WORK/vae" -- \
    --trainer.accelerator=$ACC $LIMIT $VAE_ARGS >"$WORK/vae_binarized.txt" 2>&1
  log "binarised vae exit $?"
) &
wait
for name in a b c d; do
  log "unet $name:"; grep -E "^(model|fit on|scenes|test |val/miou)" "$OUT/unet_$name.txt" | tee -a "$OUT/suite.log"
done
tail -25 "$OUT/seeds.txt" | tee -a "$OUT/suite.log"
sed -n '/^== VAE/,$p' "$WORK/vae_binarized.txt" | tee -a "$OUT/suite.log"
fi

# ---- 3. the UNet aim again: training scenes drawn anew each epoch (data.augment, the default since
# stop 11) against scenes drawn once, trained to the end of the one-cycle schedule; before them, alone
# on the GPU, the GPU tests and the Trainer-vs-loop overhead since the guard stopped syncing per step
if [[ $PHASES == *3* ]]; then
gpu_tests "$OUT"
log "trainer overhead 32-true"
timeout 60 $PY benchmarks/trainer_overhead.py --device $([ $ACC = gpu ] && echo cuda || echo cpu) \
  --precision 32-true $OVERHEAD >"$OUT/overhead.txt" 2>&1
log "overhead exit $?"
grep -E "^(machine|plain|cnnlab|[0-9]+ steps)" "$OUT/overhead.txt" | tee -a "$OUT/suite.log"
FIT=$((DEADLINE - SECONDS - 70))
FIT=$((FIT < 60 ? 60 : FIT))
log "UNet fresh against fixed scenes, ${FIT} s fit limit each"
LIMIT="--trainer.max_time=00:00:$(printf %02d:%02d $((FIT / 60)) $((FIT % 60)))"
WORKERS="--data.num_workers=3"
unet fresh32 --epochs $EPOCHS_B $SCENES_B --base-channels 32 -- --data.batch_size=64 $WORKERS $LIMIT $SMALL &
unet fixed32 --epochs $EPOCHS_B $SCENES_B --base-channels 32 -- --data.batch_size=64 --data.augment=false \
  $WORKERS $LIMIT $SMALL &
unet fresh16 --epochs $EPOCHS_B $SCENES_A -- $WORKERS $LIMIT $SMALL &
wait
for name in fresh32 fixed32 fresh16; do
  log "unet $name:"; grep -E "^(model|fit on|scenes|test |(val|train)/miou)" "$OUT/unet_$name.txt" | tee -a "$OUT/suite.log"
done
fi

# run files worth keeping: logs, summaries, metrics, figures (no checkpoints: too large to bring back)
(cd "$WORK" && find . -not -path "./data/*" \( -name "*.txt" -o -name "*.log" -o -name "*.json" -o -name "*.csv" \
  -o -name "*.md" -o -name "*.png" -o -name "*.gif" \) -print0 \
  | tar -czf "$OUT/artifacts.tar.gz" --null -T -)
ls -la "$OUT" | tee -a "$OUT/suite.log"
log "done"

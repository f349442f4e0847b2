#!/usr/bin/env bash
# The throughput issue's GPU measurements in one command, for a lent GPU machine whose time is short:
# one call of at most 10 minutes (everything done by DEADLINE seconds, each part under its own
# `timeout`, everything written under $OUT), the most important numbers first:
#   a. tests/test_gpu.py (skipped without CUDA): the GPU preset, the guard on CUDA, and steady-state
#      training steps of the main config under torch.cuda.set_sync_debug_mode("error");
#   c. the Trainer against a hand-written loop on the GPU (trainer_overhead.py, the main job's setting:
#      SmallCNN, batch 128, augmentation on, 32-true);
#   d. AMP against float32 (gpu_throughput.py --models cnn: 32-true, 16-mixed, bf16-mixed; that script
#      has no channels-last option, so channels-last is not measured here);
#   b. the main job's wall time to 99.4% test accuracy and to the end of fit, beside the plain-PyTorch
#      reference in NCHW and in channels-last (ImageClassifier's format) (time_to_accuracy.py --seeds 0
#      --reference-epochs 3, on the GPU in TTA_PRECISION);
#   e. 100 seeds at the distributions' budget (seeds_distributions.py BUDGET) through cnnlab-seeds on
#      the one GPU with --jobs 4 warm workers, timed, then its report (what does not finish by the
#      deadline is stopped; the report covers the finished seeds).
# Then $OUT/summary.txt: each part's exit code and seconds, and its figures.
#
# On the GPU machine, from the repository root (the data is not on that machine: copy the four MNIST
# .gz files into an ignored folder of the checkout, e.g. data/mnist/, and carry that folder along):
#   CNNLAB_MNIST_DIR=data/mnist OUT=$OUT bash benchmarks/gpu_check.sh
# (PYTHON=<interpreter> if not python3; a package the machine lacks, e.g. jsonargparse, installed first
# from a carried wheel: pip install --no-index <wheel>.) Give the call timeout_s 600: DEADLINE is 540.
#   QUICK=1 OUT=/tmp/gpucheck bash benchmarks/gpu_check.sh : a few steps of each part, on the CPU too
#   (parts needing CUDA are skipped or run on the CPU), to check the script before a GPU run.
set -u
OUT=${OUT:-benchmarks/out/gpu_check}
PY=${PYTHON:-python3}
QUICK=${QUICK:-0}
DEADLINE=${DEADLINE:-540}  # seconds from the start by which everything is written
TTA_PRECISION=${TTA_PRECISION:-32-true}  # part b's precision on the GPU (see benchmarks/README.md: 32-true is faster)
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
WORK=$(mktemp -d)
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR"
: >"$OUT/check.log"
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/check.log"; }
RESULTS=()  # "part: exit code, seconds" lines for the summary
# limit WANTED RESERVE: seconds a part may take, at most WANTED, leaving RESERVE before DEADLINE
limit() { local left=$((DEADLINE - SECONDS - $2)); echo $(($1 < left ? $1 : left)); }
# part NAME LIMIT COMMAND...: COMMAND under timeout (SIGINT first, SIGKILL 15 s later), output in $OUT/NAME.txt
part() {
  local name=$1 seconds=$2 start=$SECONDS; shift 2
  if [ "$seconds" -lt 20 ]; then
    log "$name: skipped, ${seconds} s left before the deadline"; RESULTS+=("$name: skipped (no time left)"); return
  fi
  log "$name (limit ${seconds} s)"
  timeout -s INT -k 15 "$seconds" "$@" >"$OUT/$name.txt" 2>&1
  local code=$?
  RESULTS+=("$name: exit $code$([ $code = 124 ] && echo ' (time limit)'), $((SECONDS - start)) s")
  log "$name exit $code after $((SECONDS - start)) s"
}

# the real MNIST, unpacked once (seed workers then read it without unpacking it four times at once)
export CNNLAB_MNIST_DIR=$(realpath "${CNNLAB_MNIST_DIR:-$(dirname "$PWD")/shared/data/mnist}")
DATA=$WORK/data
mkdir -p "$DATA/MNIST/raw"
for gz in "$CNNLAB_MNIST_DIR"/*.gz; do
  gunzip -c "$gz" >"$DATA/MNIST/raw/$(basename "${gz%.gz}")"
done

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then ACC=gpu; else ACC=cpu; fi
if [ "$QUICK" = 1 ]; then
  OVERHEAD="--steps 4 --repeats 1 --threads 1"; STEPS="--steps 4 --warmup 2"
  TTA="--seeds 0 --epochs 1 --reference-epochs 1 --max-train-samples 2000 --threads 1"
  TTA="$TTA --reference-formats contiguous channels_last"
  TTA_ARGS="--data.max_eval_samples=1000"
  SEEDS=0-1; JOBS="--jobs 2 --threads 1"
  SEED_ARGS="--data.max_train_samples=256 --data.max_eval_samples=256"
  LIMITS=(60 60 120)  # c, d, b
else
  OVERHEAD="--steps 300 --repeats 3"; STEPS="--steps 200 --warmup 30"
  TTA="--seeds 0 --reference-epochs 3 --reference-formats contiguous channels_last"; TTA_ARGS=""
  SEEDS=0-99; JOBS="--jobs 4 --threads 4"; SEED_ARGS=""
  LIMITS=(100 90 180)  # c, d, b
fi
if [ $ACC = gpu ]; then
  DEVICE=cuda; PRECISIONS="32-true 16-mixed bf16-mixed"; GPUS=""
  TTA_ARGS="$TTA_ARGS --trainer.accelerator=gpu --trainer.devices=1 --trainer.precision=$TTA_PRECISION"
else  # fp16 autocast does not run on the CPU
  DEVICE=cpu; PRECISIONS="32-true bf16-mixed"; GPUS="--gpus none"
  TTA_ARGS="$TTA_ARGS --trainer.accelerator=cpu"
fi
log "accelerator $ACC; quick $QUICK; deadline ${DEADLINE} s; work $WORK"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
  COMMIT=$(git rev-parse --short HEAD 2>/dev/null) && { git diff --quiet HEAD || COMMIT="$COMMIT + changes"; }
  echo "$(getconf _NPROCESSORS_ONLN) cores, $(uname -srm); code at ${COMMIT:-?}"
  $PY -c "import platform, torch, lightning, torchmetrics, jsonargparse as j
print('python', platform.python_version(), 'torch', torch.__version__, 'lightning', lightning.__version__,
      'torchmetrics', torchmetrics.__version__, 'jsonargparse', j.__version__)"
} 2>&1 | tee "$OUT/machine.txt" | tee -a "$OUT/check.log"
$PY -c "import cnnlab.cli" || { log "cnnlab does not import: stopping"; exit 1; }

# a. the GPU tests (all skipped without CUDA)
part a_gpu_tests "$(limit 150 300)" $PY -m pytest -q -p no:cacheprovider -rfEs tests/test_gpu.py

# c. the Trainer against a hand-written loop: the main job's network, batch and augmentation, figure callbacks out
part c_trainer_overhead "$(limit "${LIMITS[0]}" 250)" $PY benchmarks/trainer_overhead.py --device $DEVICE \
  --config configs/mnist_classifier.yaml --width 0 --batch-size 128 --augment --precision 32-true $OVERHEAD

# d. AMP against float32: the CNN through the CLI's Trainer in each precision
part d_throughput "$(limit "${LIMITS[1]}" 200)" $PY benchmarks/gpu_throughput.py --accelerator $ACC --models cnn \
  --precisions $PRECISIONS $STEPS

# b. time to accuracy: the main job (config as shipped, 11 epochs, progress bar on) and the plain loop
part b_time_to_accuracy "$(limit "${LIMITS[2]}" 90)" $PY benchmarks/time_to_accuracy.py $TTA --out "$OUT/tta" \
  -- $TTA_ARGS
# the progress bars' lines (carriage returns) out of the copy kept in $OUT
if [ -f "$OUT/b_time_to_accuracy.txt" ]; then
  tr '\r' '\n' <"$OUT/b_time_to_accuracy.txt" | grep -v -E "^(Epoch|Validation|Testing|Sanity)|^\s*$" >"$WORK/tta.txt"
  mv "$WORK/tta.txt" "$OUT/b_time_to_accuracy.txt"
fi

# e. many seeds on one device with warm workers, at seeds_distributions.py's budget, then the report
BUDGET=$(PYTHONPATH=benchmarks:$PYTHONPATH $PY -c "import seeds_distributions as s; print(' '.join(s.BUDGET))")
SEEDS_LIMIT=$(limit 400 45)  # the report and the summary after it
log "seeds budget: ${BUDGET:-not readable from benchmarks/seeds_distributions.py, so part e is skipped}"
[ -n "$BUDGET" ] || SEEDS_LIMIT=0
SEEDS_START=$SECONDS
TIMEFORMAT="launcher and workers: %R s wall, %U s user, %S s system CPU"
{ time part e_seeds "$SEEDS_LIMIT" $PY -m cnnlab.seeds run --config configs/mnist_classifier.yaml $BUDGET \
  --data.data_dir="$DATA" --seeds $SEEDS $JOBS $GPUS --timeout 120 --root "$WORK/seeds" --name cnn-budget \
  --trainer.enable_progress_bar=false $SEED_ARGS; } 2>"$WORK/seeds_time.txt"
SEEDS_WALL=$((SECONDS - SEEDS_START))
cat "$WORK/seeds_time.txt" >>"$OUT/e_seeds.txt"
REPORT_LIMIT=$(limit 40 3)
timeout $((REPORT_LIMIT < 10 ? 10 : REPORT_LIMIT)) $PY -m cnnlab.seeds report cnn-budget --root "$WORK/seeds" \
  --wandb off >"$OUT/e_seeds_report.txt" 2>&1
log "seeds report exit $?"
cp "$WORK/seeds/cnn-budget/report/summary.md" "$OUT/e_seeds_report.md" 2>/dev/null
FINISHED=$(grep -o -m1 "[0-9]* of [0-9]* seeds finished" "$OUT/e_seeds_report.md" 2>/dev/null || echo "no seed done")

# ---- the summary, most important first
{
  echo "gpu_check.sh: accelerator $ACC, quick $QUICK, $(date -Is), ${SECONDS} s of ${DEADLINE}"
  cat "$OUT/machine.txt"
  echo; echo "== parts (exit code 124: stopped at its time limit)"; printf '%s\n' "${RESULTS[@]}"
  echo; echo "== a. tests/test_gpu.py"; tail -n 12 "$OUT/a_gpu_tests.txt"
  echo; echo "== c. Trainer against a hand-written loop"
  grep -E "^(machine|plain PyTorch|cnnlab Trainer|Trainer overhead|[0-9]+ steps)" "$OUT/c_trainer_overhead.txt"
  echo; echo "== d. AMP against float32 (CNN; no channels-last variant measured)"
  grep -A8 "^machine:" "$OUT/d_throughput.txt"
  echo; echo "== b. time to accuracy"
  cat "$OUT/tta/time_to_accuracy.md" 2>/dev/null \
    || { echo "(no table; the per-seed lines so far:)"; grep '^{' "$OUT/b_time_to_accuracy.txt" 2>/dev/null; }
  echo; echo "== e. seeds $SEEDS at the distributions' budget, $JOBS${GPUS:+ $GPUS}:" \
    "$FINISHED in ${SEEDS_WALL} s"
  cat "$WORK/seeds_time.txt"
  tail -n 4 "$OUT/e_seeds.txt" | grep -v "^launcher and workers"
  cat "$OUT/e_seeds_report.md" 2>/dev/null | head -n 30
} >"$OUT/summary.txt" 2>&1

# run files worth keeping: logs, summaries, metrics, figures (no checkpoints: too large to bring back)
(cd "$WORK" && find . -not -path "./data/*" -not -path "./tmp/*" -not -path "*/wandb/*" \
  \( -name "*.txt" -o -name "*.log" -o -name "*.json" -o -name "*.csv" -o -name "*.md" -o -name "*.png" \) -print0 \
  | tar -czf "$OUT/artifacts.tar.gz" --null -T -)
log "done; summary in $OUT/summary.txt"
cat "$OUT/summary.txt"

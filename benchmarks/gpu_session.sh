#!/usr/bin/env bash
# Every GPU check in one command, within a time budget (for a short GPU lease; results in benchmarks/results/gpu.md):
#
#   benchmarks/gpu_session.sh SAMPLE_DIR OUT_DIR [SECONDS]
#
# SAMPLE_DIR holds the real sample's train/ and train_masks/ (../shared/carvana_sample). In order, each step
# stopped at its own limit and at what is left of SECONDS (default 520), all output in OUT_DIR/session.log:
#   1. benchmarks/bench_gpu.py: matmul ceiling, FLOPs per image, eager training and inference at batch 4/8/16,
#      the decoding loader at 2..14 workers (OUT_DIR/bench.json)
#   2. a real run at full resolution: 28 sample cars to train on, 4 held out as a test set with truth:
#      01_prepare.py -> 02_train.py --fold 0 -> 03_predict.py --folds 0 -> 04_submit.py --baselines --score,
#      with nvidia-smi dmon sampling GPU use during training (OUT_DIR/dmon.log, OUT_DIR/run.tar.gz)
#   3. the test suite on the GPU machine (pytest -n 8)
#   4. bench_gpu.py --sections compile: torch.compile (OUT_DIR/bench_compile.json)
# Environment: STEPS (default "bench prepare train predict submit tests compile"; also "loader": the loader part
# of bench alone; "recipes": benchmarks/sweep_recipes.py, the CPU preset's cross-validation for each recipe of
# RECIPES, all at once on the GPU, lines in the log, OUT_DIR/recipes.tar.gz), EPOCHS (16), TRAIN_ARGS (more
# 02_train.py flags, e.g. "--compile"), RECIPES (flag strings separated by ";", e.g. ";--epochs 42"; "" is the preset
# as it is), RECIPES_COMMON (flags for all of them), PYTHON (python3).
set -u
SAMPLE=$(cd "$1" && pwd); OUT=$2; BUDGET=${3:-520}
PY=${PYTHON:-python3}
export TQDM_DISABLE=1  # no progress bars in the log
EPOCHS=${EPOCHS:-16}
STEPS=" ${STEPS:-bench prepare train predict submit tests compile} "
read -r -a TRAIN_EXTRA <<<"${TRAIN_ARGS:-}"
T0=$SECONDS
LOG=$OUT/session.log
IN=/tmp/gpu_session/input; RUN=/tmp/gpu_session/output
mkdir -p "$OUT"

left() { echo $((BUDGET - (SECONDS - T0))); }
step() {  # step NAME LIMIT_SECONDS COMMAND...: run it under the smaller of its limit and the time left
  local name=$1 limit=$2 t s0 rc
  shift 2
  [[ $STEPS == *" $name "* ]] || return 0
  t=$(left)
  if ((t < 20)); then echo "== $name: skipped, ${t}s left" | tee -a "$LOG"; return; fi
  ((limit > t)) && limit=$t
  echo "== $name (at $((SECONDS - T0))s, limit ${limit}s): $*" | tee -a "$LOG"
  s0=$SECONDS
  timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - s0))s" | tee -a "$LOG"
}

{ nvidia-smi; nproc; free -g; df -h /tmp; $PY -c "import torch, cv2, segmentation_models_pytorch as smp, \
albumentations as A; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'smp', smp.__version__, 'albumentations', A.__version__, 'cv2', cv2.__version__)"
} >>"$LOG" 2>&1

# the sample as a Kaggle-layout input: 4 of its 32 cars become a test set with truth
rm -rf /tmp/gpu_session
$PY - "$SAMPLE" "$IN" <<'EOF' >>"$LOG" 2>&1
import sys
from pathlib import Path
sample, root = Path(sys.argv[1]), Path(sys.argv[2])
ids = sorted(p.stem for p in (sample / "train").glob("*.jpg"))
cars = sorted({i.rsplit("_", 1)[0] for i in ids})
held_out = set(cars[::8])
for d in ("train", "train_masks", "test", "test_masks"):
    (root / d).mkdir(parents=True)
rows = []
for i in ids:
    test = i.rsplit("_", 1)[0] in held_out
    (root / ("test" if test else "train") / f"{i}.jpg").symlink_to(sample / "train" / f"{i}.jpg")
    (root / ("test_masks" if test else "train_masks") / f"{i}_mask.gif").symlink_to(
        sample / "train_masks" / f"{i}_mask.gif")
    rows += [f"{i}.jpg,1 1"] if test else []
(root / "sample_submission.csv").write_text("img,rle_mask\n" + "\n".join(rows) + "\n")
print(f"input: {len(ids) - len(rows)} training images, {len(rows)} test images of cars {sorted(held_out)}")
EOF

step bench 130 $PY benchmarks/bench_gpu.py --input "$IN" --encoder-weights none --sections eager,loader \
  --batch-sizes 4,8,16 --steps 10 --loader-workers 2,4,8,14 --json "$OUT/bench.json"
step loader 60 $PY benchmarks/bench_gpu.py --input "$IN" --encoder-weights none --sections loader \
  --loader-workers 2,4,8,14 --json "$OUT/bench_loader.json"

A=(--input "$IN" --output "$RUN" --encoder-weights none --workers 12)
step prepare 60 /usr/bin/time -v $PY 01_prepare.py "${A[@]}"
nvidia-smi dmon -s um -d 1 >"$OUT/dmon.log" 2>&1 &
DMON=$!
step train 220 /usr/bin/time -v $PY 02_train.py --fold 0 "${A[@]}" --epochs "$EPOCHS" --batch-size 8 --lr 1e-3 \
  "${TRAIN_EXTRA[@]}"
kill $DMON
step predict 90 /usr/bin/time -v $PY 03_predict.py "${A[@]}" --folds 0
step submit 60 /usr/bin/time -v $PY 04_submit.py "${A[@]}" --baselines --score
[[ -d $RUN ]] && (cd "$RUN" && tar czf "$OUT/run.tar.gz" --exclude='*.pt' --exclude=test_probs --exclude=cache . ) >>"$LOG" 2>&1

IFS=';' read -r -a RECIPE_LIST <<<"${RECIPES:-}"
step recipes 600 $PY benchmarks/sweep_recipes.py --input "$SAMPLE" --out /tmp/gpu_session/sweep \
  --common "--device cuda --compile off --jobs 4 ${RECIPES_COMMON:-}" --deadline $(($(left) - 30)) "${RECIPE_LIST[@]}"
[[ $STEPS == *" recipes "* ]] && (cd /tmp/gpu_session/sweep && tar czf "$OUT/recipes.tar.gz" results.json \
  r*/log.txt r*/output/*/tuning.json r*/output/*/fold*/log.csv) >>"$LOG" 2>&1

export CARVANA_SAMPLE=$SAMPLE
step tests 150 $PY -m pytest -q -n 8 -p no:cacheprovider tests
step compile 200 $PY benchmarks/bench_gpu.py --input "$IN" --encoder-weights none --sections compile \
  --compile-batch-size 8 --steps 10 --json "$OUT/bench_compile.json"
echo "== done at $((SECONDS - T0))s" | tee -a "$LOG"

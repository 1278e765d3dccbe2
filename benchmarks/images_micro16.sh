# The 16-bit micro16 demo against the same images squeezed to 8-bit RGB (what the reader did before lib/imageformat.py).
# Usage: bash benchmarks/images_micro16.sh   (writes /tmp/bm; about 6 minutes on 2 CPU cores)
set -e
rm -rf /tmp/bm && mkdir -p /tmp/bm
cd "$(dirname "$0")/.."
F="--preset demo --height 64 --width 96 --n-folds 2 --workers 0 --batch-size 8 --val-every 1 --jobs 1 --predict-batch-size 8 --tta none --encoder-weights none --epochs 8"
.venv/bin/python 01_prepare.py --demo --demo-kind micro16 --demo-train-cars 32 --demo-test-cars 8 --demo-width 96 --demo-height 64 --input /tmp/bm/in16 --output /tmp/bm/out16 $F
cp -r /tmp/bm/in16 /tmp/bm/in8 && rm /tmp/bm/in8/DEMO
.venv/bin/python - <<'PY'
import cv2, glob
for p in glob.glob("/tmp/bm/in8/train/*.png") + glob.glob("/tmp/bm/in8/test/*.png"):
    cv2.imwrite(p, cv2.imread(p, cv2.IMREAD_COLOR))  # what the 8-bit RGB reader made of them before
PY
.venv/bin/python 01_prepare.py --input /tmp/bm/in8 --output /tmp/bm/out8 $F
for k in 16 8; do
  .venv/bin/python 02_train.py --fold all --input /tmp/bm/in$k --output /tmp/bm/out$k $F
  .venv/bin/python 03_predict.py --input /tmp/bm/in$k --output /tmp/bm/out$k $F
  .venv/bin/python 04_submit.py --baselines --score --input /tmp/bm/in$k --output /tmp/bm/out$k $F
done

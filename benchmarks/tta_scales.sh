# Multi-scale TTA (--tta-scales) against scale 1 alone, out-of-fold, on the real sample and the multi-class demo
# (issue 28: a row for each new TTA choice on both). 03's --tta auto tries each --tta-modes mode at scale 1 and at
# the scales, one pass over the out-of-fold images each, and prints a row per mode; 04 --score scores the chosen one.
# Usage: bash benchmarks/tta_scales.sh   (writes /tmp/bm_scales; about 15 minutes on 2 CPU cores)
set -e
W=/tmp/bm_scales
rm -rf $W && mkdir -p $W
cd "$(dirname "$0")/.."
# the real sample: fold 0 of the cpu preset's 4, 6 epochs at 96 x 128 (as results/menu.md's loss rows)
R="--preset cpu --input ../shared/carvana_sample --output $W/real --height 96 --width 128 --epochs 6 --jobs 1"
.venv/bin/python 01_prepare.py $R
.venv/bin/python 02_train.py --fold 0 $R
.venv/bin/python 03_predict.py --folds 0 --tta auto --tta-modes none,hflip --tta-scales 0.75,1,1.25 $R
# the multi-class demo: make demo-multiclass's settings (2 folds, 10 epochs at 96 x 160)
M="--preset demo --input $W/mc_in --output $W/mc --classes 5 --class-colors $W/mc_in/classes.csv"
.venv/bin/python 01_prepare.py --demo --demo-kind multiclass --demo-width 480 --demo-height 320 $M
.venv/bin/python 02_train.py --fold all $M
.venv/bin/python 03_predict.py --tta auto --tta-modes none,hflip,hvflip --tta-scales 0.75,1,1.25 $M
.venv/bin/python 04_submit.py --score $M

#!/usr/bin/env bash
# The whole lab on the synthetic demo data set, on the CPU, in a few minutes:
# generate data -> train ResNet18/50/152 -> evaluate + Kaggle CSVs -> plot.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=storage/demo
# EMA + zero-init: no zig-zag in the valid curve (scripts/recipes.py, README "Augmentation, weight averaging")
COMMON=(--data new_dataset --out "$OUT" --image-size 64 -b 32 --workers 0 --seed 0 --ema --zero-init-residual)

$PY demo_data.py --out new_dataset
rm -rf "$OUT"
$PY train.py -m ResNet18 -e 8 --name ResNet18 --warmup-epochs 2 "${COMMON[@]}"   # a gentler start; one dip remains
$PY train.py -m ResNet50 -e 4 --name ResNet50 "${COMMON[@]}"
$PY train.py -m ResNet152 -e 3 --name ResNet152 "${COMMON[@]}"
for run in ResNet18 ResNet50 ResNet152; do
    $PY eval.py -m "$OUT/$run" -c
done
$PY eval.py -m "$OUT/ResNet18" "$OUT/ResNet50" "$OUT/ResNet152" -c   # the three as an ensemble
$PY plot.py -f "$OUT"
$PY report.py -f "$OUT"
echo
echo "Demo finished. Look at:"
echo "  $OUT/accuracy.png              accuracy per epoch, three architectures"
echo "  $OUT/confusion_matrices.png    valid confusion matrices side by side"
echo "  $OUT/report.html               the experiment report, the ensemble included (open it in a browser)"
echo "  $OUT/<model>/eval/             metrics with 95% intervals, ROC, calibration, Kaggle CSVs (*_submission.csv)"
echo "  $OUT/ensemble-ResNet18+ResNet50+ResNet152/   the three models averaged"

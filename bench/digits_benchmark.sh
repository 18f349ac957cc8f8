#!/usr/bin/env bash
# The digits-canvas localization benchmark, end to end, with the camlens CLI only:
# make the data, train a small GAP CNN on the CPU, score CAM, Grad-CAM and Grad-CAM++.
# The table in docs/evaluation.md comes from OUT/eval/report.md.
#
# Run: bash bench/digits_benchmark.sh [OUT]    (default runs/digits-benchmark; OUT must not exist)
# About 10 minutes on 2 CPU cores.
set -euo pipefail
out="${1:-runs/digits-benchmark}"
seed="${SEED:-0}"
camlens=${CAMLENS:-camlens}

bash "$(dirname "$0")/digits_data.sh" "$out/data" "$seed"
$camlens train "$out/data/train" --out "$out/model.pt" --arch small_cnn --epochs 15 --lr 3e-3 --seed "$seed" --device cpu
# pointing-game slack: Zhang et al.'s 15 px on ~224 px images is 4 px on these 64 px canvases
$camlens evaluate "$out/data/test" --boxes "$out/data/boxes.csv" --model "$out/model.pt" \
    --method cam,gradcam,gradcam++ --pointing-tolerance 4 --examples 6 --out "$out/eval" --device cpu \
    --title "CAM, Grad-CAM and Grad-CAM++ on digits-canvas (small_cnn, seed $seed)"

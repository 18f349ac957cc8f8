#!/usr/bin/env bash
# The digits-canvas localization benchmark, end to end, with the camlens CLI only:
# make the data, train a small GAP CNN on the CPU, score CAM, Grad-CAM, Grad-CAM++ and the
# many-forward methods (Score-CAM, Ablation-CAM, Recipro-CAM, Group-CAM, RISE with 1000 masks).
# The table in docs/evaluation.md is OUT/eval/report.md's (the numbers are in OUT/eval/metrics.json).
#
# Run: bash bench/digits_benchmark.sh [OUT]    (default runs/digits-benchmark; OUT must not exist)
# Its times, measured: docs/evaluation.md.
set -euo pipefail
out="${1:-runs/digits-benchmark}"
seed="${SEED:-0}"
camlens=${CAMLENS:-camlens}

bash "$(dirname "$0")/digits_data.sh" "$out/data" "$seed"
$camlens train "$out/data/train" --out "$out/model.pt" --arch small_cnn --epochs 15 --lr 3e-3 --seed "$seed" --device cpu
# pointing-game slack: Zhang et al.'s 15 px on ~224 px images is 4 px on these 64 px canvases
$camlens evaluate "$out/data/test" --boxes "$out/data/boxes.csv" --model "$out/model.pt" \
    --method cam,gradcam,gradcam++,scorecam,ablationcam,reciprocam,groupcam,rise:masks=1000 --pointing-tolerance 4 --examples 6 --out "$out/eval" --device cpu \
    --title "CAM-family methods on digits-canvas (small_cnn, seed $seed)"

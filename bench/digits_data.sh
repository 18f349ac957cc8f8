#!/usr/bin/env bash
# The digits-canvas benchmark's data, shared by bench/digits_benchmark.sh (the CNN) and
# bench/digits_vit_benchmark.sh (the ViT), so both score maps on the same images and boxes.
#
# Run: bash bench/digits_data.sh OUT SEED    (writes OUT/train, OUT/test, OUT/boxes.csv)
set -euo pipefail
camlens=${CAMLENS:-camlens}
$camlens data digits-canvas --out "$1" --train-per-class 300 --test-per-class 30 --size 64 \
    --digit-min 20 --digit-max 40 --clutter 4 --seed "$2"

#!/usr/bin/env bash
# The digits-canvas benchmark for a vision transformer, end to end, with the camlens CLI only:
# the same data as bench/digits_benchmark.sh (same seed), a small timm ViT trained from scratch
# on the CPU (8x8 patches of the 64x64 canvases, one class token, 4 blocks of width 128, 4
# heads), then Grad-CAM, attention rollout, gradient rollout and LeGrad scored like the CNN's.
# The table in docs/evaluation.md is OUT/eval/report.md's (the numbers are in OUT/eval/metrics.json).
#
# Run: bash bench/digits_vit_benchmark.sh [OUT]    (default runs/digits-vit; OUT must not exist)
# Its times, measured: docs/evaluation.md.
set -euo pipefail
out="${1:-runs/digits-vit}"
seed="${SEED:-0}"
camlens=${CAMLENS:-camlens}

bash "$(dirname "$0")/digits_data.sh" "$out/data" "$seed"
$camlens train "$out/data/train" --out "$out/vit.pt" --arch timm:vit_tiny_patch16_224 --no-pretrained \
    --input-size 64 --arch-option patch_size=8 --arch-option depth=4 --arch-option embed_dim=128 \
    --arch-option num_heads=4 --epochs 30 --warmup 3 --lr 1e-3 --weight-decay 0.05 --patience 8 \
    --seed "$seed" --device cpu
$camlens evaluate "$out/data/test" --boxes "$out/data/boxes.csv" --model "$out/vit.pt" \
    --method gradcam,rollout,gradrollout,legrad --pointing-tolerance 4 --examples 6 --out "$out/eval" --device cpu \
    --title "Grad-CAM, rollout, gradient rollout and LeGrad on digits-canvas (ViT 8x8 patches, seed $seed)"

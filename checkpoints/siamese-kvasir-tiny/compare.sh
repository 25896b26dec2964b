#!/usr/bin/env bash
# The paper's comparison at equal budget: a mask-only ControlNet (loss_mask alone) trained from the same
# stage-1 base, with the same data, steps, seed and settings as stage 2 of recipe.sh; then both scored
# by `python -m siamese evaluate` on the same held-out split, at control scale 1 (as trained) and 2 (the
# bundled model's recommended mask strength). Extra arguments after DATA RUNS go to every evaluation.
#   usage: bash checkpoints/siamese-kvasir-tiny/compare.sh [DATA] [RUNS]   (after recipe.sh)
set -euo pipefail
DATA=${1:-../shared/data/kvasir-seg}
RUNS=${2:-runs}
PY=${PYTHON:-python}
$PY -m siamese train --data "$DATA" --output "$RUNS/kvasir-controlnet" --model "$RUNS/kvasir-base" \
  --objective controlnet --resolution 256 --batch-size 8 --max-steps 2000 --lr 2e-4 --warmup-steps 50 --ema-decay 0.99 \
  --checkpoint-every 100 --log-every 20 --preview-every 250 --seed 0 --holdout 0.2 \
  --name kvasir-mask-only --resume latest
for run in kvasir-siamese kvasir-controlnet; do
  for scale in 1 2; do
    $PY -m siamese evaluate --data "$DATA" --model "$RUNS/$run" --control-scale $scale \
      --output "$RUNS/eval-$run-cs$scale" "${@:3}"
  done
done

#!/usr/bin/env bash
# Retrains the bundled default model (version 7) from scratch on Kvasir-SEG, holding out the 20% split that
# `python -m siamese evaluate` tests on. CPU: about 3.5 hours on 2 idle cores (stage 1 ~2 it/s, stages 2
# to 4 ~0.4-0.5 it/s, the decoder ~2-3 it/s on one thread); on a busy machine set OMP_NUM_THREADS=1: oversubscribed torch threads
# run several times slower. Every stage resumes from its last checkpoint or skips when done: run this
# script again after an interruption.
#   usage: bash checkpoints/siamese-kvasir-tiny/recipe.sh [DATA] [RUNS]
set -euo pipefail
DATA=${1:-../shared/data/kvasir-seg}
RUNS=${2:-runs}
PY=${PYTHON:-python}
SEED=0
COMMON=(--data "$DATA" --resolution 256 --batch-size 8 --seed $SEED --holdout 0.2 --name siamese-kvasir-tiny --resume latest \
  --scorer-steps 0)  # the fidelity scorer is trained longer below
# Stage 1: text-to-image pre-training of the tiny UNet on 16 whitened PCA channels of 8x8 patches.
$PY -m siamese train "${COMMON[@]}" --output "$RUNS/kvasir-base" --model tiny --objective base \
  --max-steps 3600 --lr 3e-4 --warmup-steps 100 --ema-decay 0.999 --checkpoint-every 200 --log-every 50
# Stage 2: the Siamese objective; ControlNet (DHI 4-8-16-32-64) initialised from the stage-1 UNet encoder.
$PY -m siamese train "${COMMON[@]}" --output "$RUNS/kvasir-siamese" --model "$RUNS/kvasir-base" --objective siamese \
  --max-steps 2000 --lr 2e-4 --warmup-steps 50 --ema-decay 0.99 --checkpoint-every 100 --log-every 20 --preview-every 250
# Stage 3 (version 3): 700 more Siamese steps with the noisiest timesteps favoured (diffusers' timestep bias: t >= 500
# drawn 3x as often as t < 500), on a 1000-step schedule stopped at step 701 as the shipped run was; the learned
# decoder (below) is trained on the codec alone, so it serves both generators.
$PY -m siamese train "${COMMON[@]}" --output "$RUNS/kvasir-siamese-tb" --model "$RUNS/kvasir-siamese" --objective siamese \
  --max-steps 1000 --stop-at 701 --lr 2e-4 --warmup-steps 50 --ema-decay 0.99 --checkpoint-every 100 --log-every 20 \
  --timestep-bias later --timestep-bias-multiplier 3 --timestep-bias-portion 0.5
# Stage 4 (version 6): 1200 more biased Siamese steps with the UNet decoder locked (`--lock-decoder`: the ControlNet
# alone trains, as in the paper; unlocked, the image branch pulled the shared decoder away from real texture), on a
# 2000-step schedule stopped at step 1201 as the shipped run was.
$PY -m siamese train "${COMMON[@]}" --output "$RUNS/kvasir-siamese-locked" --model "$RUNS/kvasir-siamese-tb" \
  --objective siamese --lock-decoder --max-steps 2000 --stop-at 1201 --lr 2e-4 --warmup-steps 50 --ema-decay 0.99 \
  --checkpoint-every 100 --log-every 20 --timestep-bias later --timestep-bias-multiplier 3 --timestep-bias-portion 0.5
# The learned decoder (version 2): DecoderTiny over the same PCA latents, on 96x96 crops with latent noise.
# It depends on the codec alone (fitted in stage 1), so it is trained once, into the stage-2 folder.
if [ ! -f "$RUNS/kvasir-siamese/codec/decoder/config.json" ]; then
  $PY -m siamese train-decoder --model "$RUNS/kvasir-siamese" --data "$DATA" --holdout 0.2 --steps 4000 --seed $SEED
fi
# The fidelity scorer (segmenter/, for `sample --min-fidelity`): a MONAI UNet on the same 720 training pairs at
# 128x128, 2000 steps (about 10 minutes on one busy CPU thread); its Dice on the 180 held-out pairs is in its config.
if ! grep -qs '"steps": 2000' "$RUNS/kvasir-siamese/segmenter/config.json"; then
  $PY -m siamese train-scorer --model "$RUNS/kvasir-siamese" --data "$DATA" --steps 2000 --seed $SEED
fi
# Ship: fp16 weights, no optimiser state or checkpoints; the stage-4 generator with the decoder, the scorer and the
# autoguidance guide (stage 2); the
# recommended mask strength (version 6: control scale 1.5 in every step, control end 1.0) chosen by the sweeps in
# the model card; sampling steps spaced "trailing" (version 4; the app's default guidance 9 goes with it).
$PY - "$RUNS/kvasir-siamese-locked" "$(dirname "$0")" "$RUNS/kvasir-base" "$RUNS/kvasir-siamese" "$RUNS/kvasir-siamese-tb" <<'PY'
import shutil, sys, torch
from siamese import load_model
from siamese.guide import make_guide
run, ship, base, stage2, stage3 = sys.argv[1:]
model, weak = load_model(run), load_model(stage2)
model.codec.set_decoder(weak.codec.decoder)
model.config.control_scale, model.config.control_end = 1.5, 1.0
# version 7: autoguidance 2 with stage 2 (version 1's generator) as the guide; it differs from the shipped generator
# in the ControlNet and the UNet decoder only, so guide/ keeps those (the UNet encoder is shared)
model.guide = make_guide(model, weak, "stage 2")
model.config.autoguidance = 2.0
model.scheduler_config["timestep_spacing"] = "trailing"  # version 4: sampling starts at t = 999 (new runs have it)
model.save_pretrained(ship, dtype=torch.float16)
shutil.copy(f"{stage2}/codec/decoder/train_config.json", f"{ship}/codec/decoder/")
shutil.copytree(f"{stage2}/segmenter", f"{ship}/segmenter", dirs_exist_ok=True)
for folder, suffix in ((base, "-stage1"), (stage2, ""), (stage3, "-stage3"), (run, "-stage4")):
    for name in ("train_config.json", "metrics.csv"):
        shutil.copy(f"{folder}/{name}", f"{ship}/{name.replace('.', suffix + '.')}")
PY

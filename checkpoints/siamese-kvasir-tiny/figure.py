"""The model card's side-by-side figure: real image, its mask, then one sample per model from that mask
(seed = row number, DPM-Solver++ 20 steps, each model at its recommended control scale and the guidance
after "@", default 3), for 8 held-out Kvasir-SEG pairs (the split `evaluate` tests on).

    python checkpoints/siamese-kvasir-tiny/figure.py DATA OUT.png LABEL=MODEL[@GUIDANCE] [LABEL=MODEL ...]
e.g. version 1 from git:  git worktree add /tmp/v1 <commit>;  ... v1=/tmp/v1/checkpoints/siamese-kvasir-tiny
"""
import sys

import cv2
import numpy as np

from siamese import SamplingParams, generate, load_model
from siamese.data import find_pairs, read_image, read_mask, resize_pair, split_pairs

data, out, *specs = sys.argv[1:]
models = [(label, load_model(path.split("@")[0]), float(path.split("@")[1]) if "@" in path else 3.0)
          for label, path in (s.split("=", 1) for s in specs)]
_, held = split_pairs(find_pairs(data), 0.2, 0)
size, gap = 256, 4
rows = []
for row, pair in enumerate(held[:8]):
    image, mask = resize_pair(read_image(pair.image), read_mask(pair.mask), size)
    cells = [image, np.repeat(mask[..., None] * 255, 3, 2)]
    for _, model, guidance in models:
        params = SamplingParams(steps=20, guidance_scale=guidance, scheduler="dpm++")
        cells.append(generate(model, mask, 1, seed=row, params=params)[0].image)
    rows.append(np.concatenate([np.pad(c, ((0, gap), (0, gap), (0, 0)), constant_values=255) for c in cells], 1))
grid = np.concatenate(rows, 0)
header = np.full((28, grid.shape[1], 3), 255, np.uint8)
for i, label in enumerate(["real", "mask", *(label for label, _, _ in models)]):
    cv2.putText(header, label, (i * (size + gap) + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
cv2.imwrite(out, np.concatenate([header, grid], 0)[..., ::-1])
print(f"wrote {out}")

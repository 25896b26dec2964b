"""How much on-screen text the models imitate: the overlay A/B of issue 25 (`build --overlay auto` against `off`).

    python -m bench.overlay --models runs/ab-off runs/ab-auto [--data ../shared/data/kvasir-seg] [--masks 64]

Each model makes one image from each of the first N held-out masks of the card's split (holdout 0.2, seed 0), image
i from seed i (the same masks and noise for every model), at its "default" preset. The text zone is where the
training frames carry text (`siamese.overlay.text_zone`, at the model resolution); measured per image, the share of
the zone's pixels that are text-like strokes (`stroke_share`): the real held-out frames carry the scope's text
there, a model that imitates it draws strokes there too, one that learned the mucosa instead draws few. Printed:
each model's mean (+- standard error), the share of its images with strokes on more than `--streaked` of the zone,
the real frames' figures for reference, and each model's paired difference from the first (same masks, same
seeds). `--grid` writes the first 8 images of each model, one row per model (the real frames first), as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from siamese.data import PairDataset, find_pairs, split_pairs
from siamese.model import load_model
from siamese.overlay import stroke_share, text_zone
from siamese.presets import preset_params
from siamese.sampling import generate

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kvasir-seg"


def _summary(shares: np.ndarray, streaked: float) -> dict:
    return {"mean": round(float(shares.mean()), 4),
            "se": round(float(shares.std(ddof=1) / np.sqrt(len(shares))), 4),
            "streaked": round(float((shares > streaked).mean()), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="model folders (the first is the baseline)")
    parser.add_argument("--data", default=str(DATA), help="the data folder the models were built from")
    parser.add_argument("--masks", type=int, default=64, help="held-out masks, one image each")
    parser.add_argument("--streaked", type=float, default=0.05, help="share of the zone above which an image counts")
    parser.add_argument("--grid", default="", help="a PNG of the first 8 images of each model")
    args = parser.parse_args(argv)
    models = [load_model(m) for m in args.models]
    resolution = models[0].config.resolution
    if any(m.config.resolution != resolution for m in models):
        parser.error("the models must share a resolution (the zone is found at it)")
    train_pairs, held = split_pairs(find_pairs(args.data), 0.2, 0)
    zone = text_zone(PairDataset(args.data, resolution, pairs=train_pairs).images)
    test = PairDataset(args.data, resolution, pairs=held[:args.masks])
    report = {"zone_share_of_frame": round(float(zone.mean()), 4), "masks": len(test.masks),
              "real": _summary(stroke_share(test.images, zone), args.streaked)}
    rows, shares = [test.images[:8]], []
    for path, model in zip(args.models, models):
        params = preset_params(model, "default")
        with torch.no_grad():
            images = np.stack([generate(model, m, 1, seed=i, params=params)[0].image
                               for i, m in enumerate(test.masks)])
        shares.append(stroke_share(images, zone))
        report[path] = _summary(shares[-1], args.streaked)
        if len(shares) > 1:
            diff = shares[-1] - shares[0]
            report[path]["minus_first"] = {"mean": round(float(diff.mean()), 4),
                                           "se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)}
        rows.append(images[:8])
        print(f"{path}: {json.dumps(report[path])}", file=sys.stderr, flush=True)
    if args.grid:
        grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
        outline = cv2.findContours(zone.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        for y in range(0, grid.shape[0], resolution):  # the zone outlined on every image
            for x in range(0, grid.shape[1], resolution):
                tile = np.ascontiguousarray(grid[y:y + resolution, x:x + resolution])
                cv2.drawContours(tile, outline, -1, (255, 255, 0), 1)
                grid[y:y + resolution, x:x + resolution] = tile
        cv2.imwrite(args.grid, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

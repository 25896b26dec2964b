"""Sampling quality on held-out real pairs, for choosing the sampler's speed settings: the measures of the model
card without the downstream segmenter training.

Each candidate (a dict of `siamese.sampling.sample` settings) makes one image from each of the first N held-out
masks of the model's split (`--test-fraction 0.2`, seed 0, as the card), image i from generator seed i, so every
candidate sees the same masks and starting noise. Measured, as `siamese.evaluate` measures them:

- colour/texture KID: `image_metrics.image_statistics` of the generated images against all held-out real
  images, standardised on the training images, at the model resolution (`siamese.sweep`'s protocol);
- feature KID: the same on the encoder features of the model's fidelity scorer (its `segmenter/`, the
  evaluation's instrument trained on the training split), at the scorer's resolution;
- fidelity Dice: the scorer's segmentation of each generated image against its mask;
- the sweep's colour/texture KID (`siamese.sweep.measure_candidates`' protocol, the figure the card's sweep tables
  quote, x1e3): against the N held-out real images of the masks, standardised on the first 200 training images.

KID is on the scale `siamese.evaluate` reports and the model card quotes (unscaled); its "+-" is the standard
deviation over random subsets of 50 (the card's noise). The candidates share masks and seeds, so their differences
are less noisy than that: a paired comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from siamese.data import find_pairs, mask_to_hint, read_image, read_mask, resize_pair, split_pairs
from siamese.fidelity import FidelityScorer
from siamese.image_metrics import image_statistics, kid, standardiser
from siamese.model import SiameseModel
from siamese.sampling import sample
from siamese.segnet import segnet_features

__all__ = ["HeldOut", "load_held_out", "measure_quality", "DATA"]

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kvasir-seg"
TEST_FRACTION, SPLIT_SEED = 0.2, 0  # the model card's split


@dataclass
class HeldOut:
    """The reference sets: N held-out masks to generate from, (N, R, R) {0, 1}; the real held-out and training
    images' colour/texture statistics and scorer features, standardised on the training images."""

    masks: np.ndarray
    real_statistics: np.ndarray
    real_features: np.ndarray
    statistics_scale: tuple[np.ndarray, np.ndarray]
    features_scale: tuple[np.ndarray, np.ndarray]
    held_out: int
    train: int
    sweep_real_statistics: np.ndarray | None = None  # siamese.sweep's reference: the N real images of the masks
    sweep_scale: tuple[np.ndarray, np.ndarray] | None = None  # ... standardised on the first 200 training images


def _load(pairs, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(pairs), size, size, 3), np.uint8)
    masks = np.empty((len(pairs), size, size), np.uint8)
    for i, pair in enumerate(pairs):
        images[i], masks[i] = resize_pair(read_image(pair.image), read_mask(pair.mask), size)
    return images, masks


def _small(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])


def load_held_out(model: SiameseModel, scorer: FidelityScorer, n: int, data: str | Path = DATA) -> HeldOut:
    """The first `n` held-out masks of the card's split at the model resolution, and the reference statistics."""
    train_pairs, held_pairs = split_pairs(find_pairs(data), TEST_FRACTION, SPLIT_SEED)
    R = model.config.resolution
    train, _ = _load(train_pairs, R)
    real, masks = _load(held_pairs, R)
    S = scorer.config.resolution
    stat_scale = standardiser(image_statistics(train))
    feat_scale = standardiser(segnet_features(scorer.net, _small(train, S)))
    sweep_scale = standardiser(image_statistics(train[:200]))
    return HeldOut(masks[:n], (image_statistics(real) - stat_scale[0]) / stat_scale[1],
                   (segnet_features(scorer.net, _small(real, S)) - feat_scale[0]) / feat_scale[1],
                   stat_scale, feat_scale, len(held_pairs), len(train_pairs),
                   (image_statistics(real[:n]) - sweep_scale[0]) / sweep_scale[1], sweep_scale)


def generate_held_out(model: SiameseModel, masks: np.ndarray, settings: dict,
                      batch: int = 4) -> tuple[np.ndarray, float]:
    """One image per mask (N, R, R, 3) uint8, image i from seed i, in batches of `batch`; and the seconds taken."""
    prompt, out = model.config.prompt, []
    t0 = time.perf_counter()
    for start in range(0, len(masks), batch):
        chunk = masks[start:start + batch]
        hints = torch.stack([mask_to_hint(m) for m in chunk])
        gens = [torch.Generator("cpu").manual_seed(start + i) for i in range(len(chunk))]
        images = sample(model, hints, [prompt] * len(chunk), gens, **settings)
        out.append((images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out), time.perf_counter() - t0


def _sweep_kid(images: np.ndarray, held: HeldOut) -> dict:
    """`siamese.sweep`'s colour/texture KID x1e3 (mean, std) of the images, as its rows hold it."""
    if held.sweep_real_statistics is None:
        return {}
    mu, sd = held.sweep_scale
    value, std = kid((image_statistics(images) - mu) / sd, held.sweep_real_statistics, subsets=100,
                     subset_size=min(50, len(images)), seed=0)
    return {"kid_sweep": round(value * 1e3, 3), "kid_sweep_std": round(std * 1e3, 3)}


def measure_quality(model: SiameseModel, scorer: FidelityScorer, held: HeldOut, candidates: dict[str, dict],
                    log: Callable[[str], None] = lambda s: None) -> dict[str, dict]:
    """name -> colour/texture and feature KID (mean, std over subsets), fidelity Dice and the seconds per image
    the generation took (timed alone: a rough figure; the speed sections time interleaved)."""
    out = {}
    S = scorer.config.resolution
    for name, settings in candidates.items():
        images, seconds = generate_held_out(model, held.masks, settings)
        stats = (image_statistics(images) - held.statistics_scale[0]) / held.statistics_scale[1]
        feats = (segnet_features(scorer.net, _small(images, S)) - held.features_scale[0]) / held.features_scale[1]
        k_stat = kid(stats, held.real_statistics, subsets=100, subset_size=50, seed=0)
        k_feat = kid(feats, held.real_features, subsets=100, subset_size=50, seed=0)
        out[name] = {"settings": settings, "images": len(images),
                     "kid_colour": round(k_stat[0], 3), "kid_colour_std": round(k_stat[1], 3),
                     "kid_features": round(k_feat[0], 3), "kid_features_std": round(k_feat[1], 3),
                     "fidelity_dice": round(float(scorer.score(images, held.masks).mean()), 4),
                     **_sweep_kid(images, held),
                     "seconds_per_image_alone": round(seconds / len(images), 3)}
        log(f"  {name}: colour/texture KID {out[name]['kid_colour']:.2f}, feature KID {out[name]['kid_features']:.2f}, "
            f"fidelity {out[name]['fidelity_dice']:.3f}")
    return out

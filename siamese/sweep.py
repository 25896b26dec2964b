"""A short sweep of sampling settings on held-out pairs, to choose the settings a model recommends.

Each candidate makes one image per held-out mask (the same seeds for every candidate) and is measured by the
model's fidelity scorer (Dice between its segmentation of the image and the mask) and by two KIDs against the
held-out real images, standardised on the training images as `evaluate` does: colour/texture statistics
(`siamese.image_metrics`) and the scorer network's encoder features (`evaluate`'s feature KID measures the same
features of its own segmentation network, on other seeds and one image per mask: on the skin lesion model the
card's evaluation measured 1.7 to 2.7 times the sweep's feature KID at the three settings it was run at). `choose` keeps the candidates whose fidelity reaches `FIDELITY_SHARE` of the
real ceiling (the scorer's Dice on the real held-out pairs; else those within 0.02 of the best fidelity) and takes
the one nearest the realism targets (`KID_TARGETS`). Faithful is judged on the lower end of the measure: the mean
fidelity less its standard error over the masks must reach the share, because the card's evaluation measures with
another segmentation network and other seeds (on the skin lesion model a setting at exactly 0.95 of the ceiling on
24 masks, one image each, came out 0.937 in its evaluation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .card import FIDELITY_TARGET, KID_TARGETS
from .data import mask_to_hint
from .fidelity import FidelityScorer
from .image_metrics import image_statistics, kid, standardiser
from .model import SiameseModel
from .sampling import sample

logger = logging.getLogger(__name__)

__all__ = ["Candidate", "measure_candidates", "kid_references", "choose", "choose_speed", "target_distance",
           "FIDELITY_SHARE"]

FIDELITY_SHARE = FIDELITY_TARGET  # a candidate is faithful when its fidelity Dice reaches this share of the ceiling


@dataclass(frozen=True)
class Candidate:
    """Sampling settings tried by the sweep."""

    control_scale: float
    control_end: float = 1.0
    guidance_scale: float = 9.0
    autoguidance: float = 1.0


def measure_candidates(
    model: SiameseModel, scorer: FidelityScorer, masks: np.ndarray, real: np.ndarray, train: np.ndarray,
    candidates: Sequence[Candidate], steps: int = 16, scheduler: str = "dpm++", seed: int = 0, batch_size: int = 8,
    callback: Callable[[int, int], None] | None = None, cache_interval: int = 1, precision: str = "float32",
    images_per_mask: int = 1, references: dict | None = None,
) -> list[dict]:
    """One row per candidate: its settings with `steps` and `scheduler`, `fidelity` (mean scorer Dice) and
    `fidelity_se` (its standard error over the masks), `kid` and `kid_std` (colour/texture), `feature_kid` and
    `feature_kid_std` (the scorer's features), as `evaluate` prints them. Every candidate makes `images_per_mask`
    images of each mask (seed + image index: the same seeds for every candidate) with `steps`, `scheduler` and the
    speed settings `cache_interval` and `precision` (`sample`'s).

    masks: (N, R, R) {0, 1} at the model resolution; real: (N, R, R, 3) uint8 held-out images; train: (M, R, R, 3)
    uint8 training images (the standardiser). `callback(done, total)` counts images. `references`: what
    `kid_references(scorer, real, train)` returns, for a caller that measures candidates one call at a time.
    """
    measures = _measures(scorer)
    references = references or kid_references(scorer, real, train)
    prompt = model.config.prompt
    tiled = np.concatenate([masks] * images_per_mask)  # (K N, R, R): image j draws mask j mod N with seed + j
    total, rows = len(candidates) * len(tiled), []
    for c_index, cand in enumerate(candidates):
        images = []
        for start in range(0, len(tiled), batch_size):
            chunk = tiled[start:start + batch_size]
            hints = torch.stack([mask_to_hint(m) for m in chunk])
            gens = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
            out = sample(model, hints, [prompt] * len(chunk), gens, steps, cand.guidance_scale, scheduler,
                         control_scale=cand.control_scale, control_end=cand.control_end,
                         autoguidance=cand.autoguidance, cache_interval=cache_interval, precision=precision)
            images.append((out.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
            if callback is not None:
                callback(c_index * len(tiled) + start + len(chunk), total)
        generated = np.concatenate(images)
        per_mask = scorer.score(generated, tiled).reshape(images_per_mask, len(masks)).mean(0)  # (N,)
        se = float(per_mask.std(ddof=1) / np.sqrt(len(masks))) if len(masks) > 1 else 0.0
        row = {**asdict(cand), "steps": steps, "scheduler": scheduler, "fidelity": round(float(per_mask.mean()), 4),
               "fidelity_se": round(se, 4)}
        for name, measure in measures.items():
            mu, sd, reference = references[name]
            value, std = kid((measure(generated) - mu) / sd, reference, subsets=100, subset_size=min(50, len(masks)),
                             seed=seed)
            row.update({name: round(value, 4), f"{name}_std": round(std, 4)})
        rows.append(row)
        logger.info("sweep %s: fidelity %.3f, colour/texture KID %.3f, feature KID %.3f", cand, row["fidelity"],
                    row["kid"], row["feature_kid"])
    return rows


def _measures(scorer: FidelityScorer) -> dict:
    return {"kid": image_statistics, "feature_kid": scorer.features}  # name -> (N, R, R, 3) uint8 -> (N, D)


def kid_references(scorer: FidelityScorer, real: np.ndarray, train: np.ndarray) -> dict:
    """The KIDs' references: for each measure its standardiser (mean, std) on the training images and the
    standardised real held-out images' values. real, train: (N, R, R, 3), (M, R, R, 3) uint8."""
    references = {}
    for name, measure in _measures(scorer).items():
        mu, sd = standardiser(measure(train))
        references[name] = (mu, sd, (measure(real) - mu) / sd)
    return references


def target_distance(row: dict) -> float:
    """How far a row's realism is from the targets: the larger of colour/texture KID / KID_TARGETS[0] and feature
    KID / KID_TARGETS[1] (at most 1: both met). A row without a feature KID counts its colour/texture KID alone."""
    return max(row["kid"] / KID_TARGETS[0], row.get("feature_kid", float("-inf")) / KID_TARGETS[1])


def _faithful(row: dict, ceiling: float) -> bool:
    return row["fidelity"] - row.get("fidelity_se", 0.0) >= FIDELITY_SHARE * ceiling


def choose(rows: list[dict], ceiling: float | None) -> dict:
    """The row to recommend: among the faithful rows (fidelity - fidelity_se >= FIDELITY_SHARE x ceiling, or within
    0.02 of the best fidelity when none reaches it or the ceiling is unknown), the one nearest the realism targets
    (`target_distance`). `ceiling`: the scorer's Dice on the real images of the same masks."""
    if not rows:
        raise ValueError("the sweep measured no candidate")
    best = max(r["fidelity"] for r in rows)
    faithful = [r for r in rows if ceiling is not None and _faithful(r, ceiling)]
    if not faithful:
        faithful = [r for r in rows if r["fidelity"] >= best - 0.02]
    return min(faithful, key=target_distance)


def choose_speed(rows: list[dict], ceiling: float | None, reference: dict) -> dict:
    """The row with the fewest steps among `rows` (the chosen settings with faster samplers) and `reference` (the
    chosen row itself) that holds the reference's quality: faithful as `choose` judges (or, when the reference is
    not, or the ceiling unknown, within 0.02 of its fidelity), and each KID at most the reference's plus its
    standard deviation over subsets (within its noise). Holding the targets alone is not enough: on the skin lesion
    model UniPC 4 steps measured feature KID 0.68 in the sweep (the reference 0.31 +- 0.07) and 1.15 in the card's
    evaluation, over the target 1."""
    strict = ceiling is not None and _faithful(reference, ceiling)

    def holds(row: dict) -> bool:
        faithful = _faithful(row, ceiling) if strict else row["fidelity"] >= reference["fidelity"] - 0.02
        return faithful and all(row[k] <= reference[k] + reference.get(f"{k}_std", 0.0)
                                for k in ("kid", "feature_kid") if k in reference and k in row)

    return min([r for r in rows if holds(r)] + [reference], key=lambda r: r["steps"])

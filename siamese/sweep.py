"""A short sweep of sampling settings on held-out pairs, to choose the settings a model recommends.

Each candidate makes one image per held-out mask (the same seeds for every candidate) and is measured by the
model's fidelity scorer (Dice between its segmentation of the image and the mask) and by the colour/texture KID
against the held-out real images (`siamese.image_metrics`, statistics standardised on the training images, as
`evaluate` does). `choose` keeps the candidates whose fidelity reaches `FIDELITY_SHARE` of the real ceiling (the
scorer's Dice on the real held-out pairs; else those within 0.02 of the best fidelity) and takes the most realistic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .data import mask_to_hint
from .fidelity import FidelityScorer
from .image_metrics import image_statistics, kid, standardiser
from .model import SiameseModel
from .sampling import sample

logger = logging.getLogger(__name__)

__all__ = ["Candidate", "measure_candidates", "choose", "FIDELITY_SHARE"]

FIDELITY_SHARE = 0.95  # a candidate is faithful when its fidelity Dice reaches this share of the real ceiling


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
) -> list[dict]:
    """One row per candidate: its settings, `fidelity` (mean scorer Dice), `kid` and `kid_std` (x1e3). Every
    candidate samples with `steps`, `scheduler` and the speed settings `cache_interval` and `precision` (`sample`'s).

    masks: (N, R, R) {0, 1} at the model resolution; real: (N, R, R, 3) uint8 held-out images; train: (M, R, R, 3)
    uint8 training images (the statistics' standardiser). `callback(done, total)` counts images.
    """
    mu, sd = standardiser(image_statistics(train))
    real_stats = (image_statistics(real) - mu) / sd
    prompt = model.config.prompt
    total, rows = len(candidates) * len(masks), []
    for c_index, cand in enumerate(candidates):
        images = []
        for start in range(0, len(masks), batch_size):
            chunk = masks[start:start + batch_size]
            hints = torch.stack([mask_to_hint(m) for m in chunk])
            gens = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
            out = sample(model, hints, [prompt] * len(chunk), gens, steps, cand.guidance_scale, scheduler,
                         control_scale=cand.control_scale, control_end=cand.control_end,
                         autoguidance=cand.autoguidance, cache_interval=cache_interval, precision=precision)
            images.append((out.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
            if callback is not None:
                callback(c_index * len(masks) + start + len(chunk), total)
        generated = np.concatenate(images)
        fidelity = float(scorer.score(generated, masks).mean())
        value, std = kid((image_statistics(generated) - mu) / sd, real_stats, subsets=100,
                         subset_size=min(50, len(masks)), seed=seed)
        rows.append({**asdict(cand), "fidelity": round(fidelity, 4), "kid": round(value * 1e3, 3),
                     "kid_std": round(std * 1e3, 3)})
        logger.info("sweep %s: fidelity %.3f, colour/texture KID x1e3 %.2f", cand, fidelity, value * 1e3)
    return rows


def choose(rows: list[dict], ceiling: float | None) -> dict:
    """The row to recommend: among the faithful rows (fidelity >= FIDELITY_SHARE x ceiling, or within 0.02 of the
    best fidelity when none reaches it or the ceiling is unknown), the lowest colour/texture KID."""
    if not rows:
        raise ValueError("the sweep measured no candidate")
    best = max(r["fidelity"] for r in rows)
    faithful = [r for r in rows if ceiling is not None and r["fidelity"] >= FIDELITY_SHARE * ceiling]
    if not faithful:
        faithful = [r for r in rows if r["fidelity"] >= best - 0.02]
    return min(faithful, key=lambda r: r["kid"])

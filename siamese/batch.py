"""Batch synthesis: many masks, several images each, every pair scored and accepted or rejected.

`run_batch` is the loop that `python -m siamese sample` and the app's Batch tab share. It is a pure function
of its inputs: image i of mask m (position m in `masks`) has seed `seed + m * num_images + i` (wrapping past
2**32 - 1), whatever else runs, so a batch that is stopped and resumed (`skip`), or split into several `masks`
lists (one per process) whose positions are kept (`offset`), makes the same pairs, pixel for pixel, as one
uninterrupted run. Images of one mask are sampled in groups of `batch_size` on a fixed grid (images 0..b-1,
b..2b-1, ...), and a group is always sampled whole: a resumed run samples a half-done group again and keeps the
images it lacks, since a batch of another size rounds differently (a few pixels off by one).

`finished_pairs` reads an output folder (accepted pairs in it, rejected ones in its `rejected/`) and names the
pairs a run with these settings would make again: the CLI's resume.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import augment_mask
from .fidelity import FidelityScorer
from .model import SiameseModel
from .params import MAX_SEED, Generated, SamplingParams, validate_request
from .sampling import generate

logger = logging.getLogger(__name__)

__all__ = ["ScoredPair", "run_batch", "pair_seed", "validate_min_fidelity", "finished_pairs", "REJECTED_FOLDER"]

REJECTED_FOLDER = "rejected"
# the settings a finished pair must have been made with to count as done (`finished_pairs`)
_SAME = ("seed", "steps", "guidance_scale", "scheduler", "eta", "control_scale", "control_end", "autoguidance",
         "cache_interval", "precision", "prompt", "resolution")
_BEFORE = {"autoguidance": 1.0, "cache_interval": 1, "precision": "float32"}  # settings that pairs made before them lack, with the value they were made with


@dataclass
class ScoredPair:
    """One generated pair of a batch: its file stem, the pair, its fidelity and whether it was accepted."""

    name: str  # f"{mask_stem}_{i:02d}", the file stem used by write_pairs
    item: Generated
    fidelity: float | None  # None when there is no scorer
    accepted: bool  # fidelity >= min_fidelity (always True without a threshold)


def pair_seed(seed: int, mask_index: int, num_images: int, i: int) -> int:
    """The seed of image i of mask `mask_index`: seed + mask_index * num_images + i, wrapped to [0, 2**32 - 1]."""
    return (seed + mask_index * num_images + i) % (MAX_SEED + 1)


def validate_min_fidelity(min_fidelity: float | None, scorer: FidelityScorer | None = None,
                          check_scorer: bool = True) -> None:
    """A threshold is a fidelity (Dice) in [0, 1], and needs a scorer."""
    if min_fidelity is None:
        return
    if isinstance(min_fidelity, bool) or not isinstance(min_fidelity, (int, float)) or not 0 <= min_fidelity <= 1:
        raise ValueError(f"minimum fidelity must be a Dice score between 0 and 1, got {min_fidelity!r}")
    if check_scorer and scorer is None:
        raise ValueError("a minimum fidelity needs the model's fidelity scorer (segmenter/ in the model folder), and "
                         "this model has none: add one with `python -m siamese train-scorer --model MODEL --data DATA`")


def _groups(todo: list[int], batch_size: int) -> list[list[int]]:
    """Image indices to make, grouped as on the fixed grid of `batch_size` (images 0..b-1, b..2b-1, ...)."""
    groups: list[list[int]] = []
    for i in todo:
        if groups and groups[-1][0] // batch_size == i // batch_size:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def run_batch(
    model: SiameseModel,
    masks: Sequence[tuple[str, np.ndarray]],
    num_images: int,
    seed: int,
    params: SamplingParams,
    *,
    augment: bool = False,
    scorer: FidelityScorer | None = None,
    min_fidelity: float | None = None,
    skip: Collection[str] = (),
    stop: threading.Event | None = None,
    batch_size: int = 4,
    sources: Sequence[str] | None = None,
    offset: int = 0,
) -> Iterator[ScoredPair]:
    """Generate `num_images` pairs from each mask and score them; yields each pair as soon as it is scored.

    masks: (file stem, mask (H, W) uint8 {0, 255} / {0, 1} / bool) in order; mask m's images have seeds
    `pair_seed(seed, offset + m, num_images, i)` (`offset`: the position of masks[0] in a larger batch that was
    split). With `augment`, image i is made from its own augmentation of the mask (flips, scaling,
    shift-scale-rotate, drawn from `seed + i`) and records `augmented_mask`. Names in `skip` are not made
    (resume). With a `scorer`, each pair gets its fidelity (Dice between the scorer's segmentation of the image
    and the mask it was made from), recorded in its params as "fidelity"; with `min_fidelity` too, pairs below
    it are yielded with accepted=False. `stop` set: the current group of images is finished, then it returns.
    `sources` (one per mask, e.g. the file path) are recorded as "source_mask" (default: the stem).
    Settings are checked before the first image; a bad mask (empty, full) raises when its turn comes.
    """
    params.validate()
    validate_request(num_images, seed, batch_size)
    validate_min_fidelity(min_fidelity, scorer)
    if sources is not None and len(sources) != len(masks):
        raise ValueError(f"need one source per mask: {len(masks)} masks, {len(sources)} sources")
    skip = set(skip)
    for m, (stem, mask) in enumerate(masks):
        base = pair_seed(seed, offset + m, num_images, 0)
        names = [f"{stem}_{i:02d}" for i in range(num_images)]
        source = str(sources[m]) if sources is not None else str(stem)
        for group in _groups([i for i in range(num_images) if names[i] not in skip], batch_size):
            if stop is not None and stop.is_set():
                return
            if augment:  # as the CLI always did: the augmentation drawn from the unwrapped seed + i
                items = []
                for i in group:
                    aug = augment_mask(mask, np.random.default_rng(base + i))
                    item = generate(model, aug, 1, (base + i) % (MAX_SEED + 1), params, source=source)[0]
                    item.params["augmented_mask"] = True
                    items.append(item)
            else:  # the whole group of the grid, as an uninterrupted run samples it; the images to make kept
                first = group[0] // batch_size * batch_size
                whole = generate(model, mask, min(batch_size, num_images - first), (base + first) % (MAX_SEED + 1),
                                 params, batch_size=batch_size, source=source)
                items = [whole[i - first] for i in group]
            scores: list[float | None] = [None] * len(items)
            if scorer is not None:
                scores = [float(s) for s in scorer.score(np.stack([it.image for it in items]),
                                                         np.stack([it.mask for it in items]))]
            for i, item, score in zip(group, items, scores):
                if score is not None:
                    item.params["fidelity"] = score
                accepted = min_fidelity is None or (score is not None and score >= min_fidelity)
                yield ScoredPair(names[i], item, score, accepted)


# -- resume ---------------------------------------------------------------------------------------
def _records(folder: Path) -> dict[str, dict]:
    """name -> metadata record, for the pairs of `folder` whose image, mask and metadata line all exist."""
    path = folder / "metadata.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_bytes().decode("utf-8", "surrogateescape").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            continue
        name = Path(record["image"]).stem
        if (folder / "images" / f"{name}.png").is_file() and (folder / "masks" / f"{name}.png").is_file():
            out[name] = record
    return out


def finished_pairs(
    output: str | Path, model: SiameseModel, masks: Sequence[str], num_images: int, seed: int, params: SamplingParams,
    *, augment: bool = False, scored: bool = False, min_fidelity: float | None = None, offset: int = 0,
) -> set[str]:
    """The pairs of this batch (mask stems `masks`, the rest as for `run_batch`) already in `output`: image, mask
    and metadata line present, made by the same model (fingerprint) with the same settings and seed, scored when
    `scored` (the model has a scorer), and where this run would put them (accepted ones in OUTPUT, rejected ones,
    below `min_fidelity`, in OUTPUT/rejected/)."""
    output = Path(output)
    placed = {"accepted": _records(output), "rejected": _records(output / REJECTED_FOLDER)}
    expected = {"steps": params.steps, "guidance_scale": params.guidance_scale, "scheduler": params.scheduler,
                "eta": params.eta, "control_scale": params.control_scale_for(model),
                "control_end": params.control_end_for(model), "autoguidance": params.autoguidance_for(model),
                "cache_interval": params.cache_interval, "precision": params.precision,
                "prompt": model.config.prompt if params.prompt is None else params.prompt,
                "resolution": model.config.resolution}
    fingerprint = model.identity()["fingerprint"]
    done = set()
    for m, stem in enumerate(masks):
        for i in range(num_images):
            name = f"{stem}_{i:02d}"
            want = {**expected, "seed": pair_seed(seed, offset + m, num_images, i)}
            for side, records in placed.items():
                record = records.get(name)
                if record is None or any(record.get(k, _BEFORE.get(k)) != want[k] for k in _SAME):
                    continue
                if (record.get("model") or {}).get("fingerprint") != fingerprint:
                    continue
                if bool(record.get("augmented_mask", False)) != augment:
                    continue
                score = record.get("fidelity")
                if (scored or min_fidelity is not None) and not isinstance(score, (int, float)):
                    continue  # made without a score: made again, to be scored
                accepted = min_fidelity is None or score >= min_fidelity
                if accepted != (side == "accepted"):
                    continue  # where this run would not put it
                done.add(name)
    return done

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

With `frames` (`siamese.inpaint`), each mask is painted into real frames instead: image i of mask m goes into the
frame `frame_choices` draws from its seed among the frames the mask fits (same aspect, the lesion on the picture),
and curation scores the new lesion's region only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataError, augment_mask, binarize_mask, resize_pair
from .fidelity import FidelityScorer
from .inpaint import DEFAULT_MARGIN, Frame, frame_fits, lesion_region
from .model import SiameseModel
from .params import MAX_SEED, Generated, SamplingParams, validate_request
from .sampling import generate

logger = logging.getLogger(__name__)

__all__ = ["ScoredPair", "run_batch", "pair_seed", "validate_min_fidelity", "finished_pairs", "REJECTED_FOLDER",
           "frame_choices", "region_scores"]

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


def _mask_used(mask: np.ndarray, base: int, i: int, augment: bool) -> np.ndarray:
    """The mask image i of a mask is made from: the mask itself, or its augmentation (drawn from the unwrapped seed
    base + i, as `run_batch` draws it)."""
    return augment_mask(mask, np.random.default_rng(base + i)) if augment else mask


def frame_choices(frames: Sequence[Frame], masks: Sequence[tuple[str, np.ndarray]], num_images: int, seed: int,
                  resolution: int, *, augment: bool = False, offset: int = 0) -> list[list[int]]:
    """The frame of every image: [mask m][image i] -> index into `frames`. Image i of mask m takes the first frame
    of a random order drawn from its seed (`pair_seed`) that the mask (its augmentation, with `augment`) fits
    (`inpaint.frame_fits`: the same aspect within 10%, the lesion on the frame's picture); a pure function of its
    inputs, as the seeds are. A DataError names a mask that fits none of the frames."""
    if not frames:
        raise DataError("no frames to paint the masks into")
    out = []
    for m, (stem, mask) in enumerate(masks):
        base = pair_seed(seed, offset + m, num_images, 0)
        row = []
        binary = resize_pair(None, binarize_mask(mask), resolution)[1]
        for i in range(num_images):
            used = _mask_used(mask, base, i, augment)
            if augment:
                binary = resize_pair(None, binarize_mask(used), resolution)[1]
            rng = np.random.default_rng((pair_seed(seed, offset + m, num_images, i), 24))
            choice = next((int(j) for j in rng.permutation(len(frames))
                           if frame_fits(frames[j], binary, np.asarray(used).shape)), None)
            if choice is None:
                raise DataError(f"{stem}: the mask fits none of the {len(frames)} frames (it needs a frame of its "
                                "aspect, within 10%, with the lesion on the frame's picture rather than its black "
                                "border)")
            row.append(choice)
        out.append(row)
    return out


def region_scores(scorer: FidelityScorer, items: Sequence[Generated], regions: Sequence[np.ndarray]) -> list[float]:
    """Fidelity of painted pairs, on the new lesion's region only: Dice between the scorer's segmentation and the
    pair's mask, both restricted to `regions` (one (R, R) bool per item, the new lesion dilated by the margin), at
    the scorer's resolution (two empty restrictions score 1)."""
    seg = [scorer.segment(it.image[None])[0] for it in items]  # painted pairs have their frames' sizes
    r = scorer.config.resolution
    scores = []
    for s, item, region in zip(seg, items, regions):
        _, reg = resize_pair(None, region.astype(np.uint8), r)
        _, target = resize_pair(None, binarize_mask(item.mask), r)
        p, t = (s > 0) & (reg > 0), (target > 0) & (reg > 0)
        total = int(p.sum() + t.sum())
        scores.append(1.0 if total == 0 else float(2 * (p & t).sum() / total))
    return scores


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
    frames: Sequence[Frame] | None = None,
    margin: int = DEFAULT_MARGIN,
    clear_frame_lesions: bool = False,
    harmonize: bool = False,
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

    With `frames`, each image is painted into the frame `frame_choices` gives it (`generate`'s `frame`, `margin`,
    `clear_frame_lesions` and `harmonize`; its params record the frame; the pair has the frame's own size), and its
    fidelity is scored on the new lesion's region (`region_scores`).
    """
    params.validate()
    validate_request(num_images, seed, batch_size)
    validate_min_fidelity(min_fidelity, scorer)
    if sources is not None and len(sources) != len(masks):
        raise ValueError(f"need one source per mask: {len(masks)} masks, {len(sources)} sources")
    skip = set(skip)
    choices = (frame_choices(frames, masks, num_images, seed, model.config.resolution, augment=augment,
                             offset=offset) if frames is not None else None)
    paint = {} if frames is None else {"margin": margin, "clear_frame_lesions": clear_frame_lesions,
                                       "harmonize": harmonize}
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
                    if frames is not None:
                        paint["frame"] = frames[choices[m][i]]
                    item = generate(model, aug, 1, (base + i) % (MAX_SEED + 1), params, source=source, **paint)[0]
                    item.params["augmented_mask"] = True
                    items.append(item)
            else:  # the whole group of the grid, as an uninterrupted run samples it; the images to make kept
                first = group[0] // batch_size * batch_size
                count = min(batch_size, num_images - first)
                if frames is not None:
                    paint["frame"] = [frames[j] for j in choices[m][first:first + count]]
                whole = generate(model, mask, count, (base + first) % (MAX_SEED + 1),
                                 params, batch_size=batch_size, source=source, **paint)
                items = [whole[i - first] for i in group]
            scores: list[float | None] = [None] * len(items)
            if scorer is not None and frames is not None:  # the new lesion's region (the rest is the frame)
                regions = [lesion_region(resize_pair(None, binarize_mask(_mask_used(mask, base, i, augment)),
                                                     model.config.resolution)[1], margin)[0] for i in group]
                scores = list(region_scores(scorer, items, regions))
            elif scorer is not None:
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
    frames: Mapping[str, str] | None = None, margin: int = DEFAULT_MARGIN, clear_frame_lesions: bool = False,
    harmonize: bool = False,
) -> set[str]:
    """The pairs of this batch (mask stems `masks`, the rest as for `run_batch`) already in `output`: image, mask
    and metadata line present, made by the same model (fingerprint) with the same settings and seed, scored when
    `scored` (the model has a scorer), and where this run would put them (accepted ones in OUTPUT, rejected ones,
    below `min_fidelity`, in OUTPUT/rejected/). With `frames` (pair name -> the name of the frame `frame_choices`
    gives it) a pair counts when it was painted into that frame with the same margin, clear_frame_lesions and
    harmonize (a record without it was not harmonised); without, when it is a whole image (no frame)."""
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
                if frames is None and "frame" in record:
                    continue  # painted into a frame: not a whole image
                if frames is not None and (record.get("frame") != frames.get(name) or record.get("margin") != margin
                                           or record.get("clear_frame_lesions") != clear_frame_lesions
                                           or record.get("harmonize", False) != harmonize):
                    continue
                score = record.get("fidelity")
                if (scored or min_fidelity is not None) and not isinstance(score, (int, float)):
                    continue  # made without a score: made again, to be scored
                accepted = min_fidelity is None or score >= min_fidelity
                if accepted != (side == "accepted"):
                    continue  # where this run would not put it
                done.add(name)
    return done

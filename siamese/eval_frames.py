"""The evaluation's inpainted pairs (`evaluate --frames`, issue 24): new lesions painted into real frames.

Each held-out mask is painted (`sampling.generate(..., frame=)`, at the model resolution: the frames are kept at it
only) into another held-out frame, drawn from the
evaluation's seed among the frames the mask fits (`inpaint.frame_fits`); the frame's own mask is known, so the pair's
mask is the union. Measured next to whole-image synthesis from the same held-out masks, with the evaluation's
instrument (the real-trained segmentation network):

- realism: colour/texture and feature KID (`image_metrics.kid`) of whole frames against the real held-out images,
  and of square crops around the new lesion against crops around the real held-out lesions; real train images
  (frames, crops around their lesions) are the reference;
- the seam: `inpaint.edge_ratio` at the edge of the new lesion's region (its mask dilated by the margin), over the
  same on the real held-out frames around their own lesions (the same geometry, no seam);
- fidelity: Dice of the instrument's segmentation on the new lesion's region only (pixels of the frame's own lesion
  outside the new one left out), over the same Dice of the real held-out images around their own lesions;
- exactness: the largest pixel difference from the frame outside the region (0 by construction);
- downstream: real + inpainted vs real vs real + whole-image synthetic pairs, with the same masks (the whole-image
  synthetic set's train masks, augmented alike) painted into other *train* frames (held-out frames in training
  would leak the test images), the same seeds and the same real networks; differences paired by seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from torch import nn
from tqdm.auto import tqdm

from .data import DataError, Pair, read_image, read_mask, resize_pair
from .eval_report import GeneratedSets, write_grid
from .image_metrics import image_statistics, kid, standardiser
from .inpaint import Frame, edge_ratio, frame_fits, lesion_region, prepare_frame
from .model import SiameseModel
from .params import Generated, SamplingParams
from .sampling import generate, prepare_mask
from .segnet import dice_iou, mean_std, predict_masks, segnet_features

logger = logging.getLogger(__name__)

__all__ = ["InpaintedSets", "lesion_crop", "region_dice", "generate_inpainted", "evaluate_frames"]

_SEED_INPAINT = 3_000_000  # held-out inpainted images' seeds (evaluate's own offsets stay below)
_FRAME_STREAM = 24  # the frame-choice random stream (as `batch.frame_choices`')
CONTEXT = 1.5  # a lesion crop's side over the lesion's bounding box side
MAX_REFERENCE = 200  # real train frames read for the crops' reference set


@dataclass
class InpaintedSets:
    """What `generate_inpainted` makes: held-out pairs (with the held-out index of each one's mask and frame, and
    its new lesion (R, R) {0, 1} at the model resolution) and the downstream training pairs."""

    test: list[Generated] = field(default_factory=list)
    test_masks: list[int] = field(default_factory=list)
    test_frames: list[int] = field(default_factory=list)
    test_new: list[np.ndarray] = field(default_factory=list)
    synthetic: list[Generated] = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0


class _Frames:
    """The pairs' frames at the model resolution, read when first needed."""

    def __init__(self, pairs: Sequence[Pair], resolution: int) -> None:
        self.pairs, self.resolution, self.cache = list(pairs), resolution, {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Frame:
        if i not in self.cache:
            p = self.pairs[i]
            self.cache[i] = prepare_frame(read_image(p.image), self.resolution, read_mask(p.mask), p.image.name,
                                          keep_full=False)  # measured at the model resolution
        return self.cache[i]

    def pick(self, mask: np.ndarray, binary: np.ndarray, exclude: int | None, seed: int) -> int | None:
        """The first frame of a random order drawn from `seed` that is not `exclude` and that the mask fits."""
        order = np.random.default_rng((seed, _FRAME_STREAM)).permutation(len(self.pairs))
        return next((int(j) for j in order if j != exclude and frame_fits(self[int(j)], binary, mask.shape)), None)


def lesion_crop(image: np.ndarray, mask: np.ndarray, size: int, context: float = CONTEXT) -> np.ndarray:
    """The square around a lesion: image (H, W, 3) uint8, mask (H, W) {0, 1} (not empty) -> (size, size, 3) uint8,
    the lesion's bounding box widened to a square of `context` times its longer side (at least 16 pixels, at most
    the image), moved inside the image."""
    ys, xs = np.nonzero(mask)
    H, W = mask.shape
    side = int(round(min(max(context * max(np.ptp(ys) + 1, np.ptp(xs) + 1), 16), H, W)))
    y0 = int(np.clip(round((ys.min() + ys.max() + 1 - side) / 2), 0, H - side))
    x0 = int(np.clip(round((xs.min() + xs.max() + 1 - side) / 2), 0, W - side))
    crop = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC)


def region_dice(pred: np.ndarray, target: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Dice of (N, R, R) {0, 1} predictions against targets on the `scored` (N, R, R) bool pixels only."""
    return dice_iou(pred * scored, target * scored)[0]


def _paint(model: SiameseModel, mask: np.ndarray, frame: Frame, seed: int, params: SamplingParams, margin: int,
           source: str, out: InpaintedSets) -> Generated | None:
    start = time.perf_counter()
    try:
        item = generate(model, mask, 1, seed, params, source=source, frame=frame, margin=margin)[0]
    except DataError as e:  # an empty or full mask, or one that does not fit
        logger.warning("%s: not painted (%s)", source, e)
        out.skipped += 1
        item = None
    out.seconds += time.perf_counter() - start
    return item


def generate_inpainted(model: SiameseModel, params: SamplingParams, test_pairs: Sequence[Pair],
                       train_pairs: Sequence[Pair], synthetic_masks: Sequence[tuple[int, np.ndarray, int]],
                       seed: int, margin: int, progress_bar: bool = False) -> tuple[InpaintedSets, _Frames, _Frames]:
    """Held-out mask i painted into another held-out frame (seed `seed + _SEED_INPAINT + i`); and each downstream
    mask (train index of its pair, the mask as used, its seed) painted into a train frame other than its own pair's.
    Masks that fit no frame are skipped (counted)."""
    res = model.config.resolution
    held, train = _Frames(test_pairs, res), _Frames(train_pairs, res)
    out = InpaintedSets()
    with tqdm(total=len(test_pairs) + len(synthetic_masks), desc="painting into frames", disable=not progress_bar,
              leave=False) as bar:
        for i, pair in enumerate(test_pairs):
            s = seed + _SEED_INPAINT + i
            mask = read_mask(pair.mask)
            try:
                binary = prepare_mask(model, mask)
            except DataError:
                binary = None
            j = None if binary is None else held.pick(mask, binary, i, s)
            item = None if j is None else _paint(model, mask, held[j], s, params, margin, str(pair.mask), out)
            if j is None:
                out.skipped += 1
            if item is not None:
                out.test.append(item)
                out.test_masks.append(i)
                out.test_frames.append(j)
                out.test_new.append(binary)
            bar.update()
        for src, mask, s in synthetic_masks:
            try:
                binary = prepare_mask(model, mask)
            except DataError:
                binary = None
            j = None if binary is None else train.pick(mask, binary, src, s)
            item = None if j is None else _paint(model, mask, train[j], s, params, margin, str(train_pairs[src].mask),
                                                  out)
            if j is None:
                out.skipped += 1
            if item is not None:
                out.synthetic.append(item)
            bar.update()
    logger.info("painted %d held-out and %d training pairs into frames in %.0f s", len(out.test), len(out.synthetic),
                out.seconds)
    return out, held, train


def _kid_table(sets: dict[str, np.ndarray], reference: str, target: str, net: nn.Module, kid_kw: dict) -> dict:
    """KID of every set but `target` against `target`, on colour/texture statistics and on the instrument's features,
    standardised on `reference`."""
    result: dict = {"kid_statistics": {}, "kid_features": {}}
    for key, describe in (("kid_statistics", image_statistics), ("kid_features", lambda x: segnet_features(net, x))):
        values = {name: describe(images) for name, images in sets.items()}
        mu, sd = standardiser(values[reference])
        for name in sets:
            if name != target:
                mean, std = kid((values[name] - mu) / sd, (values[target] - mu) / sd, **kid_kw)
                result[key][name] = {"mean": mean, "std": std}
    return result


def _mean(values: Sequence[float]) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def _paired(a: dict, b: dict) -> dict:
    """Per-seed difference a - b of two arms' {"dice", "iou"} scores."""
    return {m: mean_std(np.subtract(a[m]["per_seed"], b[m]["per_seed"])) for m in ("dice", "iou")}


def evaluate_frames(model: SiameseModel, net: nn.Module, config, test_pairs: Sequence[Pair],
                    train_pairs: Sequence[Pair], generated: GeneratedSets, train_images: np.ndarray,
                    test_images: np.ndarray, whole_downstream: dict,
                    train_arm: Callable[[tuple[np.ndarray, np.ndarray]], dict], progress_bar: bool = False) -> dict:
    """The "inpainted_pairs" section of the report (the module docstring). `config` is the evaluation's `EvalConfig`
    (its sampling settings, seed, margin, resolution, KID settings and output); `generated` its whole-image sets
    (fidelity images, and the synthetic pairs' masks); train and test images (N, R, R, 3) uint8 at the segmentation
    resolution; `whole_downstream` the whole-image downstream result and `train_arm(pairs)` the same test on real +
    the given (images, masks) pairs (the evaluation's, with its real networks)."""
    t0 = time.perf_counter()
    R, margin = int(config.resolution), int(config.margin)
    sets, held, train = generate_inpainted(model, config.sampling_params(), test_pairs, train_pairs,
                                           generated.synthetic_masks, int(config.seed), margin, progress_bar)
    if not sets.test:
        raise DataError(f"{config.data}: no held-out mask could be painted into another held-out frame")
    items, regions = sets.test, [lesion_region(n, margin)[0] for n in sets.test_new]
    frames = [held[j] for j in sets.test_frames]

    def seg(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        pairs = [resize_pair(i, m.astype(np.uint8), R) for i, m in zip(images, masks)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(np.uint8)

    # 1. exactness: outside the region, the frame's own pixels
    outside = max(int(np.abs(it.image.astype(np.int16) - f.image)[~r].max(initial=0))
                  for it, f, r in zip(items, frames, regions))

    # 2. fidelity on the new lesion's region; the real ceiling around the held-out frames' own lesions
    real = [held[i] for i in range(len(held)) if held[i].mask is not None and held[i].mask.any()]
    whole = [g for g in generated.fidelity if g is not None]
    in_img, in_new = seg([it.image for it in items], sets.test_new)
    _, in_reg = seg([it.image for it in items], regions)
    _, in_own = seg([it.image for it in items], [f.mask for f in frames])
    in_scored = in_reg.astype(bool) & ~(in_own.astype(bool) & ~in_new.astype(bool))
    real_img, real_mask = seg([f.image for f in real], [f.mask for f in real])
    _, real_reg = seg([f.image for f in real], [lesion_region(f.mask, margin)[0] for f in real])
    wh_img, wh_mask = seg([g.image for g in whole], [g.mask > 127 for g in whole])
    _, wh_reg = seg([g.image for g in whole], [lesion_region(g.mask > 127, margin)[0] for g in whole])
    dice = {"real": region_dice(predict_masks(net, real_img), real_mask, real_reg.astype(bool)),
            "whole_image": region_dice(predict_masks(net, wh_img), wh_mask, wh_reg.astype(bool)),
            "inpainted": region_dice(predict_masks(net, in_img), in_new, in_scored)}
    ceiling = float(dice["real"].mean())
    fidelity = {k: {"dice": float(v.mean()), "n": len(v), "of_ceiling": float(v.mean()) / max(ceiling, 1e-9)}
                for k, v in dice.items()}

    # 3. the seam: edge over inside gradient at each region's edge
    seam_values = {"real": [edge_ratio(f.image, lesion_region(f.mask, margin)[0]) for f in real],
                   "whole_image": [edge_ratio(g.image, lesion_region(g.mask > 127, margin)[0]) for g in whole],
                   "inpainted": [edge_ratio(it.image, r) for it, r in zip(items, regions)]}
    seam = {k: {"edge_ratio": _mean(v), "n": int(np.isfinite(v).sum())} for k, v in seam_values.items()}
    for k in seam:
        seam[k]["of_real"] = seam[k]["edge_ratio"] / seam["real"]["edge_ratio"]

    # 4. realism: whole frames, and crops around the lesions
    kid_kw = dict(subsets=int(config.kid_subsets), subset_size=int(config.kid_subset_size), seed=int(config.seed))
    whole_frames = _kid_table({"real_train": train_images, "whole_image": wh_img, "inpainted": in_img,
                               "real_test": test_images}, "real_train", "real_test", net, kid_kw)
    reference = [train[i] for i in range(min(len(train), MAX_REFERENCE))]
    reference = [f for f in reference if f.mask is not None and f.mask.any()]
    crops = {"real_train": np.stack([lesion_crop(f.image, f.mask, R) for f in reference]),
             "whole_image": np.stack([lesion_crop(g.image, g.mask > 127, R) for g in whole]),
             "inpainted": np.stack([lesion_crop(it.image, n, R) for it, n in zip(items, sets.test_new)]),
             "real_test": np.stack([lesion_crop(f.image, f.mask, R) for f in real])}
    lesion_crops = _kid_table(crops, "real_train", "real_test", net, kid_kw)
    t_measure = time.perf_counter()

    # 5. downstream: real + inpainted, with the real networks of the whole-image test
    syn = [resize_pair(it.image, (it.mask > 127).astype(np.uint8), R) for it in sets.synthetic]
    arm = train_arm((np.stack([s[0] for s in syn]), np.stack([s[1] for s in syn])))
    downstream = {"real": whole_downstream["real"], "real+whole_image": whole_downstream["real+synthetic"],
                  "real+inpainted": arm["real+synthetic"], "difference_whole_image": whole_downstream["difference"],
                  "difference_inpainted": arm["difference"],
                  "inpainted_minus_whole_image": _paired(arm["real+synthetic"], whole_downstream["real+synthetic"]),
                  "num_real": len(train_pairs), "num_whole_image": len(generated.synthetic),
                  "num_inpainted": len(sets.synthetic), "seeds": int(config.seeds)}
    notes = ["whole frames: each inpainted frame is a held-out image with a new lesion, so its whole-frame KID "
             "against the held-out images is low by construction; the crops around the lesion are the harder test",
             "downstream: the whole-image synthetic set's masks painted into train frames (not their own pair's); "
             "held-out frames stay out of training"]
    if len(sets.synthetic) != len(generated.synthetic):
        notes.append(f"unequal downstream sets: {len(sets.synthetic)} inpainted vs {len(generated.synthetic)} "
                     "whole-image pairs (masks that fit no frame were skipped)")
    if config.output is not None:
        rows = [[f.image, f.mask * 255, n * 255, it.image, it.mask] for f, n, it in
                zip(frames[:8], sets.test_new[:8], items[:8])]
        write_grid(Path(config.output) / "frames.png", rows, model.config.resolution)
    return {
        "pairs": len(items), "skipped": sets.skipped, "margin": margin, "resolution": model.config.resolution,
        "frames": [held.pairs[j].image.stem for j in sets.test_frames],
        "masks": [held.pairs[i].mask.stem for i in sets.test_masks],
        "whole_frames": whole_frames, "lesion_crops": {**lesion_crops, "context": CONTEXT,
                                                       "reference_crops": len(reference)},
        "seam": seam, "fidelity": fidelity, "outside_max_difference": outside, "downstream": downstream,
        "generation_seconds": round(sets.seconds, 2),
        "seconds_per_image": round(sets.seconds / max(1, len(items) + len(sets.synthetic)), 3),
        "timings": {"generation": round(sets.seconds, 2),
                    "metrics": round(t_measure - t0 - sets.seconds, 2),
                    "segmentation_training": round(time.perf_counter() - t_measure, 2)},
        "notes": notes,
    }

"""Evaluation: score a model on held-out real pairs, offline, on the CPU.

The measuring instrument is a small segmentation network (a MONAI UNet) trained on the real train split:
1. mask fidelity: it segments images generated from held-out masks; Dice and IoU against those masks, next
   to its Dice and IoU on the real held-out images (the ceiling) and on flat paintings of the same masks
   (a control: a painting follows the mask perfectly and looks nothing like an endoscopy frame);
2. downstream benefit: segmentation networks trained on real pairs alone vs real + synthetic pairs, tested
   on the held-out real pairs, over several seeds (mDice, mIoU, mean +- std);
3. realism: KID (unbiased MMD^2, cubic polynomial kernel, random subsets) between generated and real
   held-out images, on the network's encoder features and on colour/texture statistics; real train vs
   real held-out images is the reference, flat paintings the control;
4. diversity: mean pairwise pixel L1, 1 - SSIM and feature distance between images from the same mask,
   next to the same distances between different real images;
5. mask use, by the generator alone: its noise-prediction error on the held-out pairs with their own
   mask vs another pair's mask (0% gain: the mask is ignored);
6. pixels, at the model resolution: the block-edge ratio (`quality.block_edge_ratio`) of the generated
   images, of the real held-out images (the reference, about 1) and of the codec's reconstructions of
   them, and the codec's reconstruction PSNR;
8. with `frames`, inpainted pairs: held-out masks painted into other held-out frames (`eval_frames`).

This module holds the settings, the generation and the orchestration; the segmentation network is in
`segnet`, the image statistics in `image_metrics`, the report output in `eval_report` (all re-exported here).

    report = evaluate(EvalConfig(data="../shared/data/kvasir-seg"))
    print(format_report(report))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import UNet
from torch import nn
from tqdm.auto import tqdm

from .data import DataError, Pair, augment_mask, find_pairs, read_image, read_mask, resize_pair, split_pairs
from .card import record_evaluation
from .curation import evaluation_scorer, measure_curation, validate_curation
from .eval_frames import evaluate_frames
from .eval_report import GeneratedSets, format_report, write_output
from .files import default_model
from .image_metrics import (STATISTICS, flat_paintings, image_statistics, kid, memorisation, pairwise_distances,
                            standardiser)
from .inpaint import DEFAULT_MARGIN, check_margin
from .mask_use import mask_use
from .model import SiameseModel, load_model
from .quality import block_edge_ratio, psnr, reconstruct
from .params import MAX_SEED, Generated, SamplingParams
from .sampling import generate
from .stopping import check_stop
from .segnet import build_segnet, dice_iou, mean_std, predict_masks, segnet_features, train_segnet
from .train_config import same_split, trained_on, training_record

logger = logging.getLogger(__name__)

__all__ = [
    "EvalConfig", "evaluate", "format_report", "generator_data_note", "split_pairs", "build_segnet", "train_segnet", "predict_masks",
    "dice_iou", "segnet_features", "image_statistics", "kid", "flat_paintings", "pairwise_distances",
    "STATISTICS", "mask_use", "codec_reconstructions", "pixel_quality",
]

# Seed offsets, so that the images of each part never share a seed.
_SEED_TEST, _SEED_SYNTHETIC, _SEED_AUGMENT = 0, 1_000_000, 2_000_000


@dataclass
class EvalConfig:
    """Settings of one evaluation; recorded in the report."""

    data: str | Path
    model: str | Path | None = None  # None: the bundled default model
    test_fraction: float = 0.2  # share of the pairs held out (split by `seed`)
    seeds: int = 2  # segmentation training seeds for the downstream test
    seg_steps: int = 600  # training steps of each segmentation network
    steps: int = 20  # sampling steps
    guidance_scale: float = 9.0  # the app's default (studio DEFAULTS), METHOD.md's
    scheduler: str = "dpm++"
    control_scale: float | None = None  # None: the model's recommended value
    control_end: float | None = None  # None: the model's recommended value
    autoguidance: float | None = None  # None: the model's recommended value
    cache_interval: int = 1  # the sampler's feature reuse (1: off), as `sample`'s
    precision: str = "float32"  # the networks' precision while sampling, as `sample`'s
    resolution: int = 128  # segmentation network input size
    output: str | Path | None = None  # write report.json and sample grids here
    seed: int = 0
    max_test: int = 60  # held-out pairs evaluated (0: all); the rest of the held-out split stays unused
    max_synthetic: int = 200  # cap on the synthetic training pairs (generation cost); 0: as many as real
    seg_batch_size: int = 16
    seg_lr: float = 2e-3
    seg_channels: tuple[int, ...] = (8, 16, 32, 64, 128)  # 4 poolings: polyps fill much of the frame
    diversity_masks: int = 4  # held-out masks with several images each
    diversity_images: int = 4
    kid_subsets: int = 100
    kid_subset_size: int = 50
    device: str = "cpu"
    curation: bool = False  # section 7 (`curation`): unfiltered vs filtered synthetic pairs of the same number
    curation_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8)  # acceptance rates at each
    curation_compare: tuple[float, ...] | None = None  # thresholds compared downstream (None: all)
    save_scorer: bool = True  # a model without a fidelity scorer gets the instrument, when trained on its split
    frames: bool = False  # section 8 (`eval_frames`): held-out masks painted into other held-out frames
    margin: int = DEFAULT_MARGIN  # the inpainted region's margin, pixels at the model resolution

    def validate(self) -> None:
        validate_curation(self.curation_thresholds, self.curation_compare)
        if not isinstance(self.frames, bool):
            raise ValueError(f"frames must be True or False, got {self.frames!r}")
        check_margin(self.margin)
        if not 0.0 < float(self.test_fraction) < 1.0:
            raise ValueError(f"test fraction must be between 0 and 1 (exclusive), got {self.test_fraction}")
        for name, low in (("seeds", 1), ("seg_steps", 1), ("max_test", 0), ("max_synthetic", 0),
                          ("seg_batch_size", 1), ("diversity_masks", 0), ("diversity_images", 2),
                          ("kid_subsets", 1), ("kid_subset_size", 2)):
            value = getattr(self, name)
            if int(value) != value or value < low:
                raise ValueError(f"{name.replace('_', ' ')} must be an integer >= {low}, got {value}")
        if int(self.seed) != self.seed or not 0 <= self.seed <= MAX_SEED // 2:
            raise ValueError(f"seed must be an integer between 0 and {MAX_SEED // 2}, got {self.seed}")
        levels = len(self.seg_channels) - 1
        if levels < 1:
            raise ValueError(f"the segmentation network needs at least 2 channel widths, got {self.seg_channels}")
        if self.resolution % 2**levels or not 32 <= self.resolution <= 1024:
            raise ValueError(f"resolution must be between 32 and 1024 and a multiple of {2**levels}, "
                             f"got {self.resolution}")
        self.sampling_params().validate()

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(steps=self.steps, guidance_scale=self.guidance_scale, scheduler=self.scheduler,
                              control_scale=self.control_scale, control_end=self.control_end,
                              autoguidance=self.autoguidance, cache_interval=self.cache_interval,
                              precision=self.precision)


# -- data ------------------------------------------------------------------------------------------
def _load_pairs(pairs: Sequence[Pair], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs -> images (N, R, R, 3) uint8, masks (N, R, R) uint8 in {0, 1}."""
    images = np.empty((len(pairs), size, size, 3), np.uint8)
    masks = np.empty((len(pairs), size, size), np.uint8)
    for i, pair in enumerate(pairs):
        images[i], masks[i] = resize_pair(read_image(pair.image), read_mask(pair.mask), size)
    return images, masks


def _to_seg(item: Generated, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A generated pair -> image (R, R, 3) uint8, mask (R, R) {0, 1} at the segmentation resolution."""
    image, mask = resize_pair(item.image, (item.mask > 127).astype(np.uint8), size)
    return image, mask


# -- pixels ---------------------------------------------------------------------------------------
PIXEL_BLOCK = 8  # the codec's 8x8 patch grid, at the model resolution


@torch.no_grad()
def codec_reconstructions(model: SiameseModel, images: np.ndarray, seed: int = 0, batch_size: int = 16) -> np.ndarray:
    """Images (N, R, R, 3) uint8 at the model resolution -> the model codec's reconstructions (`quality.reconstruct`)."""
    return reconstruct(model.codec, images, model.device, model.dtype, seed, batch_size)


def pixel_quality(model: SiameseModel, real: np.ndarray, generated: np.ndarray, seed: int = 0,
                  batch_size: int = 16) -> dict:
    """Block-edge ratio of generated and real images (N, R, R, 3) uint8 at the model resolution, and of the
    codec's reconstructions of the real ones; the codec's reconstruction PSNR in dB."""
    reconstructed = codec_reconstructions(model, real, seed, batch_size)
    ratio = {name: block_edge_ratio(images, PIXEL_BLOCK)
             for name, images in (("generated", generated), ("real", real), ("reconstructed", reconstructed))}
    return {"block_edge_ratio": ratio, "codec_psnr_db": psnr(real, reconstructed), "block": PIXEL_BLOCK,
            "resolution": int(real.shape[1]), "real_images": len(real), "generated_images": len(generated)}


# -- the evaluation ------------------------------------------------------------------------------
def generator_data_note(trained: dict | None, config: EvalConfig) -> str | None:
    """What the generator's training record says about the pairs evaluated here (None: other data)."""
    if trained is None:
        return ("the generator's training data is not recorded in the model folder: if it saw these held-out "
                "pairs, fidelity, realism and diversity are measured on masks it was trained on")
    if not trained_on(trained, config.data):
        return None
    if same_split(trained, config.data, config.test_fraction, config.seed):
        return (f"the generator was trained with this same split held out (holdout {config.test_fraction}, "
                f"seed {config.seed}): every pair evaluated here is unseen by it")
    return ("the generator was trained on this data folder, held-out pairs included: fidelity, realism and "
            "diversity use masks it has seen; the downstream test is held out for the segmentation networks only")


def _generate_all(
    model: SiameseModel, config: EvalConfig, test_pairs: list[Pair], train_pairs: list[Pair], progress_bar: bool,
    stop: threading.Event | None = None,
) -> GeneratedSets:
    """One image per held-out mask (`diversity_images` for the first `diversity_masks`, the first of which
    is the fidelity image), then the synthetic training set: min(#train, max_synthetic) pairs from random
    train masks, every other one augmented. Masks that cannot be generated from (empty or full) are skipped."""
    params = config.sampling_params()
    n_syn = len(train_pairs) if config.max_synthetic == 0 else min(len(train_pairs), config.max_synthetic)
    n_div = min(config.diversity_masks, len(test_pairs))
    sources = np.random.default_rng(config.seed).choice(len(train_pairs), n_syn, replace=False)
    out = GeneratedSets([], [], [])
    bar = tqdm(total=len(test_pairs) + n_div * (config.diversity_images - 1) + n_syn, desc="generating",
               disable=not progress_bar, leave=False)

    def run(mask: np.ndarray, num_images: int, seed: int, source: str) -> list[Generated]:
        check_stop(stop, "stopped while generating the evaluation's images")
        start = time.perf_counter()
        try:
            items = generate(model, mask, num_images, seed, params, source=source)
        except DataError as e:  # an empty or all-foreground mask
            logger.warning("%s: skipped (%s)", source, e)
            out.skipped += 1
            items = []
        out.seconds += time.perf_counter() - start
        out.images += len(items)
        bar.update(num_images)
        return items

    with bar:
        for i, pair in enumerate(test_pairs):
            k = config.diversity_images if i < n_div else 1
            items = run(read_mask(pair.mask), k, config.seed + _SEED_TEST + i * config.diversity_images, str(pair.mask))
            out.fidelity.append(items[0] if items else None)
            if i < n_div and items:
                out.diversity.append(items)
        for j, src in enumerate(sources):
            mask = read_mask(train_pairs[src].mask)
            augmented = j % 2 == 1
            if augmented:
                mask = augment_mask(mask, np.random.default_rng(config.seed + _SEED_AUGMENT + j))
            for item in run(mask, 1, config.seed + _SEED_SYNTHETIC + j, str(train_pairs[src].mask)):
                item.params["augmented_mask"] = augmented
                out.synthetic.append(item)
                out.synthetic_masks.append((int(src), mask, item.seed))
    logger.info("generated %d images in %.0f s", out.images, out.seconds)
    return out


def _fidelity(net: nn.Module, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Mean Dice and IoU of the network's predictions on each named (images, masks) set."""
    result = {}
    for name, (images, masks) in sets.items():
        dice, iou = dice_iou(predict_masks(net, images), masks)
        result[name] = {"dice": float(dice.mean()), "iou": float(iou.mean()), "n": len(dice)}
    return result


def _realism(features: dict[str, np.ndarray], statistics: dict[str, np.ndarray], config: EvalConfig) -> dict:
    """KID of every set but "test" against "test", on features and statistics standardised on "train";
    and the mean statistics of every set."""
    kid_kw = dict(subsets=config.kid_subsets, subset_size=config.kid_subset_size, seed=config.seed)
    result: dict = {"kid_features": {}, "kid_statistics": {}, "statistics": {}}
    for key, sets in (("kid_features", features), ("kid_statistics", statistics)):
        mu, sd = standardiser(sets["train"])
        for name in ("train", "generated", "flat_painting"):
            mean, std = kid((sets[name] - mu) / sd, (sets["test"] - mu) / sd, **kid_kw)
            result[key][_LABELS[name]] = {"mean": mean, "std": std}
    for name in ("test", "train", "generated", "flat_painting"):
        result["statistics"][_LABELS[name]] = dict(zip(STATISTICS, statistics[name].mean(0).round(5).tolist()))
    return result


_LABELS = {"train": "real_train", "test": "real_test", "generated": "generated", "flat_painting": "flat_painting"}


def _diversity(net: UNet, groups: list[np.ndarray], reference: np.ndarray, train_features: np.ndarray,
               config: EvalConfig) -> dict:
    """Mean pairwise distances within each group of images from one mask, and between different real
    images (the reference); features standardised on the train set."""
    mu, sd = standardiser(train_features)
    result: dict = {"masks": len(groups), "images_per_mask": config.diversity_images}
    if groups:
        rows = [pairwise_distances(g, (segnet_features(net, g) - mu) / sd) for g in groups]
        result["generated_same_mask"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    if len(reference) >= 2:
        result["real_different_images"] = pairwise_distances(reference, (segnet_features(net, reference) - mu) / sd)
        result["reference_images"] = len(reference)
    return result


def _downstream(real_nets: list[UNet], real: tuple[np.ndarray, np.ndarray], synthetic: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray], config: EvalConfig, seg_kw: dict) -> dict:
    """Segmentation networks trained on real vs real + synthetic pairs, one pair of networks per seed
    (same seed: same initial weights and batch order), tested on the held-out real pairs. `real_nets`
    holds the real networks trained so far (seed 0) and is extended."""
    mixed = (np.concatenate([real[0], synthetic[0]]), np.concatenate([real[1], synthetic[1]]))
    scores: dict[str, dict[str, list[float]]] = {arm: {"dice": [], "iou": []} for arm in ("real", "real+synthetic")}
    for s in range(config.seeds):
        if s >= len(real_nets):
            real_nets.append(train_segnet(*real, seed=config.seed + s, desc=f"segmentation: real, seed {s}", **seg_kw))
        mixed_net = train_segnet(*mixed, seed=config.seed + s, desc=f"segmentation: real+synthetic, seed {s}", **seg_kw)
        for arm, net in (("real", real_nets[s]), ("real+synthetic", mixed_net)):
            dice, iou = dice_iou(predict_masks(net, test[0]), test[1])
            scores[arm]["dice"].append(float(dice.mean()))
            scores[arm]["iou"].append(float(iou.mean()))
    result: dict = {arm: {m: mean_std(v) for m, v in arm_scores.items()} for arm, arm_scores in scores.items()}
    result["difference"] = {m: mean_std(np.subtract(scores["real+synthetic"][m], scores["real"][m]))
                            for m in ("dice", "iou")}
    return result


def _notes(config: EvalConfig, model_path: str | Path, n_train: int, n_held: int, n_test: int,
           generated: GeneratedSets) -> tuple[list[str], str | None]:
    """What a reader of the figures must know; and the generator's recorded training data."""
    notes = []
    n_syn = len(generated.synthetic)
    if n_syn < n_train:
        notes.append(f"synthetic training pairs capped at {n_syn} (max_synthetic={config.max_synthetic}) to bound "
                     f"generation time: real + synthetic is {n_train} + {n_syn}, not as many synthetic as real")
    notes.append("one synthetic set is generated once and reused for every seed, half of it from augmented "
                 "masks; both arms train for the same number of steps")
    trained = training_record(model_path)
    note = generator_data_note(trained, config)
    if note:
        notes.append(note)
    if generated.skipped:
        notes.append(f"{generated.skipped} masks were skipped (empty or all foreground at the model resolution)")
    if n_held > n_test:
        notes.append(f"{n_held - n_test} held-out pairs beyond max_test={config.max_test} are used neither for "
                     "training nor for testing")
    return notes, None if trained is None else str(trained["data"])


def evaluate(config: EvalConfig, progress_bar: bool = False, stop: threading.Event | None = None) -> dict:
    """Run the four measurements of the module docstring; returns a JSON-serialisable report.

    Raises DataError for unusable data folders and ValueError for bad settings; setting `stop` raises `Stopped`
    before the next image or segmentation step (nothing is written: a new run starts over).
    """
    t_start = time.perf_counter()
    config.validate()
    R = int(config.resolution)
    model_path = config.model if config.model is not None else default_model()
    timings: dict[str, float] = {}
    tic = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tic
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - tic
        tic = time.perf_counter()

    # 1. data: split by seed, load at the segmentation resolution
    pairs = find_pairs(config.data)
    train_pairs, held_pairs = split_pairs(pairs, config.test_fraction, config.seed)
    test_pairs = held_pairs[:config.max_test] if config.max_test else held_pairs
    train_images, train_masks = _load_pairs(train_pairs, R)
    test_images, test_masks = _load_pairs(test_pairs, R)
    logger.info("%d pairs: %d train, %d held out, %d evaluated", len(pairs), len(train_pairs), len(held_pairs),
                len(test_pairs))
    lap("load_data")

    # 2. the diffusion model
    model = load_model(model_path, device=config.device)
    lap("load_model")

    # 3. the measuring network: trained on the real train pairs (also seed 0 of the downstream "real" arm)
    seg_kw = dict(steps=config.seg_steps, batch_size=config.seg_batch_size, lr=config.seg_lr,
                  channels=config.seg_channels, progress_bar=progress_bar, device=config.device, stop=stop)
    net = train_segnet(train_images, train_masks, seed=config.seed, desc="segmentation: real, seed 0", **seg_kw)
    real_nets = [net]
    lap("segmentation_training")

    # 4. generation
    generated = _generate_all(model, config, test_pairs, train_pairs, progress_bar, stop)
    timings["generation"] = generated.seconds
    tic = time.perf_counter()
    kept = [i for i, item in enumerate(generated.fidelity) if item is not None]
    if not kept:
        raise DataError(f"{config.data}: no held-out mask can be generated from (all are empty or full)")
    gen_images, gen_masks = (np.stack(a) for a in zip(*(_to_seg(generated.fidelity[i], R) for i in kept)))
    paintings = flat_paintings(test_masks[kept], train_images, train_masks)

    # 5. mask fidelity
    fidelity = _fidelity(net, {"real": (test_images[kept], test_masks[kept]), "generated": (gen_images, gen_masks),
                               "flat_painting": (paintings, test_masks[kept])})

    # 6. realism
    sets = {"train": train_images, "test": test_images[kept], "generated": gen_images, "flat_painting": paintings}
    features = {name: segnet_features(net, images) for name, images in sets.items()}
    realism = _realism(features, {name: image_statistics(images) for name, images in sets.items()}, config)
    mu, sd = standardiser(features["train"])  # 6b. copying: nearest training image, generated vs held-out real
    copying = memorisation((features["generated"] - mu) / sd, (features["test"] - mu) / sd, (features["train"] - mu) / sd)

    # 7. diversity
    groups = [np.stack([_to_seg(item, R)[0] for item in items]) for items in generated.diversity]
    diversity = _diversity(net, groups, test_images[kept][:16], features["train"], config)
    lap("metrics")

    # 8. mask use by the generator alone, at its own resolution
    use_images, use_masks = _load_pairs(test_pairs, model.config.resolution)
    usage = mask_use(model, use_images, use_masks, model.config.prompt, seed=config.seed)
    lap("metrics")

    # 9. pixels, at the model resolution: the generated images as the model made them, before any resize
    pixels = pixel_quality(model, use_images, np.stack([generated.fidelity[i].image for i in kept]), seed=config.seed)
    lap("metrics")

    # 10. downstream benefit
    syn = [_to_seg(item, R) for item in generated.synthetic]
    syn_images = np.stack([s[0] for s in syn]) if syn else train_images[:0]
    syn_masks = np.stack([s[1] for s in syn]) if syn else train_masks[:0]
    downstream = _downstream(real_nets, (train_images, train_masks), (syn_images, syn_masks),
                             (test_images, test_masks), config, seg_kw)
    downstream.update(num_real=len(train_pairs), num_synthetic=len(syn),
                      num_synthetic_augmented=sum(bool(i.params.get("augmented_mask")) for i in generated.synthetic),
                      synthetic_cap=config.max_synthetic, seeds=config.seeds, test_pairs=len(test_pairs))
    lap("segmentation_training")
    # 10b. inpainted pairs (`eval_frames`): the same test with real + inpainted pairs and the same real networks
    inpainted = None if not config.frames else evaluate_frames(
        model, net, config, test_pairs, train_pairs, generated, train_images, test_images[kept], downstream,
        lambda syn: _downstream(real_nets, (train_images, train_masks), syn, (test_images, test_masks), config,
                                seg_kw), progress_bar)
    lap("frames")
    # 11. the fidelity scorer (the instrument becomes the model's when it has none), and curation
    scorer, scorer_note = evaluation_scorer(model_path, net, config, training_record(model_path),
                                            fidelity["real"]["dice"], len(kept))
    curation = None if not config.curation else measure_curation(
        scorer, generated.synthetic, (syn_images, syn_masks), (train_images, train_masks), (test_images, test_masks),
        downstream["real"]["dice"]["per_seed"], config.curation_thresholds, config.curation_compare, config.seeds,
        config.seed, seg_kw)
    lap("segmentation_training")
    timings["total"] = time.perf_counter() - t_start

    # 12. report
    notes, gen_data = _notes(config, model_path, len(train_pairs), len(held_pairs), len(test_pairs), generated)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    params = config.sampling_params()
    settings.update(model=str(model_path), seg_channels=list(config.seg_channels),
                    model_resolution=model.config.resolution,
                    control_scale=params.control_scale_for(model), control_end=params.control_end_for(model),
                    autoguidance=params.autoguidance_for(model))
    report = {
        "model": model.identity(),
        "data": str(config.data),
        "generator_training_data": gen_data,
        "settings": settings,
        "segmentation_network": (f"MONAI UNet, channels {tuple(config.seg_channels)}, stride 2, 1 residual unit, "
                                 f"batch norm, {R}x{R}; Adam lr {config.seg_lr} (warmup, cosine), batch "
                                 f"{config.seg_batch_size}, {config.seg_steps} steps, Dice+BCE loss, random flips"),
        "pairs": {"total": len(pairs), "train": len(train_pairs), "held_out": len(held_pairs),
                  "test": len(test_pairs), "generated_test": len(kept)},
        "fidelity": fidelity,
        "downstream": downstream,
        "realism": realism,
        "memorisation": copying,
        "diversity": diversity,
        "mask_use": usage,
        "pixels": pixels,
        "fidelity_scorer": scorer_note,
        **({"curation": curation} if curation is not None else {}),
        **({"inpainted_pairs": inpainted} if inpainted is not None else {}),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "generated_images": generated.images,
        "seconds_per_image": round(generated.seconds / max(1, generated.images), 3),
        "notes": notes,
        "held_out": [p.mask.stem for p in held_pairs],  # the first pairs["test"] are the evaluated ones
    }
    if config.output is not None:
        write_output(Path(config.output), report, test_pairs, generated, model.config.resolution)
    record_evaluation(model_path, report)  # evaluation.json + the model card, when the folder is ours to write
    return report

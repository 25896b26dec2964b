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
   mask vs another pair's mask (0% gain: the mask is ignored).

    report = evaluate(EvalConfig(data="../shared/data/kvasir-seg"))
    print(format_report(report))
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, MeanIoU, SSIMMetric
from monai.networks.layers import Norm
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from torch import nn
from tqdm.auto import tqdm

from . import default_model
from .data import (DataError, Pair, augment_mask, find_pairs, mask_to_hint, read_image, read_mask, resize_pair,
                   split_pairs)
from .export import atomic_write
from .model import SiameseModel, load_model
from .networks import controlnet_residuals, unet_decode, unet_encode
from .objective import q_sample
from .sampling import MAX_SEED, Generated, SamplingParams, generate

logger = logging.getLogger(__name__)

__all__ = [
    "EvalConfig", "evaluate", "format_report", "generator_data_note", "split_pairs", "build_segnet", "train_segnet", "predict_masks",
    "dice_iou", "segnet_features", "image_statistics", "kid", "flat_paintings", "pairwise_distances",
    "STATISTICS", "mask_use",
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
    guidance_scale: float = 3.0
    scheduler: str = "dpm++"
    control_scale: float | None = None  # None: the model's recommended value
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

    def validate(self) -> None:
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
                              control_scale=self.control_scale)


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


# -- mask use by the generator --------------------------------------------------------------------
MASK_USE_TIMESTEPS = (300, 500, 700, 900)


@torch.no_grad()
def mask_use(model: SiameseModel, images: np.ndarray, masks: np.ndarray, prompt: str, seed: int = 0,
             batch_size: int = 16, timesteps: Sequence[int] = MASK_USE_TIMESTEPS) -> dict:
    """Does the generator use the mask? Its mask branch predicts the noise of real pairs, images
    (N, R, R, 3) uint8 with masks (N, R, R) {0, 1} at the model resolution, once with each pair's own mask,
    once with the next pair's mask and once without control; mean squared error over `timesteps` (same
    noise for the three). gain_percent = 100 (other - own) / other: 0 when the mask is ignored."""
    if model.controlnet is None:
        raise ValueError("this model has no ControlNet (a base model): nothing uses a mask")
    if len(images) < 2:
        raise ValueError(f"mask use needs at least 2 pairs, got {len(images)}")
    device, dtype = model.device, model.dtype
    gen = torch.Generator("cpu").manual_seed(seed)
    c, s = model.codec.latent_channels, model.latent_size
    noises = torch.randn((len(timesteps), len(images), c, s, s), generator=gen)  # the same whatever the batching
    other = np.roll(masks, 1, axis=0)
    alphas_cumprod = model.alphas_cumprod.to(device)
    totals = {"own": 0.0, "other": 0.0, "none": 0.0}
    for start in range(0, len(images), batch_size):
        sl = slice(start, start + batch_size)
        x = torch.from_numpy(images[sl]).permute(0, 3, 1, 2).to(device, dtype) / 127.5 - 1
        x0 = model.codec.encode(x, gen)
        prompt_embeds = model.encode_prompt([prompt] * len(x0))
        embeds = {k: model.controlnet.embed_hint(torch.stack([mask_to_hint(m) for m in ms[sl]]).to(device, dtype))
                  for k, ms in (("own", masks), ("other", other))}
        for tv, noise in zip(timesteps, noises[:, sl]):
            t = torch.full((len(x0),), int(tv), device=device, dtype=torch.long)
            noise = noise.to(device, dtype)
            x_t = q_sample(x0, t, noise, alphas_cumprod)
            enc = unet_encode(model.unet, x_t, t, prompt_embeds)
            for k in totals:
                control = (controlnet_residuals(model.controlnet, x_t, t, prompt_embeds, embeds[k])
                           if k in embeds else (None, None))
                eps = unet_decode(model.unet, enc, prompt_embeds, *control)
                totals[k] += float((eps.float() - noise.float()).pow(2).sum())
    count = noises.numel()
    mse = {k: v / count for k, v in totals.items()}
    return {**{f"mse_{k}_mask" if k != "none" else "mse_no_control": v for k, v in mse.items()},
            "gain_percent": 100 * (mse["other"] - mse["own"]) / mse["other"], "timesteps": list(timesteps),
            "pairs": int(len(images))}


# -- segmentation network ----------------------------------------------------------------------------
def build_segnet(channels: Sequence[int] = (8, 16, 32, 64, 128), seed: int = 0) -> UNet:
    """A small MONAI UNet (3 -> 1 channels, stride 2 per level, one residual unit, batch norm), seeded.

    Batch norm rather than MONAI's default instance norm: instance norm removes each image's feature
    statistics, which the realism features (`segnet_features`) need.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=tuple(channels),
                    strides=(2,) * (len(channels) - 1), num_res_units=1, norm=Norm.BATCH)


def _to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, R, R, 3) -> float (B, 3, R, R) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _seg_lr(step: int, steps: int, lr: float, warmup: int = 20) -> float:
    """Linear warmup, then cosine decay to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_segnet(
    images: np.ndarray,
    masks: np.ndarray,
    steps: int,
    seed: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    progress_bar: bool = False,
    desc: str = "segmentation",
) -> UNet:
    """Train a segmentation network on (N, R, R, 3) uint8 images and (N, R, R) {0, 1} masks.

    Adam, Dice + BCE loss, random horizontal and vertical flips; batches and flips come from a generator
    seeded with `seed`, which also seeds the weights. Returns the network in eval mode.
    """
    net = build_segnet(channels, seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for step in tqdm(range(steps), desc=desc, disable=not progress_bar, leave=False):
        # 1. learning rate
        for group in opt.param_groups:
            group["lr"] = _seg_lr(step, steps, lr)
        # 2. batch with the same random flips for image and mask
        idx = torch.randint(len(x_all), (batch_size,), generator=gen)
        x, y = _to_input(x_all[idx]), y_all[idx].float()
        for dim in (2, 3):
            flip = torch.rand(batch_size, generator=gen) < 0.5
            x[flip], y[flip] = x[flip].flip(dim), y[flip].flip(dim)
        # 3. forward, backward, step
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def predict_masks(net: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, R, R, 3) uint8 -> predicted masks (N, R, R) uint8 in {0, 1} (sigmoid > 0.5)."""
    net.eval()
    out = [net(_to_input(torch.from_numpy(images[i:i + batch_size]))) > 0 for i in range(0, len(images), batch_size)]
    return torch.cat(out)[:, 0].numpy().astype(np.uint8)


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of (N, R, R) {0, 1} masks (MONAI metrics); two empty masks score 1."""
    p = torch.from_numpy(np.asarray(pred, np.float32))[:, None]
    t = torch.from_numpy(np.asarray(target, np.float32))[:, None]
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p, t)
    return dice[:, 0].numpy().astype(np.float64), iou[:, 0].numpy().astype(np.float64)


# -- realism and diversity features ---------------------------------------------------------------
def _encoder_modules(net: UNet) -> list[nn.Module]:
    """The down path of a MONAI UNet: one module per level, the bottom (bottleneck) last."""
    mods, block = [], net.model
    while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        mods.append(block[0])
        block = block[1].submodule
    mods.append(block)
    return mods


@torch.no_grad()
def segnet_features(net: UNet, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, R, R, 3) uint8 -> (N, D) float64: mean and std over positions of every encoder level's output."""
    net.eval()
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in _encoder_modules(net)]
    rows = []
    try:
        for i in range(0, len(images), batch_size):
            captured.clear()
            net(_to_input(torch.from_numpy(images[i:i + batch_size])))
            rows.append(torch.cat([torch.cat([f.mean((2, 3)), f.std((2, 3))], 1) for f in captured], 1))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(rows).double().numpy()


STATISTICS = ("red", "green", "blue", "red_std", "green_std", "blue_std", "saturation", "saturation_std",
              "brightness", "brightness_std", "edge_energy", "fine_detail", "highlights", "dark")


def image_statistics(images: np.ndarray) -> np.ndarray:
    """(N, R, R, 3) uint8 RGB -> (N, len(STATISTICS)) colour and texture statistics.

    Channel means and stds; HSV saturation and value (brightness) means and stds; edge energy (mean Sobel
    gradient magnitude of the gray image); fine detail (mean |gray - Gaussian blur, sigma 1|, mucosa
    texture and vessels); highlights (share of bright unsaturated pixels: V > 0.9, S < 0.25, specular
    reflections); dark (share of pixels with V < 0.08, the black frame of endoscopy images).
    """
    out = np.empty((len(images), len(STATISTICS)), np.float64)
    for i, img in enumerate(images):
        rgb = img.astype(np.float32) / 255.0
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
        s, v = hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
        fine = np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 1.0))
        out[i] = [*rgb.mean((0, 1)), *rgb.std((0, 1)), s.mean(), s.std(), v.mean(), v.std(),
                  np.sqrt(gx**2 + gy**2).mean(), fine.mean(), ((v > 0.9) & (s < 0.25)).mean(), (v < 0.08).mean()]
    return out


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 100, subset_size: int = 50, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al., 2018) between feature sets x (N, D) and y (M, D).

    Unbiased MMD^2 with the kernel k(a, b) = (a.b / D + 1)^3, on `subsets` random subsets of
    min(subset_size, N, M) rows of each set. Returns (mean, std) over subsets; about 0 for samples of one
    distribution (slightly negative for a set against itself, whose subsets share samples), larger the
    further apart the distributions are.
    """
    X, Y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != Y.shape[1]:
        raise ValueError(f"kid needs two (N, D) feature arrays of the same D, got {tuple(X.shape)} and "
                         f"{tuple(Y.shape)}")
    m = min(subset_size, len(X), len(Y))
    if m < 2:
        raise ValueError(f"kid needs at least 2 samples in each set, got {len(X)} and {len(Y)}")
    d = X.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        a = X[torch.from_numpy(rng.choice(len(X), m, replace=False))]
        b = Y[torch.from_numpy(rng.choice(len(Y), m, replace=False))]
        k_aa, k_bb, k_ab = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        mmd = ((k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
               + (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1)) - 2 * k_ab.mean())
        values.append(mmd.item())
    return float(np.mean(values)), float(np.std(values))


def flat_paintings(masks: np.ndarray, train_images: np.ndarray, train_masks: np.ndarray) -> np.ndarray:
    """Control images: each mask painted in the mean polyp and mean background colour of the train
    images, edges softened (Gaussian, sigma R/64). (N, R, R) {0, 1} -> (N, R, R, 3) uint8."""
    fg = train_masks.astype(bool)
    polyp = train_images[fg].mean(0) if fg.any() else np.full(3, 200.0)
    background = train_images[~fg].mean(0) if (~fg).any() else np.full(3, 100.0)
    sigma = masks.shape[-1] / 64
    out = np.empty((*masks.shape, 3), np.uint8)
    for i, mask in enumerate(masks):
        painted = np.where(mask[..., None].astype(bool), polyp, background).astype(np.float32)
        out[i] = np.clip(cv2.GaussianBlur(painted, (0, 0), sigma).round(), 0, 255).astype(np.uint8)
    return out


def pairwise_distances(images: np.ndarray, features: np.ndarray) -> dict[str, float]:
    """Mean over all pairs of K images (K, R, R, 3) uint8 with their (K, D) standardised features:
    pixel L1 (in [0, 1] units), 1 - SSIM (MONAI, window 11) and feature distance (RMS over dimensions)."""
    pairs = list(itertools.combinations(range(len(images)), 2))
    if not pairs:
        raise ValueError("pairwise distances need at least 2 images")
    a_idx, b_idx = [p[0] for p in pairs], [p[1] for p in pairs]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    l1 = (x[a_idx] - x[b_idx]).abs().mean((1, 2, 3))
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")(x[a_idx], x[b_idx]).flatten()
    f = torch.from_numpy(features)
    feat = (f[a_idx] - f[b_idx]).pow(2).mean(1).sqrt()
    return {"pixel_l1": float(l1.mean()), "one_minus_ssim": float(1 - ssim.mean()),
            "feature_distance": float(feat.mean())}


# -- the evaluation ------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "per_seed": v.tolist()}


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column; stds floored at 1% of the median std, so that a column that is
    (nearly) constant on the reference set cannot dominate a distance."""
    sd = x.std(0)
    return x.mean(0), np.maximum(sd, 0.01 * np.median(sd) + 1e-12)


def _generator_training(model_path: str | Path) -> dict | None:
    """The model's train_config.json (data folder, holdout, holdout_seed), when the model folder has one."""
    path = Path(model_path) / "train_config.json"
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "data" in record else None


def generator_data_note(trained: dict | None, config: EvalConfig) -> str | None:
    """What the generator's training record says about the pairs evaluated here (None: other data)."""
    if trained is None:
        return ("the generator's training data is not recorded in the model folder: if it saw these held-out "
                "pairs, fidelity, realism and diversity are measured on masks it was trained on")
    if not _same_folder(str(trained["data"]), config.data):
        return None
    if trained.get("holdout") == config.test_fraction and trained.get("holdout_seed") == config.seed:
        return (f"the generator was trained with this same split held out (holdout {config.test_fraction}, "
                f"seed {config.seed}): every pair evaluated here is unseen by it")
    return ("the generator was trained on this data folder, held-out pairs included: fidelity, realism and "
            "diversity use masks it has seen; the downstream test is held out for the segmentation networks only")


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


@dataclass
class _GeneratedSets:
    """What step 4 of `evaluate` generates, and what it cost."""

    fidelity: list[Generated | None]  # one per test pair, None where its mask was skipped
    diversity: list[list[Generated]]  # several images for each of the first few test masks
    synthetic: list[Generated]  # the synthetic training pairs
    seconds: float = 0.0
    images: int = 0
    skipped: int = 0


def _generate_all(
    model: SiameseModel, config: EvalConfig, test_pairs: list[Pair], train_pairs: list[Pair], progress_bar: bool
) -> _GeneratedSets:
    """One image per held-out mask (`diversity_images` for the first `diversity_masks`, the first of which
    is the fidelity image), then the synthetic training set: min(#train, max_synthetic) pairs from random
    train masks, every other one augmented. Masks that cannot be generated from (empty or full) are skipped."""
    params = config.sampling_params()
    n_syn = len(train_pairs) if config.max_synthetic == 0 else min(len(train_pairs), config.max_synthetic)
    n_div = min(config.diversity_masks, len(test_pairs))
    sources = np.random.default_rng(config.seed).choice(len(train_pairs), n_syn, replace=False)
    out = _GeneratedSets([], [], [])
    bar = tqdm(total=len(test_pairs) + n_div * (config.diversity_images - 1) + n_syn, desc="generating",
               disable=not progress_bar, leave=False)

    def run(mask: np.ndarray, num_images: int, seed: int, source: str) -> list[Generated]:
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
        mu, sd = _standardiser(sets["train"])
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
    mu, sd = _standardiser(train_features)
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
    result: dict = {arm: {m: _mean_std(v) for m, v in arm_scores.items()} for arm, arm_scores in scores.items()}
    result["difference"] = {m: _mean_std(np.subtract(scores["real+synthetic"][m], scores["real"][m]))
                            for m in ("dice", "iou")}
    return result


def _notes(config: EvalConfig, model_path: str | Path, n_train: int, n_held: int, n_test: int,
           generated: _GeneratedSets) -> tuple[list[str], str | None]:
    """What a reader of the figures must know; and the generator's recorded training data."""
    notes = []
    n_syn = len(generated.synthetic)
    if n_syn < n_train:
        notes.append(f"synthetic training pairs capped at {n_syn} (max_synthetic={config.max_synthetic}) to bound "
                     f"generation time: real + synthetic is {n_train} + {n_syn}, not as many synthetic as real")
    notes.append("one synthetic set is generated once and reused for every seed, half of it from augmented "
                 "masks; both arms train for the same number of steps")
    trained = _generator_training(model_path)
    note = generator_data_note(trained, config)
    if note:
        notes.append(note)
    if generated.skipped:
        notes.append(f"{generated.skipped} masks were skipped (empty or all foreground at the model resolution)")
    if n_held > n_test:
        notes.append(f"{n_held - n_test} held-out pairs beyond max_test={config.max_test} are used neither for "
                     "training nor for testing")
    return notes, None if trained is None else str(trained["data"])


def evaluate(config: EvalConfig, progress_bar: bool = False) -> dict:
    """Run the four measurements of the module docstring; returns a JSON-serialisable report.

    Raises DataError for unusable data folders and ValueError for bad settings.
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
                  channels=config.seg_channels, progress_bar=progress_bar)
    net = train_segnet(train_images, train_masks, seed=config.seed, desc="segmentation: real, seed 0", **seg_kw)
    real_nets = [net]
    lap("segmentation_training")

    # 4. generation
    generated = _generate_all(model, config, test_pairs, train_pairs, progress_bar)
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

    # 7. diversity
    groups = [np.stack([_to_seg(item, R)[0] for item in items]) for items in generated.diversity]
    diversity = _diversity(net, groups, test_images[kept][:16], features["train"], config)
    lap("metrics")

    # 8. mask use by the generator alone, at its own resolution
    use_images, use_masks = _load_pairs(test_pairs, model.config.resolution)
    usage = mask_use(model, use_images, use_masks, model.config.prompt, seed=config.seed)
    lap("metrics")

    # 9. downstream benefit
    syn = [_to_seg(item, R) for item in generated.synthetic]
    syn_images = np.stack([s[0] for s in syn]) if syn else train_images[:0]
    syn_masks = np.stack([s[1] for s in syn]) if syn else train_masks[:0]
    downstream = _downstream(real_nets, (train_images, train_masks), (syn_images, syn_masks),
                             (test_images, test_masks), config, seg_kw)
    downstream.update(num_real=len(train_pairs), num_synthetic=len(syn),
                      num_synthetic_augmented=sum(bool(i.params.get("augmented_mask")) for i in generated.synthetic),
                      synthetic_cap=config.max_synthetic, seeds=config.seeds, test_pairs=len(test_pairs))
    lap("segmentation_training")
    timings["total"] = time.perf_counter() - t_start

    # 10. report
    notes, gen_data = _notes(config, model_path, len(train_pairs), len(held_pairs), len(test_pairs), generated)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    settings.update(model=str(model_path), seg_channels=list(config.seg_channels),
                    model_resolution=model.config.resolution,
                    control_scale=config.sampling_params().control_scale_for(model))
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
        "diversity": diversity,
        "mask_use": usage,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "generated_images": generated.images,
        "seconds_per_image": round(generated.seconds / max(1, generated.images), 3),
        "notes": notes,
        "held_out": [p.mask.stem for p in held_pairs],  # the first pairs["test"] are the evaluated ones
    }
    if config.output is not None:
        _write_output(Path(config.output), report, test_pairs, generated, model.config.resolution)
    return report


# -- output ---------------------------------------------------------------------------------------
def _grid(rows: list[list[np.ndarray]], size: int, gap: int = 4) -> np.ndarray:
    """Rows of RGB or {0, 255} gray images -> one RGB grid image, each tile size x size."""
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (size + gap) - gap, cols * (size + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            tile = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
            if tile.ndim == 2:
                tile = np.repeat(tile[..., None], 3, axis=2)
            grid[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = tile
    return grid


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: could not encode the image")
    atomic_write(path, buf.tobytes())


def _write_output(out: Path, report: dict, test_pairs: list[Pair], generated: _GeneratedSets, size: int) -> None:
    """report.json, and sample grids: fidelity.png (mask | generated | real), diversity.png (mask | images),
    synthetic.png (masks above their images; odd columns from augmented masks)."""
    out.mkdir(parents=True, exist_ok=True)
    shown = [(pair, item) for pair, item in zip(test_pairs, generated.fidelity) if item is not None][:4]
    rows = [[item.mask, item.image, read_image(pair.image)] for pair, item in shown]
    if rows:
        _write_png(out / "fidelity.png", _grid(rows, size))
    if generated.diversity:
        rows = [[group[0].mask] + [item.image for item in group] for group in generated.diversity]
        _write_png(out / "diversity.png", _grid(rows, size))
    if generated.synthetic:
        shown = generated.synthetic[:6]
        _write_png(out / "synthetic.png", _grid([[i.mask for i in shown], [i.image for i in shown]], size))
    atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    logger.info("wrote report.json and sample grids to %s", out)


# -- text report ----------------------------------------------------------------------------------
def _pm(d: dict, digits: int = 3) -> str:
    return f"{d['mean']:.{digits}f} +- {d['std']:.{digits}f}"


def _pm_kid(d: dict) -> str:
    std = d["std"] if d["std"] > 1e-9 * max(1.0, abs(d["mean"])) else 0.0  # one subset: rounding noise only
    return f"{d['mean']:.4g} +- {std:.2g}"


def format_report(report: dict) -> str:
    """The report as a readable plain-text table."""
    s, m, p = report["settings"], report["model"], report["pairs"]
    fid, down, real, div = report["fidelity"], report["downstream"], report["realism"], report["diversity"]
    lines = [
        f"Siamese-Diffusion evaluation of {m['name'] or '(unnamed)'} [{m['fingerprint']}] ({s['model']})",
        f"data {report['data']}: {p['total']} pairs, {p['train']} train, {p['held_out']} held out, "
        f"{p['test']} evaluated (split seed {s['seed']})",
        f"sampling: {s['scheduler']}, {s['steps']} steps, guidance {s['guidance_scale']}, "
        f"control scale {s.get('control_scale', 1.0)}, {s['model_resolution']}x{s['model_resolution']}",
        f"segmentation network: {report['segmentation_network']}",
        "",
        "1. Mask fidelity: the real-trained network segments held-out images; Dice/IoU vs their masks",
        f"   {'images':<40}{'Dice':>8}{'IoU':>8}",
    ]
    for key, label in (("real", "real held-out (ceiling)"), ("generated", "generated from held-out masks"),
                       ("flat_painting", "flat painting of the masks (control)")):
        lines.append(f"   {label:<40}{fid[key]['dice']:>8.3f}{fid[key]['iou']:>8.3f}")
    lines += [
        "",
        f"2. Downstream benefit: tested on {down['test_pairs']} held-out real pairs, {down['seeds']} seed(s), "
        "mean +- std",
        f"   {'trained on':<34}{'mDice':>16}{'mIoU':>18}",
        f"   {'real (' + str(down['num_real']) + ')':<34}{_pm(down['real']['dice']):>16}{_pm(down['real']['iou']):>18}",
        f"   {'real + synthetic (' + str(down['num_real']) + ' + ' + str(down['num_synthetic']) + ')':<34}"
        f"{_pm(down['real+synthetic']['dice']):>16}{_pm(down['real+synthetic']['iou']):>18}",
        f"   {'difference (paired by seed)':<34}{_pm(down['difference']['dice']):>16}"
        f"{_pm(down['difference']['iou']):>18}",
        "",
        "3. Realism: KID against the real held-out images (lower is better; ~0 = same distribution)",
        f"   {'images':<34}{'seg-net features':>22}{'colour/texture':>22}",
    ]
    for key, label in (("real_train", "real train (reference)"), ("generated", "generated"),
                       ("flat_painting", "flat painting (control)")):
        kids = (_pm_kid(real["kid_features"][key]), _pm_kid(real["kid_statistics"][key]))
        lines.append(f"   {label:<34}{kids[0]:>22}{kids[1]:>22}")
    shown = ("brightness", "saturation", "edge_energy", "fine_detail", "highlights", "dark")
    lines += ["", f"   {'mean statistics':<22}" + "".join(f"{k:>13}" for k in shown)]
    for key, label in (("real_test", "real held-out"), ("real_train", "real train"), ("generated", "generated"),
                       ("flat_painting", "flat painting")):
        lines.append(f"   {label:<22}" + "".join(f"{real['statistics'][key][k]:>13.4f}" for k in shown))
    lines += ["", f"4. Diversity: mean pairwise distance, {div['masks']} masks x {div['images_per_mask']} images",
              f"   {'images':<34}{'pixel L1':>10}{'1-SSIM':>10}{'features':>10}"]
    for key, label in (("generated_same_mask", "generated, same mask"),
                       ("real_different_images", f"real, different images ({div.get('reference_images', 0)})")):
        if key in div:
            d = div[key]
            lines.append(f"   {label:<34}" + "".join(f"{d[k]:>10.4f}" for k in ("pixel_l1", "one_minus_ssim",
                                                                               "feature_distance")))
    use = report.get("mask_use")
    if use:
        lines += ["", f"5. Mask use: noise-prediction error of the generator on the {use['pairs']} held-out pairs, "
                      f"t in {tuple(use['timesteps'])}",
                  f"   own mask {use['mse_own_mask']:.5f}, another pair's mask {use['mse_other_mask']:.5f}, "
                  f"no control {use['mse_no_control']:.5f}: the right mask lowers it by {use['gain_percent']:.2f}%"]
    t = report["timings"]
    lines += ["", f"time: {t['total']:.0f} s in all; generation {t['generation']:.0f} s "
                  f"({report['generated_images']} images, {report['seconds_per_image']:.2f} s each), "
                  f"segmentation training {t['segmentation_training']:.0f} s"]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)

"""The fidelity scorer: a small segmentation network that travels with the model, in its `segmenter/` folder.

A generated pair's fidelity is the Dice between the scorer's segmentation of the generated image and the
mask the image was made from: near 1 when the lesion sits where the mask says, near 0 when the image shows
no lesion there. The scorer is the evaluation's instrument (`segnet`: a MONAI UNet), trained on the model's
own real training pairs, the held-out split left out (read from the model's train_config.json), so it never
sees a pair the generator was not trained on.

    scorer = load_scorer("checkpoints/siamese-kvasir-tiny")      # None when the folder has no segmenter/
    dice = scorer.score(images, masks)                            # (N, H, W, 3) uint8, (N, H, W) -> (N,)

Trained by `python -m siamese train-scorer` (`folder_ops.add_scorer`), at the end of `train`, and by `evaluate`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch
from monai.networks.nets import UNet
from safetensors.torch import save_file

from .data import binarize_mask, resize_pair
from .files import atomic_folder, is_hub_id
from .segnet import build_segnet, dice_iou, predict_masks, segnet_features, train_segnet

logger = logging.getLogger(__name__)

__all__ = ["ScorerConfig", "FidelityScorer", "load_scorer", "train_scorer", "save_scorer", "scorer_summary",
           "SCORER_FOLDER"]

SCORER_FOLDER = "segmenter"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ScorerConfig:
    """How the scorer was (or is to be) trained, and what it measured on held-out real pairs."""

    resolution: int = 128  # input size of the network (square)
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)
    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    # recorded when trained
    data: str = ""
    holdout: float = 0.2
    holdout_seed: int = 0
    train_pairs: int = 0
    held_out_pairs: int = 0
    held_out_dice: float | None = None  # mean Dice on the real held-out pairs: the ceiling of a fidelity score

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"scorer {name.replace('_', ' ')} must be a whole number 1 or more, got {value!r}")
        levels = len(self.channels) - 1
        if levels < 1 or not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ValueError(f"scorer channels must be 2 or more positive widths, got {self.channels!r}")
        if not isinstance(self.resolution, int) or self.resolution % 2**levels or not 32 <= self.resolution <= 1024:
            raise ValueError(f"scorer resolution must be between 32 and 1024 and a multiple of {2**levels}, "
                             f"got {self.resolution!r}")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or not self.lr > 0:
            raise ValueError(f"scorer learning rate must be a positive number, got {self.lr!r}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, data: dict, source: str) -> ScorerConfig:
        """From config.json's contents; `source` names the file in errors."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of settings, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}")
        try:
            config = cls(**{**data, "channels": tuple(data.get("channels", cls.channels))})
            config.validate()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None
        return config


class FidelityScorer:
    """A trained segmentation network, its config and its device; `score` gives each pair's fidelity."""

    def __init__(self, net: UNet, config: ScorerConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)

    def _small(self, images: np.ndarray) -> np.ndarray:
        R = self.config.resolution
        return np.stack([cv2.resize(im, (R, R), interpolation=cv2.INTER_AREA) for im in images])

    def segment(self, images: np.ndarray) -> np.ndarray:
        """Images (N, H, W, 3) uint8 RGB -> masks (N, R, R) uint8 {0, 1} at the scorer's resolution."""
        if not len(images):
            return np.empty((0, self.config.resolution, self.config.resolution), np.uint8)
        return predict_masks(self.net, self._small(images))

    def features(self, images: np.ndarray) -> np.ndarray:
        """Images (N, H, W, 3) uint8 RGB (N >= 1) -> (N, D) float64 encoder features at the scorer's resolution
        (`segnet.segnet_features`: what `evaluate`'s feature KID measures, on the scorer's network)."""
        return segnet_features(self.net, self._small(images))

    def score(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Images (N, H, W, 3) uint8 RGB and the masks they were made from, (N, H, W) uint8 {0, 255} (or {0, 1},
        or bool) -> (N,) float64 Dice in [0, 1] between the scorer's segmentation and each mask, at the
        scorer's resolution (two empty masks score 1)."""
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be an (N, H, W, 3) uint8 RGB array, got {images.dtype} {images.shape}")
        if masks.ndim != 3 or masks.shape != images.shape[:3]:
            raise ValueError(f"masks must be an (N, H, W) array matching the images {images.shape[:3]}, "
                             f"got {masks.shape}")
        if not len(images):
            return np.empty(0, np.float64)
        target = np.stack([resize_pair(None, binarize_mask(m), self.config.resolution)[1] for m in masks])
        dice, _ = dice_iou(self.segment(images), target)
        return np.clip(dice, 0.0, 1.0)


# -- saving and loading ---------------------------------------------------------------------------
def save_scorer(scorer: FidelityScorer, model_folder: str | Path) -> Path:
    """Write MODEL/segmenter/ (config.json + float32 model.safetensors) whole: complete or absent."""
    folder = Path(model_folder) / SCORER_FOLDER
    state = {k: v.detach().cpu().contiguous() for k, v in scorer.net.state_dict().items()}
    with atomic_folder(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(scorer.config.to_dict(), indent=2) + "\n")
    logger.info("fidelity scorer saved in %s", folder)
    return folder


def _local_folder(model_folder: str | Path) -> Path | None:
    """The model's folder on disk: the folder itself, or a hub id's cached snapshot (no download)."""
    folder = Path(model_folder).expanduser()
    if folder.is_dir():
        return folder
    if not is_hub_id(str(model_folder)):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model_folder), local_files_only=True, allow_patterns=[f"{SCORER_FOLDER}/*"]))
    except Exception:  # not cached: no scorer
        return None


def load_scorer(model_folder: str | Path, device: str | torch.device = "cpu") -> FidelityScorer | None:
    """The model folder's scorer (MODEL/segmenter/), or None when it has none. A damaged one (config.json or
    model.safetensors missing, unreadable or not matching) is a ValueError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = _local_folder(model_folder)
    folder = None if root is None else root / SCORER_FOLDER
    if folder is None or not folder.is_dir():
        return None
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    hint = "retrain it with `python -m siamese train-scorer`"
    if not config_path.is_file():
        raise ValueError(f"{config_path} is missing: the fidelity scorer is incomplete; {hint}")
    try:
        data = json.loads(config_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{config_path}: not UTF-8 text; {hint}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e}); {hint}") from None
    try:
        config = ScorerConfig.from_dict(data, str(config_path))
    except ValueError as e:
        raise ValueError(f"{e}; {hint}") from None
    if not weights_path.is_file():
        raise ValueError(f"{weights_path} is missing: the fidelity scorer is incomplete; {hint}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights_path} could not be read ({e}); {hint}") from None
    net = build_segnet(config.channels, config.seed)
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(f"{weights_path} does not fit the network of {config_path} "
                         f"({str(e).splitlines()[0]}); {hint}") from None
    return FidelityScorer(net, config, device)


# -- training -------------------------------------------------------------------------------------
def train_scorer(images: np.ndarray, masks: np.ndarray, config: ScorerConfig, progress_bar: bool = False,
                 device: str | torch.device = "cpu") -> FidelityScorer:
    """Train a scorer on real pairs: images (N, R, R, 3) uint8 and masks (N, R, R) {0, 1} at config.resolution."""
    config.validate()
    if images.shape[1:3] != (config.resolution,) * 2 or masks.shape != images.shape[:3]:
        raise ValueError(f"scorer training needs images (N, {config.resolution}, {config.resolution}, 3) and masks "
                         f"(N, {config.resolution}, {config.resolution}), got {images.shape} and {masks.shape}")
    net = train_segnet(images, masks, steps=config.steps, seed=config.seed, batch_size=config.batch_size,
                       lr=config.lr, channels=config.channels, progress_bar=progress_bar, desc="fidelity scorer",
                       device=device)
    return FidelityScorer(net, config, device)


def scorer_summary(scorer: FidelityScorer) -> str:
    """One line about a scorer, for the CLI."""
    c = scorer.config
    held = (f", Dice {c.held_out_dice:.3f} on {c.held_out_pairs} held-out real pairs"
            if c.held_out_dice is not None else "")
    return (f"MONAI UNet {tuple(c.channels)} at {c.resolution}x{c.resolution}, {c.steps} steps on {c.train_pairs} "
            f"pairs{held}")


"""Image-mask pairs: reading, matching, resizing, batching, and mask augmentation.

Two dataset layouts are read:
- a folder with `images/` and `masks/`, matched by file stem (any common image format);
- the reference layout: `prompt.json` with one JSON object per line,
  `{"source": mask path, "target": image path, "prompt": text}` (paths relative to the folder).
Masks are binarised at > 127; images and masks are resized to the model resolution (area for images,
nearest for masks).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "DataError", "Pair", "PairDataset", "find_pairs", "read_image", "read_mask", "binarize_mask",
    "resize_pair", "augment_mask", "split_pairs", "list_masks", "default_prompt", "mask_to_hint", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64_000_000  # refuse decompression bombs


class DataError(ValueError):
    """Bad input data; the message names the file or folder and what was expected."""


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    prompt: str | None = None


def _decode(path: Path, flags: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = np.fromfile(str(path), dtype=np.uint8)
    arr = cv2.imdecode(data, flags) if data.size else None
    if arr is None:
        raise DataError(f"{path}: not a readable image (expected PNG, JPEG, BMP, TIFF or WebP)")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise DataError(f"{path}: image of {arr.shape[1]}x{arr.shape[0]} pixels is too large")
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    arr = _decode(Path(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def binarize_mask(arr: np.ndarray) -> np.ndarray:
    """Any mask array ((H, W), (H, W, 3) or (H, W, 4), uint8) -> (H, W) uint8 in {0, 1}, threshold > 127.

    With an alpha channel (a drawn canvas layer), a pixel counts where it is painted (alpha > 127)
    and bright; colour images are converted to grayscale first. A uint8 array that holds only 0 and 1
    is already binary and is returned as is.
    """
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.dtype == np.uint8 and arr.max(initial=0) <= 1:
        return arr.copy()
    if arr.dtype != np.uint8:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        else:
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 4:
        gray = cv2.cvtColor(arr[..., :3], cv2.COLOR_RGB2GRAY)
        return ((gray > 127) & (arr[..., 3] > 127)).astype(np.uint8)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr[..., :3], cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2:
        raise DataError(f"a mask must be a 2-D grayscale or colour image, got an array of shape {arr.shape}")
    return (arr > 127).astype(np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file -> (H, W) uint8 in {0, 1} (grayscale > 127)."""
    return binarize_mask(_decode(Path(path), cv2.IMREAD_GRAYSCALE))


def resize_pair(image: np.ndarray | None, mask: np.ndarray, size: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Resize to size x size: area interpolation for the image, nearest for the mask."""
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    if image is not None:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image, mask


def mask_to_hint(mask: np.ndarray) -> Tensor:
    """(H, W) {0, 1} mask -> (3, H, W) float hint in {0, 1}."""
    return torch.from_numpy(mask).float().expand(3, -1, -1).contiguous()


def default_prompt(root: str | Path) -> str:
    """A sentence for datasets that bring none, guessed from the folder name."""
    name = str(root).lower()
    if any(k in name for k in ("kvasir", "polyp", "cvc", "colon", "etis", "endo")):
        return "a colonoscopy image with a polyp"
    if any(k in name for k in ("ph2", "isic", "skin", "derm", "lesion", "melanoma")):
        return "a dermoscopy image of a skin lesion"
    return "a medical image"


def _files_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def find_pairs(root: str | Path) -> list[Pair]:
    """The image-mask pairs of a dataset folder (either layout); raises DataError when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected a folder with images/ and masks/, or prompt.json)")
    if (root / "prompt.json").is_file():
        pairs = []
        for n, line in enumerate((root / "prompt.json").read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                pairs.append(Pair(root / item["target"], root / item["source"], item.get("prompt")))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{root / 'prompt.json'} line {n}: expected "
                                f'{{"source": mask, "target": image, "prompt": text}} ({e})') from None
            for key in ("source", "target"):  # a dataset names its own files only
                entry = Path(item[key])
                if entry.is_absolute() or ".." in entry.parts:
                    raise DataError(f"{root / 'prompt.json'} line {n}: the {key} '{item[key]}' must be a path inside "
                                    "the dataset folder (relative, without '..')")
        missing = [p for p in pairs if not p.image.is_file() or not p.mask.is_file()]
        if missing:
            raise DataError(f"{root / 'prompt.json'}: {len(missing)} entries name missing files, "
                            f"e.g. {missing[0].image} / {missing[0].mask}")
    else:
        for sub in ("images", "masks"):
            if not (root / sub).is_dir():
                raise DataError(f"{root}: no {sub}/ folder (expected images/ and masks/ with matching "
                                "file names, or a prompt.json)")
        images, masks = _files_by_stem(root / "images"), _files_by_stem(root / "masks")
        pairs = [Pair(images[s], masks[s]) for s in images if s in masks]
        unmatched = len(images) - len(pairs)
        if unmatched:
            logger.warning("%s: %d images have no mask of the same name and are skipped", root, unmatched)
    if not pairs:
        raise DataError(f"{root}: no image-mask pairs found (images/X.jpg needs masks/X.png)")
    return pairs


def list_masks(path: str | Path) -> list[Path]:
    """A mask file, or every image file in a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            return files
        raise DataError(f"{path}: no mask images in this folder")
    raise DataError(f"{path}: no such file or folder")


def split_pairs(pairs: list[Pair], test_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Deterministic split by `seed`: (train, held_out); held_out is in random order, train in input order.

    Training (`TrainConfig.holdout`) and evaluation use this same split, so held-out pairs stay unseen.
    """
    n = len(pairs)
    if n < 4:
        raise DataError(f"need at least 4 image-mask pairs to hold some out for testing, found {n}")
    n_held = min(n - 2, max(2, round(n * test_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    held = [pairs[i] for i in order[:n_held]]
    train = [pairs[i] for i in sorted(order[n_held:])]
    return train, held


class PairDataset(torch.utils.data.Dataset):
    """Pairs resized to `resolution` and kept in memory as uint8 (decoded once).

    Item i: dict(image (R, R, 3) uint8, mask (R, R) {0, 1} uint8, prompt str).
    """

    def __init__(self, root: str | Path, resolution: int, prompt: str | None = None,
                 pairs: list[Pair] | None = None) -> None:
        self.root = Path(root)
        self.pairs = find_pairs(self.root) if pairs is None else list(pairs)
        self.resolution = resolution
        self.prompt = prompt or default_prompt(self.root)
        self.images = np.empty((len(self.pairs), resolution, resolution, 3), np.uint8)
        self.masks = np.empty((len(self.pairs), resolution, resolution), np.uint8)
        for i, pair in enumerate(self.pairs):
            self.images[i], self.masks[i] = resize_pair(read_image(pair.image), read_mask(pair.mask), resolution)
        logger.info("loaded %d pairs from %s at %dx%d", len(self), self.root, resolution, resolution)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "prompt": self.pairs[i].prompt or self.prompt}

    def batch(
        self, indices: list[int], generator: torch.Generator, flip: bool = False, prompt_dropout: float = 0.0
    ) -> dict:
        """A training batch: image (B, 3, R, R) in [-1, 1], image_hint (B, 3, R, R) in [0, 1],
        mask_hint (B, 3, R, R) in {0, 1}, prompts (list of B str, "" with probability prompt_dropout)."""
        images = torch.from_numpy(self.images[indices]).permute(0, 3, 1, 2).float() / 255.0
        masks = torch.from_numpy(self.masks[indices]).float().unsqueeze(1)
        if flip:  # the same random flips for image and mask
            for dim in (2, 3):
                do = torch.rand(len(indices), generator=generator) < 0.5
                images[do] = images[do].flip(dim)
                masks[do] = masks[do].flip(dim)
        drop = torch.rand(len(indices), generator=generator) < prompt_dropout
        prompts = ["" if d else self[i]["prompt"] for i, d in zip(indices, drop.tolist())]
        return {"image": images * 2 - 1, "image_hint": images, "mask_hint": masks.expand(-1, 3, -1, -1),
                "prompts": prompts}


def augment_mask(mask: np.ndarray, rng: np.random.Generator, tries: int = 10) -> np.ndarray:
    """A "random" mask of the paper: flips, scaling and shift-scale-rotate of a (H, W) {0, 1} mask.

    Retries until the result keeps at least a quarter of the original area inside the frame; returns
    the input unchanged when no try does.
    """
    h, w = mask.shape
    area = int(mask.sum())
    for _ in range(tries):
        out = mask
        if rng.random() < 0.5:
            out = out[:, ::-1]
        if rng.random() < 0.5:
            out = out[::-1, :]
        angle = rng.uniform(-45, 45)
        scale = rng.uniform(0.75, 1.25)
        shift = rng.uniform(-0.15, 0.15, size=2) * (w, h)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[:, 2] += shift
        out = cv2.warpAffine(np.ascontiguousarray(out), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        if area == 0 or out.sum() >= area / 4:
            return out.astype(np.uint8)
    return mask.copy()

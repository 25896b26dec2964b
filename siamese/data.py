"""Image-mask pairs: reading, matching, resizing, batching, and mask augmentation.

Two dataset layouts are read:
- a folder with `images/` and `masks/`, matched by file stem (any common image format);
- the reference layout: `prompt.json` with one JSON object per line,
  `{"source": mask path, "target": image path, "prompt": text}` (paths relative to the folder).
Images and masks are resized to the model resolution (area for images, nearest for masks).

Masks, one rule for files and arrays (`binarize_mask`; the CLI, the app and training all use it): a pixel is
foreground where its gray level is above half the mask's full scale, which is 255 for 8-bit masks (so > 127),
65535 for 16-bit ones, 1 for floating point ones and True for booleans; an integer mask that holds only the
values 0 and 1 is a label mask (full scale 1: the 1s are foreground), whatever its bit depth. Other integer
arrays are on the 8-bit scale. A colour mask counts by its gray level; where it has an alpha channel (a drawn
canvas layer, a PNG with transparency), only pixels more than half opaque can be foreground.

Every image and mask file is checked against `MAX_PIXELS` (width x height) from its header, before anything
is decoded.

Dataset checks (`find_pairs`, `PairDataset`): two files with the same name in one folder (`a.png` and
`a.jpg`), an image and mask of different sizes, and a dataset whose masks are all empty are errors naming
the files; images without a mask (and masks without an image) are skipped with a warning, and so are empty
masks among non-empty ones (images without a lesion can be wanted).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .carried import pipeline_siamese  # the one mask rule, also carried in model folders
from .files import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "DataError", "Pair", "PairDataset", "find_pairs", "read_image", "read_mask", "binarize_mask",
    "resize_pair", "augment_mask", "split_pairs", "list_masks", "default_prompt", "mask_to_hint", "IMAGE_EXTENSIONS",
    "MAX_PIXELS", "write_examples", "EXAMPLES_FOLDER", "EXAMPLE_MASKS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64_000_000  # the largest image or mask read (width x height), checked in the header before decoding
EXAMPLES_FOLDER, EXAMPLE_MASKS = "examples", 6  # MODEL/examples/: held-out masks the app offers as a model's examples
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class DataError(ValueError):
    """Bad input data; the message names the file or folder and what was expected."""


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    prompt: str | None = None


def _header(path: Path) -> bool:
    """Check the file's header: a readable image of at most MAX_PIXELS pixels. Nothing is decoded (PIL reads
    the size lazily). Returns whether the image has an alpha channel."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    too_large = f"at most {MAX_PIXELS:,} pixels (width x height) are read"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                (w, h), alpha = im.size, im.mode in _ALPHA_MODES or "transparency" in im.info
    except Image.DecompressionBombError:
        raise DataError(f"{path}: the image is too large: {too_large}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise DataError(f"{path}: not a readable image (expected PNG, JPEG, BMP, TIFF or WebP)") from None
    if w * h > MAX_PIXELS:
        raise DataError(f"{path}: the image is {w}x{h} pixels, too large: {too_large}")
    return alpha


def _decode(path: Path, flags: int) -> np.ndarray:
    arr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), flags)
    if arr is None:
        raise DataError(f"{path}: not a readable image (expected PNG, JPEG, BMP, TIFF or WebP)")
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB."""
    path = Path(path)
    _header(path)
    return cv2.cvtColor(_decode(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def binarize_mask(arr: np.ndarray) -> np.ndarray:
    """Any mask array -> (H, W) uint8 in {0, 1}: (H, W), (H, W, 1), gray + alpha (H, W, 2), RGB (H, W, 3) or
    RGBA (H, W, 4); 8-bit, 16-bit, other integers, floating point or boolean.

    The one rule (module docstring): foreground where the gray level is above half the full scale (8-bit: > 127,
    16-bit: > 32767, floating point: > 0.5; label masks of 0 and 1: the 1s), and, with an alpha channel, where
    the pixel is more than half opaque. The rule's code is the carried pipeline's (`pipeline_siamese.binarize_mask`,
    which model folders carry for diffusers), so the package and a folder's pipeline read a mask alike.
    """
    try:
        return pipeline_siamese.binarize_mask(np.asarray(arr))
    except ValueError as e:
        raise DataError(str(e)) from None


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file -> (H, W) uint8 in {0, 1}, by `binarize_mask`'s rule: its gray levels at their own bit depth
    (8-bit, 16-bit or floating point), and its transparency when it has an alpha channel."""
    path = Path(path)
    if _header(path):  # all channels, colour order RGB(A)
        arr = _decode(path, cv2.IMREAD_UNCHANGED)
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = arr[..., [2, 1, 0, 3][:arr.shape[2]]]
    else:
        arr = _decode(path, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    return binarize_mask(arr)


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
    """The image files of a folder by file stem; two files with one stem (a.png, a.jpg) are an error."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stem in files:
                raise DataError(f"{folder}: {files[p.stem].name} and {p.name} have the same name; files are matched "
                                "by name, so keep one of them")
            files[p.stem] = p
    return files


def _prompt_json(root: Path) -> list[Pair]:
    path = root / "prompt.json"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pairs.append(Pair(root / item["target"], root / item["source"], item.get("prompt")))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path} line {n}: expected "
                            f'{{"source": mask, "target": image, "prompt": text}} ({e})') from None
        for key in ("source", "target"):  # a dataset names its own files only
            entry = Path(item[key])
            if entry.is_absolute() or ".." in entry.parts:
                raise DataError(f"{path} line {n}: the {key} '{item[key]}' must be a path inside "
                                "the dataset folder (relative, without '..')")
        if not isinstance(item.get("prompt", ""), (str, type(None))):
            raise DataError(f"{path} line {n}: the prompt must be text, got {item['prompt']!r}")
    missing = [p for p in pairs if not p.image.is_file() or not p.mask.is_file()]
    if missing:
        raise DataError(f"{path}: {len(missing)} entries name missing files, "
                        f"e.g. {missing[0].image} / {missing[0].mask}")
    return pairs


def find_pairs(root: str | Path) -> list[Pair]:
    """The image-mask pairs of a dataset folder (either layout); raises DataError when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected a folder with images/ and masks/, or prompt.json)")
    if (root / "prompt.json").is_file():
        pairs = _prompt_json(root)
    else:
        for sub in ("images", "masks"):
            if not (root / sub).is_dir():
                raise DataError(f"{root}: no {sub}/ folder (expected images/ and masks/ with matching "
                                "file names, or a prompt.json)")
        images, masks = _files_by_stem(root / "images"), _files_by_stem(root / "masks")
        pairs = [Pair(images[s], masks[s]) for s in images if s in masks]
        no_mask = [images[s].name for s in images if s not in masks]
        no_image = [masks[s].name for s in masks if s not in images]
        if no_mask:
            logger.warning("%s: %d images have no mask of the same name and are skipped, e.g. images/%s", root,
                           len(no_mask), no_mask[0])
        if no_image:
            logger.warning("%s: %d masks have no image of the same name and are skipped, e.g. masks/%s", root,
                           len(no_image), no_image[0])
    if not pairs:
        raise DataError(f"{root}: no image-mask pairs found (images/X.jpg needs masks/X.png)")
    return pairs


def list_masks(path: str | Path) -> list[Path]:
    """A mask file, or every image file in a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = list(_files_by_stem(path).values())  # outputs are named by stem: one file per stem
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

    Item i: dict(image (R, R, 3) uint8, mask (R, R) {0, 1} uint8, prompt str). `overlay`, (N, R, R) bool or None:
    the images' on-screen overlay pixels (`siamese.overlay.find_overlay`, set by training), batched with the images.
    """

    def __init__(self, root: str | Path, resolution: int, prompt: str | None = None,
                 pairs: list[Pair] | None = None) -> None:
        self.root = Path(root)
        self.pairs = find_pairs(self.root) if pairs is None else list(pairs)
        self.resolution = resolution
        self.prompt = prompt or default_prompt(self.root)
        self.images = np.empty((len(self.pairs), resolution, resolution, 3), np.uint8)
        self.masks = np.empty((len(self.pairs), resolution, resolution), np.uint8)
        self.overlay: np.ndarray | None = None
        empty = []
        for i, pair in enumerate(self.pairs):
            image, mask = read_image(pair.image), read_mask(pair.mask)
            if image.shape[:2] != mask.shape:
                raise DataError(f"{pair.image} is {image.shape[1]}x{image.shape[0]} pixels but its mask {pair.mask} "
                                f"is {mask.shape[1]}x{mask.shape[0]}: an image and its mask must have the same size")
            if not mask.any():
                empty.append(pair.mask)
            self.images[i], self.masks[i] = resize_pair(image, mask, resolution)
        if len(empty) == len(self.pairs):
            raise DataError(f"{self.root}: all {len(empty)} masks are empty (no foreground pixel, e.g. {empty[0]}); "
                            "a mask marks the lesion in white (> 127 for 8-bit masks, 1 in a 0/1 label mask)")
        if empty:
            logger.warning("%s: %d of %d masks are empty (images without a lesion), e.g. %s", self.root, len(empty),
                           len(self.pairs), empty[0])
        logger.info("loaded %d pairs from %s at %dx%d", len(self), self.root, resolution, resolution)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i], "prompt": self.pairs[i].prompt or self.prompt}

    def batch(
        self, indices: list[int], generator: torch.Generator, flip: bool = False, prompt_dropout: float = 0.0
    ) -> dict:
        """A training batch: image (B, 3, R, R) in [-1, 1], image_hint (B, 3, R, R) in [0, 1],
        mask_hint (B, 3, R, R) in {0, 1}, prompts (list of B str, "" with probability prompt_dropout), and, when the
        dataset has an `overlay`, overlay (B, 1, R, R) bool, flipped with its image."""
        images = torch.from_numpy(self.images[indices]).permute(0, 3, 1, 2).float() / 255.0
        masks = torch.from_numpy(self.masks[indices]).float().unsqueeze(1)
        overlay = None if self.overlay is None else torch.from_numpy(self.overlay[indices]).unsqueeze(1)
        if flip:  # the same random flips for image, mask and overlay
            for dim in (2, 3):
                do = torch.rand(len(indices), generator=generator) < 0.5
                images[do] = images[do].flip(dim)
                masks[do] = masks[do].flip(dim)
                if overlay is not None:
                    overlay[do] = overlay[do].flip(dim)
        drop = torch.rand(len(indices), generator=generator) < prompt_dropout
        prompts = ["" if d else self[i]["prompt"] for i, d in zip(indices, drop.tolist())]
        batch = {"image": images * 2 - 1, "image_hint": images, "mask_hint": masks.expand(-1, 3, -1, -1),
                 "prompts": prompts}
        if overlay is not None:
            batch["overlay"] = overlay
        return batch


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


def write_examples(data: str | Path, holdout: float, resolution: int, folder: str | Path,
                   count: int = EXAMPLE_MASKS) -> list[Path]:
    """`count` held-out masks of the data (split seed 0, as a build's), binarised at `resolution`, as small PNGs
    (0/255) in folder/examples/, numbered from the smallest lesion to the largest (spread over the sizes); what was
    there is replaced. The app offers them as the model's example masks. Returns the files."""
    _, held = split_pairs(find_pairs(data), holdout, 0)
    masks = []
    for pair in held[:200]:
        _, mask = resize_pair(None, read_mask(pair.mask), resolution)  # (R, R) {0, 1}
        if 0 < mask.mean() < 1:
            masks.append((float(mask.mean()), pair.mask.stem, mask))
    masks.sort(key=lambda m: m[:2])
    # spread over the sizes between the 10th and 90th percentile: the extremes (a speck, a lesion filling the frame)
    # show little
    picked = sorted(set((np.linspace(0.1, 0.9, count) * (len(masks) - 1)).round().astype(int))) if masks else []
    target = Path(folder) / EXAMPLES_FOLDER
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    paths = []
    for n, i in enumerate(picked, 1):
        _, png = cv2.imencode(".png", masks[i][2] * 255, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        paths.append(target / f"{n}-{masks[i][1]}.png")
        atomic_write(paths[-1], png.tobytes())
    logger.info("%d example masks in %s", len(paths), target)
    return paths

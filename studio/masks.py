"""Masks in the app: the drawing canvas (editor value <-> mask), example and random masks, mask files, outlines.

A mask travels as an (H, W) {0, 1} or bool array from here into the library; a file is read by the library's one
rule (`siamese.read_mask`), its size checked from the header before it is decoded."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from siamese import DataError, read_mask
from siamese.data import binarize_mask

from . import inputs
from .replies import os_reason
from .settings import EXAMPLES_DIR

CANVAS = 512  # drawing canvas (square); masks are resized to the model resolution by the library
MAX_MASK_FILE_BYTES = 20 * 2**20


def procedural_mask(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A random lesion-like shape: 1-2 smooth blobs (star-shaped polygons with low-frequency radii)."""
    mask = np.zeros((size, size), np.uint8)
    for _ in range(1 if rng.random() < 0.8 else 2):
        center = rng.uniform(0.3, 0.7, 2) * size
        radius = rng.uniform(0.1, 0.26) * size
        angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        wobble = sum(rng.uniform(0, a) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
                     for k, a in ((2, 0.15), (3, 0.1), (4, 0.05)))
        stretch = rng.uniform(0.7, 1.3)
        xs = center[0] + radius * (1 + wobble) * np.cos(angles) * stretch
        ys = center[1] + radius * (1 + wobble) * np.sin(angles) / stretch
        cv2.fillPoly(mask, [np.stack([xs, ys], 1).round().astype(np.int32)], 1)
    return mask


def draw_example_masks(folder: Path, size: int = 256) -> list[Path]:
    """The example masks of `assets/masks/`: drawn shapes (ellipses, blobs), white lesion on black."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes: dict[str, np.ndarray] = {}
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (128, 120), (46, 40), 0, 0, 360, 255, -1)
    shapes["round"] = m
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (120, 140), (85, 50), 25, 0, 360, 255, -1)
    shapes["oval-large"] = m
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (80, 90), (30, 26), 0, 0, 360, 255, -1)
    cv2.ellipse(m, (176, 170), (22, 20), 0, 0, 360, 255, -1)
    shapes["two-small"] = m
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (200, 60), (34, 28), -30, 0, 360, 255, -1)
    shapes["corner"] = m
    for name, seed in (("blob-lobulated", 3), ("blob-irregular", 11)):
        shapes[name] = procedural_mask(np.random.default_rng(seed), size) * 255
    paths = []
    for name, arr in shapes.items():
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), arr)
        paths.append(path)
    return paths


def example_masks(folder: Path = EXAMPLES_DIR) -> list[Path]:
    paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    return paths or draw_example_masks(folder)


def _layer(value) -> np.ndarray:
    """One painted layer -> (H, W) uint8 {0, 1} by the library's one mask rule: painted (alpha > 127) and bright.
    An array (a direct call) is binarised as it is; a file (the page's upload of the layer) is read by
    `siamese.read_mask`, which checks its header before decoding it."""
    if isinstance(value, np.ndarray):
        return binarize_mask(value)
    path = inputs.upload(value, "a layer of the canvas")
    try:
        return read_mask(path)
    except DataError as e:
        raise DataError(str(e).replace(str(path), "a layer of the canvas")) from None


def mask_from_editor(value: dict | None) -> np.ndarray:
    """The mask drawn in the ImageEditor: the union of its painted layer pixels, (H, W) bool.

    The background is only a backdrop (black, or a reference image) and never part of the mask. Each layer is
    binarised by the library's one mask rule (`siamese.data.binarize_mask`): painted (alpha > 127) and bright.
    """
    value = value if isinstance(value, dict) else {}
    layers = [_layer(x) for x in value.get("layers") or [] if x is not None]
    if not layers:
        raise DataError("the canvas is empty: pick the Brush and draw the lesion in white, upload a mask "
                        "file, or click an example mask")
    h, w = layers[0].shape[:2]
    mask = np.zeros((h, w), bool)
    for layer in layers:
        if layer.shape[:2] != (h, w):
            layer = cv2.resize(layer, (w, h), interpolation=cv2.INTER_NEAREST)
        mask |= layer.astype(bool)
    if not mask.any():
        raise DataError("the mask is empty: pick the Brush and draw the lesion in white (or upload a mask)")
    return mask


def backdrop_of(value: dict | None) -> np.ndarray | None:
    """The editor's background (a reference image, or None), read as `inputs.image` reads an image."""
    return inputs.image((value if isinstance(value, dict) else {}).get("background"), "the canvas background")


def _backdrop(background: np.ndarray | None) -> np.ndarray:
    """The editor background as (CANVAS, CANVAS, 3) uint8: black when there is none."""
    if background is None:
        return np.zeros((CANVAS, CANVAS, 3), np.uint8)
    bg = np.asarray(background)
    if bg.ndim == 2:
        bg = np.repeat(bg[..., None], 3, 2)
    bg = bg[..., :3].astype(np.uint8)
    if bg.shape[:2] != (CANVAS, CANVAS):
        bg = cv2.resize(bg, (CANVAS, CANVAS), interpolation=cv2.INTER_AREA)
    return bg


def editor_value(mask01: np.ndarray | None, background: np.ndarray | None = None) -> dict:
    """An ImageEditor value: backdrop (black or reference) with the mask as one white RGBA layer."""
    bg = _backdrop(background)
    layers = []
    composite = bg.copy()
    if mask01 is not None:
        m = cv2.resize(np.asarray(mask01, np.uint8), (CANVAS, CANVAS), interpolation=cv2.INTER_NEAREST) > 0
        layer = np.zeros((CANVAS, CANVAS, 4), np.uint8)
        layer[m] = 255
        layers.append(layer)
        composite[m] = 255
    return {"background": bg, "layers": layers, "composite": composite}


def read_mask_upload(path: str | Path | None, shown: str | None = None) -> np.ndarray:
    """A mask file -> (H, W) {0, 1} by the library's one rule (`siamese.read_mask`: bit depth and alpha respected,
    the size checked from the header before decoding), with a clear message for non-images, huge files, empty and
    all-white masks. `shown` names the file in messages (default: its name)."""
    if not path:
        raise DataError("no file was uploaded")
    path = Path(path)
    shown = shown or path.name
    try:
        size = path.stat().st_size if path.is_file() else 0
    except OSError as e:
        raise DataError(f"{shown}: cannot be read ({os_reason(e)})") from None
    if size > MAX_MASK_FILE_BYTES:
        raise DataError(f"{shown} is {size / 2**20:.0f} MB; a mask file may be at most "
                        f"{MAX_MASK_FILE_BYTES // 2**20} MB")
    try:
        mask = read_mask(path)  # the library's one rule: the CLI reads the same file the same way
    except DataError as e:
        raise DataError(str(e).replace(str(path), shown)) from None
    check_mask(mask, shown + ": ")
    return mask


def check_mask(mask: np.ndarray, where: str = "") -> None:
    """Refuse an empty or all-white (H, W) {0, 1} mask, the message starting with `where`."""
    if not mask.any():
        raise DataError(f"{where}the mask is empty (no foreground pixel: above 127 in an 8-bit mask, above 32767 in "
                        "a 16-bit one, 1 in a 0/1 label mask, and opaque where it has transparency)")
    if mask.all():
        raise DataError(f"{where}the mask is all white; it needs some black background")


def mask_value(value) -> np.ndarray:
    """The mask a /generate request sends -> (H, W) {0, 1}: a file (FileData from the network, a path from a direct
    call) read by `read_mask_upload`, or an array or image (a direct call) binarised by the same rule."""
    if value is None:
        raise DataError("no mask: draw one, upload a mask file or click an example")
    if isinstance(value, Image.Image):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        mask = binarize_mask(value)
        check_mask(mask)
        return mask
    return read_mask_upload(inputs.upload(value, "mask"), inputs.shown_name(value))


def frame_mask_value(value) -> np.ndarray | None:
    """The frame's own lesion mask a request sends -> (H, W) {0, 1}, or None (not given: unknown). Read by the one
    mask rule as `mask_value` reads a mask, but an empty mask is allowed (a frame without a lesion); an all-white
    one is refused."""
    if value is None or (isinstance(value, str) and not value):
        return None
    if isinstance(value, Image.Image):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        mask, shown = binarize_mask(value), "the frame's mask"
    else:
        path = inputs.upload(value, "the frame's mask")
        if path is None:
            return None
        shown = inputs.shown_name(value)
        if path.is_file() and path.stat().st_size > MAX_MASK_FILE_BYTES:
            raise DataError(f"{shown}: the frame's mask file may be at most {MAX_MASK_FILE_BYTES // 2**20} MB")
        try:
            mask = read_mask(path)
        except DataError as e:
            raise DataError(f"the frame's mask: {str(e).replace(str(path), shown)}") from None
    if mask.all():
        raise DataError(f"{shown} is all white: a frame's mask marks its own lesion in white on black")
    return mask


def outline(image: np.ndarray, mask: np.ndarray, color=(0, 255, 0)) -> np.ndarray:
    """The image with the mask's outline drawn over it (1-2 px, scaled to the image size)."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(image.copy())
    cv2.drawContours(out, contours, -1, color, max(1, image.shape[0] // 160), lineType=cv2.LINE_AA)
    return out

"""On-screen overlays in a dataset's images: the pixels training leaves out of the diffusion loss.

Endoscopes and other devices burn text into their frames (the scope's settings, dates, times, marker dashes,
position boxes). A model trained on such frames imitates them as garbled streaks. `find_overlay` flags them in
each image, from the dataset itself, with two rules:

- text: thin bright strokes (a white top-hat of the brightest channel above `STROKE_CONTRAST`) where such
  strokes are much more frequent across the frames than elsewhere (a zone: the smoothed share of frames with a
  stroke there is at least `ZONE_SHARE` and `ZONE_RATIO` times its median over the frame). Text varies per frame
  but stays in its place on the screen, where specular highlights, which look alike, fall anywhere; so each
  image's strokes inside the zone are flagged (dilated a little, to take the glyphs' halo), not the zone itself;
- static labels: pixels within `CONSTANT_TOLERANCE` of their median over the frames in at least
  `CONSTANT_SHARE` of the frames, unless that median is dark (a black border, a vignette: image content the
  model draws well). Flagged in the images where they hold that value.

Measured (runs/h25o): Kvasir-SEG 1.8 % of the pixels, 3.6 % of the 32 x 32 latents at resolution 256 (1.0 %,
3.2 % at 128): the text block left, the marker dashes, a symbol right; PH2 dermoscopy nothing (0 %). `keep_weights` turns the pixel masks into the per-latent weights
of the losses (`objective`): 0 where a latent's patch touches an overlay pixel, 1 elsewhere.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data import PairDataset

logger = logging.getLogger(__name__)

__all__ = ["OVERLAY_MODES", "find_overlay", "text_zone", "stroke_share", "keep_weights", "attach_overlay", "tint",
           "MIN_IMAGES"]

OVERLAY_MODES = ("auto", "off")  # TrainConfig.overlay: find overlays and leave them out of the loss, or not
MIN_IMAGES = 24  # fewer frames say nothing about what stays in place: nothing is flagged
STROKE_CONTRAST = 40  # white top-hat of the brightest channel, 0..255: a stroke brighter than its surroundings
ZONE_SHARE = 0.06  # smoothed share of the frames with a stroke at a pixel, for the pixel to be in a text zone
ZONE_RATIO = 4.0  # ... and that many times the median share (specular highlights set the median)
CONSTANT_TOLERANCE = 8  # a static pixel: every channel within this of its median over the frames, 0..255
CONSTANT_SHARE = 0.5  # ... in at least this share of the frames
DARK = 96  # a median whose brightest channel is below this is a border or vignette, not an overlay
_CHUNK = 64  # rows per chunk of the median (it needs float copies of the frames)


def _odd(n: int) -> int:
    return max(3, n | 1)


def _strokes(images: np.ndarray, size: int) -> np.ndarray:
    """(N, R, R, 3) uint8 -> (N, R, R) bool: thin bright strokes (white top-hat with a size x size square)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    return np.stack([cv2.morphologyEx(np.ascontiguousarray(im.max(2)), cv2.MORPH_TOPHAT, kernel) > STROKE_CONTRAST
                     for im in images])


def _static(images: np.ndarray, size: int, lesions: np.ndarray | None) -> np.ndarray:
    """(N, R, R, 3) uint8 -> (N, R, R) bool: the pixels holding their (non-dark) median value across the frames,
    where that value is held in at least CONSTANT_SHARE of them, in patches of at least size x size pixels (a
    label, not pixels of smooth images that happen to agree). A frame's lesion pixels (`lesions`, (N, R, R)
    nonzero) never count as holding it: lesions are image content, wherever they are."""
    r = images.shape[1]
    near = np.zeros(images.shape[:3], bool)
    static = np.zeros(images.shape[1:3], bool)
    for y in range(0, r, _CHUNK):
        block = images[:, y:y + _CHUNK].astype(np.int16)
        median = np.median(block, axis=0)  # (rows, R, 3)
        near[:, y:y + _CHUNK] = np.abs(block - median).max(3) <= CONSTANT_TOLERANCE
        if lesions is not None:
            near[:, y:y + _CHUNK] &= lesions[:, y:y + _CHUNK] == 0
        static[y:y + _CHUNK] = (near[:, y:y + _CHUNK].mean(0) >= CONSTANT_SHARE) & (median.max(2) >= DARK)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    return near & cv2.morphologyEx(static.view(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool)


def find_overlay(images: np.ndarray, lesions: np.ndarray | None = None) -> np.ndarray:
    """The overlay pixels of each image: (N, R, R, 3) uint8 RGB (as `PairDataset.images`) -> (N, R, R) bool.
    `lesions` (N, R, R), the images' masks (`PairDataset.masks`), keeps lesion pixels out of the static rule.

    Sizes scale with R (a 256 image: strokes narrower than 9 pixels, zones smoothed over 9, a 5 x 5 halo).
    With fewer than MIN_IMAGES images nothing is flagged."""
    images = _checked(images)
    n, h, w = images.shape[:3]
    if n < MIN_IMAGES:
        logger.info("%d images: too few to tell overlays from image content (%d needed); none flagged", n, MIN_IMAGES)
        return np.zeros((n, h, w), bool)
    strokes = _strokes(images, _stroke_size(h, w))
    zone = _zone(strokes)
    halo = _halo(h, w)
    text = (strokes & zone).view(np.uint8)
    mask = np.stack([cv2.dilate(m, halo) for m in text]).astype(bool) & zone  # the glyphs and their halo
    return mask | _static(images, _odd(min(h, w) // 32), lesions)


def text_zone(images: np.ndarray) -> np.ndarray:
    """Where a dataset's frames carry text: (N, R, R, 3) uint8 -> (R, R) bool (all False with fewer than MIN_IMAGES
    images), the zone `find_overlay` flags strokes in."""
    images = _checked(images)
    n, h, w = images.shape[:3]
    if n < MIN_IMAGES:
        return np.zeros((h, w), bool)
    return _zone(_strokes(images, _stroke_size(h, w)))


def stroke_share(images: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """The share of each image's `zone` pixels that are text-like strokes, as `find_overlay` finds them: (N, R, R, 3)
    uint8 and (R, R) bool -> (N,) float (0 where the zone is empty). Of generated images: how much of the on-screen
    text the model imitates."""
    images = _checked(images)
    if not zone.any():
        return np.zeros(len(images))
    return _strokes(images, _stroke_size(*images.shape[1:3]))[:, zone].mean(1)


def _checked(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    return images


def _stroke_size(h: int, w: int) -> int:
    return _odd(2 * (min(h, w) // 64) + 1)


def _zone(strokes: np.ndarray) -> np.ndarray:
    """(N, R, R) bool strokes -> (R, R) bool: where strokes are frequent across the frames (and a halo around)."""
    h, w = strokes.shape[1:]
    window = _odd(min(h, w) // 32)
    share = cv2.blur(strokes.mean(0, dtype=np.float32), (window, window))
    zone = share >= max(ZONE_SHARE, ZONE_RATIO * float(np.median(share)))
    return cv2.dilate(zone.astype(np.uint8), _halo(h, w)).astype(bool)


def _halo(h: int, w: int) -> np.ndarray:
    """The square a glyph (and the zone) is dilated by: 5 x 5 at 256 px."""
    return cv2.getStructuringElement(cv2.MORPH_RECT, (_odd(min(h, w) // 64 + 1),) * 2)


def keep_weights(overlay: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixel overlay masks (B, 1, H, W) (nonzero: overlay) -> loss weights (B, 1, h, w) float: 0 where a latent's
    patch of the image holds an overlay pixel (max-pooled), 1 elsewhere. H, W are whole multiples of h, w."""
    h, w = size
    flagged = F.adaptive_max_pool2d((overlay != 0).float(), (h, w))
    return 1.0 - flagged


def attach_overlay(dataset: PairDataset, latent_size: int) -> float:
    """Find the dataset's overlays and set `dataset.overlay` (its batches then carry them; None when none is found,
    so that the losses stay exactly the plain ones). Returns the share of the (latent_size)^2 latents left out."""
    overlay = find_overlay(dataset.images, dataset.masks)
    n, r = overlay.shape[:2]
    f = r // latent_size  # as keep_weights: a latent whose patch holds an overlay pixel is left out
    share = float(overlay.reshape(n, latent_size, f, latent_size, f).any(axis=(2, 4)).mean())
    logger.info("on-screen overlays: %.2f%% of the pixels, %.2f%% of the latents left out of the loss",
                100 * overlay.mean(), 100 * share)
    dataset.overlay = overlay if overlay.any() else None
    return share


def tint(images: np.ndarray, overlay: np.ndarray, colour: tuple[int, int, int] = (0, 255, 255)) -> np.ndarray:
    """Images (N, H, W, 3) uint8 with their overlay pixels (N, H, W) blended half with `colour`, for a look."""
    out = images.copy()
    out[overlay] = (out[overlay].astype(np.uint16) + np.array(colour, np.uint16)) // 2
    return out

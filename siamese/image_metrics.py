"""Realism and diversity statistics of image sets: colour/texture statistics, KID, pairwise distances,
and the flat-painting control images.
"""

from __future__ import annotations

import itertools
import logging

import cv2
import numpy as np
import torch
from monai.metrics import SSIMMetric

logger = logging.getLogger(__name__)

__all__ = ["STATISTICS", "image_statistics", "kid", "flat_paintings", "pairwise_distances", "standardiser",
           "nearest_distances", "memorisation"]


STD_FLOOR = 1e-3  # the smallest std a column is scaled by (the statistics are shares and intensities in [0, 1])
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


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per column; stds floored at 1% of the median std and at STD_FLOOR, so that a column that is
    (nearly) constant on the reference set cannot dominate a distance (on a set of flat images every column is
    nearly constant, and rounding noise then decided the KID)."""
    sd = x.std(0)
    return x.mean(0), np.maximum(sd, max(0.01 * float(np.median(sd)), STD_FLOOR))


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N, D) and (M, D) feature rows -> (N,) RMS distance (over dimensions) of each query to its nearest reference
    row."""
    q, r = torch.from_numpy(np.asarray(queries, np.float64)), torch.from_numpy(np.asarray(reference, np.float64))
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1] or not len(r):
        raise ValueError(f"nearest distances need (N, D) and (M, D) arrays, M >= 1, got {tuple(q.shape)} and "
                         f"{tuple(r.shape)}")
    return (torch.cdist(q, r).min(1).values / q.shape[1] ** 0.5).numpy()


def memorisation(generated: np.ndarray, held_out: np.ndarray, train: np.ndarray) -> dict:
    """Whether generated images copy training images: the distance of each generated image to its nearest training
    image against the same distance for held-out real images (N, D) feature rows, standardised alike.

    `ratio` = median generated distance / median held-out distance: about 1 or more for a model that makes new
    images, well below 1 for one that copies; `closer_than_held_out` is the share of generated images nearer a
    training image than the nearest held-out real image is (its minimum distance)."""
    gen, held = nearest_distances(generated, train), nearest_distances(held_out, train)
    return {"generated_median": float(np.median(gen)), "held_out_median": float(np.median(held)),
            "ratio": float(np.median(gen) / max(np.median(held), 1e-12)),
            "generated_min": float(gen.min()), "held_out_min": float(held.min()),
            "closer_than_held_out": float((gen < held.min()).mean()), "generated": len(gen), "held_out": len(held)}

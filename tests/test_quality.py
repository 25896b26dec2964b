"""Tests of siamese.quality: the block-edge ratio and PSNR on images whose answer is known."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from siamese.quality import block_edge_ratio, psnr


def _blocks(rng: np.random.Generator, n: int = 2, size: int = 64, block: int = 8, offset: int = 0) -> np.ndarray:
    """n images (n, size, size, 3) made of constant block x block tiles of random values, the tile grid
    shifted by `offset` pixels, plus slight noise (so that the inside gradient is not 0)."""
    tiles = rng.uniform(0, 255, (n, size // block + 2, size // block + 2, 3))
    big = np.repeat(np.repeat(tiles, block, axis=1), block, axis=2)
    start = block - offset
    x = big[:, start:start + size, start:start + size] + rng.normal(0, 1.0, (n, size, size, 3))
    return x.clip(0, 255)


def test_a_smooth_gradient_has_no_grid():
    ramp = np.linspace(0, 255, 64)
    image = np.stack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp[None, :],
                      (ramp[None, :] + ramp[:, None]) / 2], axis=-1)
    assert block_edge_ratio(image) == pytest.approx(1.0, abs=1e-9)  # every neighbour difference is equal
    assert block_edge_ratio(image.round().astype(np.uint8)) == pytest.approx(1.0, abs=0.1)


def test_smooth_noise_scores_about_one():
    rng = np.random.default_rng(0)
    images = np.stack([cv2.GaussianBlur(rng.uniform(0, 255, (96, 96, 3)).astype(np.float32), (0, 0), 3.0)
                       for _ in range(4)])
    assert block_edge_ratio(images) == pytest.approx(1.0, abs=0.05)


def test_constant_blocks_on_the_grid_score_far_above_one_and_off_the_grid_below_one():
    rng = np.random.default_rng(1)
    assert block_edge_ratio(_blocks(rng)) > 10
    assert block_edge_ratio(_blocks(rng).astype(np.uint8)[0]) > 10  # one (H, W, 3) uint8 image
    assert block_edge_ratio(_blocks(rng, offset=4)) < 0.5  # the steps fall inside the measured patches
    assert block_edge_ratio(_blocks(rng, block=16), block=16) > 10
    assert block_edge_ratio(_blocks(rng, block=16)) < block_edge_ratio(_blocks(rng))  # half its 8-borders are flat


def test_block_edge_ratio_refuses_small_or_misshapen_images():
    with pytest.raises(ValueError, match="at least 16"):
        block_edge_ratio(np.zeros((1, 8, 64, 3)))
    with pytest.raises(ValueError):
        block_edge_ratio(np.zeros((64, 64)))


def test_psnr_of_identical_images_is_infinite_and_of_known_noise_matches_the_formula():
    rng = np.random.default_rng(2)
    reference = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    assert psnr(reference, reference.copy()) == float("inf")
    noisy = (reference + rng.normal(0, 5, reference.shape)).clip(0, 255)
    mse = np.mean((reference.astype(np.float64) - noisy) ** 2)
    assert psnr(reference, noisy) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)
    assert psnr(np.zeros((4, 4)), np.ones((4, 4))) == pytest.approx(10 * np.log10(255**2), rel=1e-12)  # 48.13 dB
    assert psnr(np.zeros((4, 4)), np.full((4, 4), 0.5), peak=1.0) == pytest.approx(10 * np.log10(4), rel=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))

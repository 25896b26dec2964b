"""Helpers of the Batch tab's tests (test_app_batch*.py): a fake fidelity scorer, mask files and zips, the fast
sampling settings, and waiting for a batch. Their `batch_studio` fixture is conftest's."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np

from studio.server import Studio


class FakeScorer:
    """Scores 0.9, 0.2, 0.9, 0.2, ... in the order pairs are scored; `gate` (when set) holds the second call
    until it is opened, so a test can act while a batch runs."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls, self.gate = 0, gate

    def score(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        assert images.ndim == 4 and images.dtype == np.uint8 and masks.shape == images.shape[:3]
        self.calls += 1
        if self.gate is not None and self.calls > 1:
            self.gate.wait(60)
        start = getattr(self, "n", 0)
        self.n = start + len(images)
        return np.array([0.9 if (start + i) % 2 == 0 else 0.2 for i in range(len(images))])


def fake_loader(scorer):
    return lambda folder, device="cpu": scorer


def mask_png(k: int, size: int = 80) -> bytes:
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (20 + 7 * k % 40, size // 2), (14, 12), 0, 0, 360, 255, -1)
    return cv2.imencode(".png", mask)[1].tobytes()


def masks_zip(path: Path, n: int = 3, extra: dict[str, bytes] | None = None) -> str:
    """n small masks in masks/, and a README the batch skips."""
    with zipfile.ZipFile(path, "w") as zf:
        for k in range(n):
            zf.writestr(f"masks/m{k}.png", mask_png(k))
        zf.writestr("README.txt", "masks for a batch")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return str(path)


FAST = dict(steps=2, scheduler="ddim", guidance_scale=3.0, seed=5)


def finished(studio: Studio, key: str, timeout: float = 120) -> dict:
    studio.batches.get(key).wait(timeout)
    return studio.batch.batch_status(key)


# -- handlers ---------------------------------------------------------------------------------------

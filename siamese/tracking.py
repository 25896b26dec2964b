"""Training logs where people look: TensorBoard or Weights & Biases, through accelerate's trackers.

`train --report-to tensorboard|wandb` (default none) sends what metrics.csv records (every `log_every` steps:
the four loss terms, their sum `loss`, the learning rate `lr`, `it_per_s`) and the preview strips to the
tracker, under the same names; TensorBoard's files go to OUTPUT/logs/siamese/. The live events of the app and
metrics.csv are unchanged. Neither package is a requirement of the app: asking for a tracker whose package is
missing is an error naming the package, before anything is written.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["REPORT_TO", "PROJECT_NAME", "check_report_to", "accelerator_kwargs", "start", "log_row", "log_preview",
           "finish"]

REPORT_TO = ("none", "tensorboard", "wandb")
PROJECT_NAME = "siamese"  # TensorBoard: OUTPUT/logs/siamese/; W&B: the project
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_report_to(report_to: str) -> None:
    """A ValueError naming the setting or the missing package; None when the tracker can be used."""
    if report_to not in REPORT_TO:
        raise ValueError(f"report to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    packages = _PACKAGES.get(report_to, ())
    if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
        raise ValueError(f"report to {report_to} needs the {packages[0]} package, which is not installed: "
                         f"pip install {packages[0]} (or report to none)")


def accelerator_kwargs(report_to: str, output: str | Path) -> dict:
    """Arguments of `Accelerator(...)` for the tracker: none, or `log_with` and `project_dir=OUTPUT/logs`."""
    if report_to == "none":
        return {}
    return {"log_with": report_to, "project_dir": str(Path(output) / "logs")}


def _hparam(value):
    """A config value as TensorBoard's hparams take it (bool, int, float or str)."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def start(accelerator, record: dict) -> None:
    """Start the trackers (main process) with the run's settings (train_config.json's record)."""
    if accelerator.log_with:
        accelerator.init_trackers(PROJECT_NAME, config={k: _hparam(v) for k, v in record.items()})
        logger.info("reporting to %s", ", ".join(t.name for t in accelerator.trackers))


def log_row(accelerator, step: int, values: dict[str, float], lr: float, it_per_s: float) -> None:
    """One metrics.csv row: loss terms, lr and it/s at `step` (main process; nothing without trackers)."""
    if accelerator.trackers:
        accelerator.log({**{k: float(v) for k, v in values.items()}, "lr": float(lr), "it_per_s": float(it_per_s)},
                        step=step)


def log_preview(accelerator, image, step: int) -> None:
    """A preview strip (a PIL image: samples above, masks below) as the image "preview" at `step`."""
    array = np.asarray(image.convert("RGB"))  # H, W, 3 uint8
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"preview": array[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"preview": [image]}, step=step)


def finish(accelerator) -> None:
    """Close the trackers (flushes TensorBoard's files). Not `accelerator.end_training()`: that also ends the
    process group, which the run's next stage still uses."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []

"""What the operator configures, read from the environment once per server, and the app's own folders.

    SIAMESE_MODEL              the default model: a folder or a hub id (else the bundled one)
    SIAMESE_MODELS_ROOT        a folder whose model folders may also be loaded, as `models/PATH` (unset: none)
    SIAMESE_ALLOW_HUB=1        hub ids (owner/name) may be loaded and downloaded (unset: only a default hub id)
    SIAMESE_DATA_ROOT          the only folder training datasets are read from (default: the working directory)
    SIAMESE_DISABLE_TRAINING=1 no training (always off on ZeroGPU Spaces)
    SIAMESE_MAX_UPLOAD         the largest upload (default 500mb); a dataset zip may unpack to 4x this
    SIAMESE_DISABLE_BATCH=1    no Batch tab runs (always off on ZeroGPU Spaces)
    SIAMESE_BATCH_MAX_MASKS    the most masks one batch takes (default 1000)
    SIAMESE_BATCH_MAX_IMAGES   the most images per mask in a batch (default 4)
    SIAMESE_BATCH_MAX_ACTIVE   the most batches running at once on the server, one per session (default 2)
    SIAMESE_DEVICE, SIAMESE_DTYPE   where and in which precision models run (default: cuda if present, float32)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "assets" / "masks"
FRAMES_DIR = ROOT / "assets" / "frames"  # example frames (images, masks/ of the same stems) for inpainting
CHECKPOINTS_DIR = ROOT / "checkpoints"
RUNS_DIR = ROOT / "runs" / "app"

DEFAULT_MAX_UPLOAD = "500mb"
ZIP_EXPANSION = 4  # a dataset zip may unpack to at most this many times the upload limit
BATCH_MAX_MASKS, BATCH_MAX_IMAGES, BATCH_MAX_ACTIVE = 1000, 4, 2  # the defaults of the SIAMESE_BATCH_* limits
_UNITS = {"b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}  # as Gradio reads max_file_size


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def parse_size(text: str | int) -> int:
    """"500mb" -> bytes, with Gradio's units (b, kb, mb, gb, tb; 1024-based)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"(\d+)\s*([kmgt]?b)", str(text).strip().lower())
    if not match:
        raise ValueError(f"SIAMESE_MAX_UPLOAD must be a size such as 500mb or 2gb, got '{text}'")
    return int(match[1]) * _UNITS[match[2]]


def training_disabled_reason(environ: Mapping[str, str] | None = None) -> str | None:
    """Why training is off here, or None: an explicit switch, or a ZeroGPU Space (no long GPU jobs)."""
    env = os.environ if environ is None else environ
    if _on(env.get("SIAMESE_DISABLE_TRAINING")):
        return "Training is disabled on this server (SIAMESE_DISABLE_TRAINING=1). Run the app locally to train."
    if env.get("SPACES_ZERO_GPU"):
        return ("Training is disabled on ZeroGPU Spaces: GPU time comes in short slices, too short for a "
                "training run. Duplicate the Space on a dedicated GPU, or run the app locally to train.")
    return None


def batch_disabled_reason(environ: Mapping[str, str] | None = None) -> str | None:
    """Why batches are off here, or None: an explicit switch, or a ZeroGPU Space (a batch is a long GPU job)."""
    env = os.environ if environ is None else environ
    if _on(env.get("SIAMESE_DISABLE_BATCH")):
        return "Batches are disabled on this server (SIAMESE_DISABLE_BATCH=1). Run the app locally for batches."
    if env.get("SPACES_ZERO_GPU"):
        return ("Batches are disabled on ZeroGPU Spaces: GPU time comes in short slices, too short for a batch. "
                "Use Generate, or run the app locally (or `python -m siamese sample --min-fidelity`).")
    return None


def _limit(env: Mapping[str, str], name: str, default: int) -> int:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a whole number 1 or more, got '{text}'")
    return int(text)


def device_and_dtype(environ: Mapping[str, str] | None = None) -> tuple[str, torch.dtype]:
    """cuda when present (a GPU Space), else cpu; float32 unless SIAMESE_DTYPE=float16|bfloat16."""
    env = os.environ if environ is None else environ
    device = env.get("SIAMESE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(env.get("SIAMESE_DTYPE", ""), torch.float32)
    return device, dtype


@dataclass(frozen=True)
class Settings:
    """The server's access settings. `Settings.from_env()` reads them; tests build them directly."""

    data_root: Path  # training datasets are read from folders inside it only
    models_root: Path | None = None  # model folders inside it may be loaded; None: none
    allow_hub: bool = False  # hub ids may be loaded (the default model may be one regardless)
    max_upload: str = DEFAULT_MAX_UPLOAD  # Gradio refuses bigger uploads
    training_disabled: str | None = None  # why, or None
    batch_disabled: str | None = None  # why, or None
    batch_max_masks: int = BATCH_MAX_MASKS  # per batch
    batch_max_images: int = BATCH_MAX_IMAGES  # per mask
    batch_max_active: int = BATCH_MAX_ACTIVE  # batches running at once (each session runs one at a time)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        models_root = (env.get("SIAMESE_MODELS_ROOT") or "").strip()
        settings = cls(data_root=Path(env.get("SIAMESE_DATA_ROOT") or Path.cwd()).expanduser().resolve(),
                       models_root=Path(models_root).expanduser().resolve() if models_root else None,
                       allow_hub=_on(env.get("SIAMESE_ALLOW_HUB")),
                       max_upload=env.get("SIAMESE_MAX_UPLOAD") or DEFAULT_MAX_UPLOAD,
                       training_disabled=training_disabled_reason(env),
                       batch_disabled=batch_disabled_reason(env),
                       batch_max_masks=_limit(env, "SIAMESE_BATCH_MAX_MASKS", BATCH_MAX_MASKS),
                       batch_max_images=_limit(env, "SIAMESE_BATCH_MAX_IMAGES", BATCH_MAX_IMAGES),
                       batch_max_active=_limit(env, "SIAMESE_BATCH_MAX_ACTIVE", BATCH_MAX_ACTIVE))
        parse_size(settings.max_upload)  # a bad value fails at start, not at the first upload
        return settings

    @property
    def max_upload_bytes(self) -> int:
        return parse_size(self.max_upload)

    @property
    def max_unpacked_bytes(self) -> int:
        """The most a dataset zip may unpack to: ZIP_EXPANSION times the upload limit."""
        return ZIP_EXPANSION * self.max_upload_bytes

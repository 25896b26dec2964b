"""Siamese-Diffusion: mask-to-image synthesis of medical image-mask pairs (CVPR 2025), on diffusers.

    from siamese import load_model, generate, read_mask
    model = load_model("checkpoints/siamese-kvasir-tiny")
    images = generate(model, read_mask("mask.png"), num_images=4, seed=0)
"""

from __future__ import annotations

from .data import DataError, augment_mask, read_image, read_mask
from .export import export_zip, write_pairs
from .files import DEFAULT_MODEL_NAME, default_model
from .model import SiameseModel, build_tiny, load_model
from .model_config import ModelLoadError, SiameseConfig
from .params import Generated, SamplingParams
from .sampling import generate, sample

__all__ = [
    "DataError", "ModelLoadError", "SiameseConfig", "SiameseModel", "Generated", "SamplingParams",
    "build_tiny", "load_model", "generate", "sample", "read_image", "read_mask", "augment_mask",
    "write_pairs", "export_zip", "default_model", "DEFAULT_MODEL_NAME",
]

"""Latent codecs: where diffusion happens.

Both codecs map images (B, 3, H, W) in [-1, 1] to latents (B, C, H/8, W/8) and back:
- `VAECodec`: a diffusers `AutoencoderKL` (Stable Diffusion 1.5: 4 channels, scaling 0.18215).
- `PatchCodec`: pixel space cut into 8x8 patches (pixel-unshuffle, 192 channels), normalised by a
  per-RGB-channel shift and scale. Lossless, nothing to train, free to run: the tiny CPU preset uses it
  (an autoencoder that reconstructs colonoscopy texture costs more CPU-hours than the diffusion model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor, nn

__all__ = ["PatchCodecConfig", "PatchCodec", "VAECodec", "Codec"]


@dataclass
class PatchCodecConfig:
    """Patch size and per-RGB-channel normalisation: latent = (pixel - shift) / scale."""

    patch_size: int = 8
    shift: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scale: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


class PatchCodec(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> latents (B, 3*p*p, H/p, W/p), p = patch size."""

    def __init__(self, config: PatchCodecConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("shift", torch.tensor(config.shift).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(config.scale).view(1, 3, 1, 1), persistent=False)

    @property
    def latent_channels(self) -> int:
        return 3 * self.config.patch_size**2

    @property
    def downscale(self) -> int:
        return self.config.patch_size

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = (images - self.shift.to(images.dtype)) / self.scale.to(images.dtype)
        return F.pixel_unshuffle(x, self.config.patch_size)

    def decode(self, latents: Tensor) -> Tensor:
        x = F.pixel_shuffle(latents, self.config.patch_size)
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    @staticmethod
    def fit(images: Tensor, patch_size: int = 8) -> PatchCodecConfig:
        """Per-channel mean and std of images (N, 3, H, W) in [-1, 1] -> a unit-variance codec config."""
        mean = images.mean(dim=(0, 2, 3))
        std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return PatchCodecConfig(patch_size, [round(v, 5) for v in mean.tolist()], [round(v, 5) for v in std.tolist()])

    def to_dict(self) -> dict:
        return {"type": "patch", **asdict(self.config)}


class VAECodec(nn.Module):
    """A diffusers AutoencoderKL: latents = scaling_factor * sample of the posterior."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return posterior.sample(generator) * self.vae.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def to_dict(self) -> dict:
        return {"type": "vae"}

    def save(self, folder: Path, dtype: torch.dtype | None = None) -> None:
        _save_module(self.vae, folder / "vae", dtype)


def _save_module(module, folder: Path, dtype: torch.dtype | None) -> None:
    """save_pretrained in `dtype` (e.g. float16 for a small download), leaving the module as it was."""
    original = module.dtype
    if dtype is not None:
        module.to(dtype)
    try:
        module.save_pretrained(folder, safe_serialization=True)
    finally:
        module.to(original)


Codec = PatchCodec | VAECodec

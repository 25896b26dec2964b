"""The tiny preset's patch codec, for diffusers: `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`
loads a model folder's `codec/` with `PatchCodec.from_pretrained(folder / "codec")`.

Carried in model folders written by the `siamese` package (as codec/patch_codec.py); imports only torch,
safetensors and diffusers. The one source of the codec's arithmetic: `siamese.codec.PatchCodec` is this class with
fitting and saving added (decode: the learned decoder when the folder has one, else the linear inverse of the
whitened PCA projection of 8x8 patches).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderTiny
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import load_file
from torch import Tensor, nn


class PatchDecoder(ModelMixin, ConfigMixin):
    """Latents (B, C, h, w) -> images (B, 3, h * 2**(L-1), w * 2**(L-1)) in [-1, 1], L = len(num_blocks).

    diffusers' DecoderTiny (the TAESD decoder) over the latents: `num_blocks[i]` ReLU residual blocks at level i
    (level 0 at latent resolution), every level `width` channels wide, nearest x2 upsampling between levels; the
    defaults upsample x8 with 0.38 M parameters. The `siamese` package uses this class (`siamese.decoder`).
    """

    @register_to_config
    def __init__(self, latent_channels: int = 16, width: int = 48, num_blocks: tuple[int, ...] = (3, 1, 1, 0)) -> None:
        super().__init__()
        self.decoder = DecoderTiny(
            in_channels=latent_channels, out_channels=3, num_blocks=tuple(num_blocks),
            block_out_channels=(width,) * len(num_blocks), upsampling_scaling_factor=2, act_fn="relu",
            upsample_fn="nearest",
        )

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.config.num_blocks) - 1)

    def forward(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)


class PatchCodec(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> latents (B, channels, H/p, W/p), p = patch size.

    latent = (basis @ (patch - mean)) / scale; patch = basis.T @ (latent * scale) + mean.
    """

    WEIGHTS = "codec.safetensors"
    BUFFERS = ("mean", "basis", "scale")

    def __init__(self, patch_size: int = 8, channels: int = 16, decoder: PatchDecoder | None = None) -> None:
        super().__init__()
        d = 3 * patch_size**2
        self.patch_size, self.channels = patch_size, channels
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("basis", torch.eye(d)[:channels].contiguous())
        self.register_buffer("scale", torch.full((channels,), 0.5))
        self.decoder = decoder

    @property
    def latent_channels(self) -> int:
        return self.channels

    @property
    def downscale(self) -> int:
        return self.patch_size

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    @property
    def device(self) -> torch.device:
        return self.basis.device

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None, **kwargs) -> PatchCodec:
        """Read a model folder's codec/: codec.safetensors (mean, basis, scale), decoder/ when the folder's
        siamese_config.json says the codec has a learned decoder."""
        folder = Path(folder)
        settings_path = folder.parent / "siamese_config.json"
        if not settings_path.is_file():
            raise FileNotFoundError(f"{settings_path} is missing: the patch codec's settings are in it")
        settings = json.loads(settings_path.read_text())["codec"]
        if settings.get("type") != "patch":
            raise ValueError(f"{settings_path}: the codec is {settings.get('type')!r}, not a patch codec")
        decoder = None
        if settings.get("learned_decoder"):
            decoder = PatchDecoder.from_pretrained(folder / "decoder", use_safetensors=True).requires_grad_(False)
        codec = cls(settings.get("patch_size", 8), settings.get("channels", 16), decoder)
        weights = load_file(folder / cls.WEIGHTS)
        codec.load_state_dict({k: weights[k] for k in cls.BUFFERS}, strict=False)
        codec.requires_grad_(False).eval()
        return codec.to(torch_dtype) if torch_dtype is not None else codec

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, channels, H/p, W/p). Deterministic: `generator` (a VAE samples its
        posterior with one) is not used."""
        x = F.pixel_unshuffle(images.to(self.dtype), self.patch_size) - self.mean.view(1, -1, 1, 1)
        return torch.einsum("kd,bdhw->bkhw", self.basis, x) / self.scale.view(1, -1, 1, 1)

    def decode(self, latents: Tensor) -> Tensor:
        """(B, channels, h, w) -> (B, 3, h*p, w*p) images in [-1, 1] (not clamped)."""
        if self.decoder is not None:
            return self.decoder(latents.to(self.decoder.dtype))
        return self.decode_linear(latents)

    def decode_linear(self, latents: Tensor) -> Tensor:
        """The exact linear inverse of `encode` on the kept components."""
        x = torch.einsum("kd,bkhw->bdhw", self.basis, latents.to(self.dtype) * self.scale.view(1, -1, 1, 1))
        return F.pixel_shuffle(x + self.mean.view(1, -1, 1, 1), self.patch_size)

"""Latent codecs: where diffusion happens.

Both codecs map images (B, 3, H, W) in [-1, 1] to latents (B, C, H/8, W/8) and back:
- `VAECodec`: a diffusers `AutoencoderKL` (Stable Diffusion 1.5: 4 channels, scaling 0.18215).
- `PatchCodec`: a linear autoencoder fitted in closed form: 8x8 RGB patches (192 values) projected on
  their `channels` leading principal components (PCA of the training images), each scaled to unit
  variance. Fitting takes a second and encoding is one matrix product, where a learned AutoencoderKL
  costs CPU-hours (see the model card). Two measured pitfalls set the defaults:
  * whiten each component: with one global scale, component 0 had 6x the noise's scale and the last
    thirty were drowned by it at almost every timestep;
  * keep the latent several times narrower than the UNet's first level: the noise must pass through
    its GroupNorm + SiLU and come out whole. With 48 channels into a 48-wide level the loss at t = 999
    was 0.61 after 200 steps, with 16 channels 0.23 (192 raw channels: stalled at 1.0). 16 components
    reconstruct held-out Kvasir-SEG images at 31.1 dB PSNR (24: 33.4 dB, 48: 38.9 dB).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .carried import patch_codec as carried  # the codec's arithmetic, also carried in model folders
from .carried.patch_codec import PatchDecoder

__all__ = ["PatchCodecConfig", "PatchCodec", "VAECodec", "Codec", "save_module"]


def _not_the_empty_float32_warning(record: logging.LogRecord) -> bool:
    """diffusers (ModelMixin.to) warns on every cast to a dtype that modules "should be kept in float32", even when
    that list is empty, as it is for every network here: a line of noise per cast on the user's terminal."""
    return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_not_the_empty_float32_warning)


@dataclass
class PatchCodecConfig:
    """Patch size and number of principal components kept (3 * patch_size**2 keeps everything)."""

    patch_size: int = 8
    channels: int = 16
    learned_decoder: bool = False  # decode with a PatchDecoder (codec/decoder/) instead of the linear inverse


class PatchCodec(carried.PatchCodec):
    """Images (B, 3, H, W) in [-1, 1] <-> latents (B, channels, H/p, W/p), p = patch size.

    latent = (basis @ (patch - mean)) / scale;  patch = basis.T @ (latent * scale) + mean, with one
    scale per channel (the standard deviation of its component). Unfitted: the first `channels` unit
    vectors, scale 0.5. Encoding and decoding are the carried class's (`siamese/carried/patch_codec.py`, the file
    a model folder carries for diffusers): this one adds its config, fitting, saving and loading.

    With `decoder` (a `PatchDecoder`, trained on these latents by `siamese.decoder`) `decode` runs it instead of
    the linear inverse (`decode_linear`): non-linear, and its receptive field spans the patch borders, so latent
    errors do not become 8x8 block patterns. `config.learned_decoder` records that the codec has one.
    """

    def __init__(self, config: PatchCodecConfig, decoder: PatchDecoder | None = None) -> None:
        d = 3 * config.patch_size**2
        if not 1 <= config.channels <= d:
            raise ValueError(f"patch codec channels must be between 1 and {d}, got {config.channels}")
        super().__init__(config.patch_size, config.channels)
        self.config = config
        if decoder is not None:
            self.set_decoder(decoder)

    def set_decoder(self, decoder: PatchDecoder | None) -> None:
        """Use `decoder` for decoding from now on (None: back to the linear inverse)."""
        if decoder is not None and (decoder.config.latent_channels != self.config.channels
                                    or decoder.upscale != self.config.patch_size):
            raise ValueError(f"decoder for {decoder.config.latent_channels} channels x{decoder.upscale} does not fit "
                             f"a codec of {self.config.channels} channels and {self.config.patch_size}-pixel patches")
        self.decoder = decoder.requires_grad_(False) if decoder is not None else None
        self.config.learned_decoder = decoder is not None

    @classmethod
    def fit(cls, images: Tensor, config: PatchCodecConfig | None = None) -> PatchCodec:
        """PCA of the patches of images (N, 3, H, W) in [-1, 1] -> a fitted codec (float64 statistics)."""
        codec = cls(config or PatchCodecConfig())
        p = codec.config.patch_size
        patches = F.pixel_unshuffle(images.double(), p).permute(0, 2, 3, 1).reshape(-1, 3 * p * p)
        mean = patches.mean(0)
        cov = torch.cov((patches - mean).T)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        order = eigvals.argsort(descending=True)[: codec.config.channels]
        kept = eigvals[order].clamp_min(0)
        with torch.no_grad():
            codec.mean.copy_(mean.float())
            codec.basis.copy_(eigvecs[:, order].T.float())
            codec.scale.copy_(kept.sqrt().clamp_min(1e-4).float())
        return codec

    def to_dict(self) -> dict:
        return {"type": "patch", **asdict(self.config)}

    def save(self, folder: Path, dtype: torch.dtype | None = None) -> None:
        """codec/codec.safetensors, always float32 (it is tiny and precision matters); the learned decoder,
        if any, in codec/decoder/ (config.json + safetensors, float32 too)."""
        (folder / "codec").mkdir(parents=True, exist_ok=True)
        save_file({k: getattr(self, k).detach().float().cpu().contiguous() for k in self.BUFFERS},
                  folder / "codec" / self.WEIGHTS)
        if self.decoder is not None:
            self.save_decoder(folder / "codec" / "decoder")

    def save_decoder(self, folder: Path) -> None:
        """The learned decoder's config.json + safetensors in `folder`, float32 (0.4 M parameters)."""
        save_module(self.decoder, folder, torch.float32)

    @classmethod
    def load(cls, folder: Path, config: PatchCodecConfig) -> PatchCodec:
        """Read codec/ of a model folder; a missing or damaged file is an error naming it."""
        codec = cls(config)
        path = folder / "codec" / cls.WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the patch codec's statistics (mean, basis, scale) are needed "
                                    "to encode and decode images")
        try:
            weights = load_file(path)
            codec.load_state_dict({k: weights[k] for k in cls.BUFFERS})
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{path} could not be read ({e}); expected float32 tensors {', '.join(cls.BUFFERS)}") from None
        if config.learned_decoder:
            decoder_dir = folder / "codec" / "decoder"
            if not (decoder_dir / "config.json").is_file():
                raise FileNotFoundError(f"{decoder_dir} is missing: siamese_config.json says the codec has a learned decoder")
            codec.set_decoder(PatchDecoder.from_pretrained(decoder_dir, use_safetensors=True))
        return codec


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
        save_module(self.vae, folder / "vae", dtype)


def save_module(module, folder: Path, dtype: torch.dtype | None) -> None:
    """save_pretrained in `dtype` (e.g. float16 for a small download), leaving the module as it was: its weights keep
    their values exactly (a cast there and back would round them to `dtype`)."""
    original = module.dtype
    if dtype is None or dtype == original:
        module.save_pretrained(folder, safe_serialization=True)
        return
    kept = module.state_dict()  # the original tensors: `to` gives the module new ones
    module.to(dtype)
    try:
        module.save_pretrained(folder, safe_serialization=True)
    finally:
        module.to(original)
        module.load_state_dict(kept)


Codec = PatchCodec | VAECodec

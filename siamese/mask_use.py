"""Does the generator use the mask? The evaluation's section 5: its mask branch's noise-prediction error on real
pairs with their own mask, another pair's mask and no control."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data import mask_to_hint
from .model import SiameseModel
from .networks import controlnet_residuals, unet_decode, unet_encode
from .objective import q_sample

__all__ = ["mask_use", "MASK_USE_TIMESTEPS"]

MASK_USE_TIMESTEPS = (300, 500, 700, 900)


@torch.no_grad()
def mask_use(model: SiameseModel, images: np.ndarray, masks: np.ndarray, prompt: str, seed: int = 0,
             batch_size: int = 16, timesteps: Sequence[int] = MASK_USE_TIMESTEPS) -> dict:
    """Does the generator use the mask? Its mask branch predicts the noise of real pairs, images
    (N, R, R, 3) uint8 with masks (N, R, R) {0, 1} at the model resolution, once with each pair's own mask,
    once with the next pair's mask and once without control; mean squared error over `timesteps` (same
    noise for the three). gain_percent = 100 (other - own) / other: 0 when the mask is ignored."""
    if model.controlnet is None:
        raise ValueError("this model has no ControlNet (a base model): nothing uses a mask")
    if len(images) < 2:
        raise ValueError(f"mask use needs at least 2 pairs, got {len(images)}")
    device, dtype = model.device, model.dtype
    gen = torch.Generator("cpu").manual_seed(seed)
    c, s = model.codec.latent_channels, model.latent_size
    noises = torch.randn((len(timesteps), len(images), c, s, s), generator=gen)  # the same whatever the batching
    other = np.roll(masks, 1, axis=0)
    alphas_cumprod = model.alphas_cumprod.to(device)
    totals = {"own": 0.0, "other": 0.0, "none": 0.0}
    for start in range(0, len(images), batch_size):
        sl = slice(start, start + batch_size)
        x = torch.from_numpy(images[sl]).permute(0, 3, 1, 2).to(device, dtype) / 127.5 - 1
        x0 = model.codec.encode(x, gen)
        prompt_embeds = model.encode_prompt([prompt] * len(x0))
        embeds = {k: model.controlnet.embed_hint(torch.stack([mask_to_hint(m) for m in ms[sl]]).to(device, dtype))
                  for k, ms in (("own", masks), ("other", other))}
        for tv, noise in zip(timesteps, noises[:, sl]):
            t = torch.full((len(x0),), int(tv), device=device, dtype=torch.long)
            noise = noise.to(device, dtype)
            x_t = q_sample(x0, t, noise, alphas_cumprod)
            enc = unet_encode(model.unet, x_t, t, prompt_embeds)
            for k in totals:
                control = (controlnet_residuals(model.controlnet, x_t, t, prompt_embeds, embeds[k])
                           if k in embeds else (None, None))
                eps = unet_decode(model.unet, enc, prompt_embeds, *control)
                totals[k] += float((eps.float() - noise.float()).pow(2).sum())
    count = noises.numel()
    mse = {k: v / count for k, v in totals.items()}
    return {**{f"mse_{k}_mask" if k != "none" else "mse_no_control": v for k, v in mse.items()},
            "gain_percent": 100 * (mse["other"] - mse["own"]) / mse["other"], "timesteps": list(timesteps),
            "pairs": int(len(images))}

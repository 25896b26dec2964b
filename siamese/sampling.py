"""Sampling: the Mask-Diffusion branch only (METHOD.md), with text-only classifier-free guidance and, for a model
with a guide, autoguidance (`siamese.guide`).

`sample` is the loop (tensors in, tensors out); `generate` is what the CLI and the app call: one mask,
several images, one recorded seed per image, batching and a progress callback.

Faster than a diffusers ControlNet pipeline with the same weights, for the same images:
- the DHI hint embedding depends on the mask only: it is computed once per image (on both guidance branches,
  which keep the mask, as diffusers' ControlNet forward does, so the numbers are the same), not per step;
- each image's starting noise (and DDIM's eta noise) comes from its own generator, so batching never
  changes an image and any image is reproduced alone from its seed.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from .data import DataError, binarize_mask, mask_to_hint, resize_pair
from .guide import MAX_AUTOGUIDANCE
from .model import SiameseModel
from .networks import controlnet_residuals, unet_decode, unet_encode

logger = logging.getLogger(__name__)

__all__ = ["SCHEDULERS", "make_scheduler", "sample", "controlled_steps", "generate", "Generated", "SamplingParams",
           "random_seed", "validate_request", "prepare_mask", "check_autoguidance"]

SCHEDULERS = ("ddim", "dpm++", "unipc")
MAX_SEED = 2**32 - 1
MAX_IMAGES = 64  # per generate() call (per mask)
MAX_CONTROL_SCALE = 10.0


@dataclass
class SamplingParams:
    """Generation settings; METHOD.md's reference: DDIM, 50 steps, eta 0, guidance 9, control scale 1.

    control_scale multiplies the ControlNet's residuals (diffusers' `controlnet_conditioning_scale`):
    above 1 the mask acts more strongly, 0 ignores it; None: the model's recommended value
    (`SiameseConfig.control_scale`, 1 unless its model card says otherwise). control_end is the fraction of the
    denoising steps, from the noisiest, in which the ControlNet acts (diffusers' `control_guidance_end`): the mask
    decides the layout early, and the later steps draw texture without it; None: the model's recommended value
    (`SiameseConfig.control_end`, 1: every step). autoguidance is the weight w of autoguidance (`siamese.guide`):
    1 is off, above 1 the prediction is pushed away from the model's guide (a weaker version of it) by w - 1;
    None: the model's recommended value (`SiameseConfig.autoguidance`).
    """

    prompt: str | None = None  # None: the model's default prompt
    steps: int = 50
    guidance_scale: float = 9.0
    scheduler: str = "ddim"
    eta: float = 0.0
    control_scale: float | None = None
    control_end: float | None = None
    autoguidance: float | None = None

    def validate(self) -> None:
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be text, got {type(self.prompt).__name__} {self.prompt!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got '{self.scheduler}'")
        if not 1 <= int(self.steps) <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        if not 0.0 <= float(self.guidance_scale) <= 50.0:
            raise ValueError(f"guidance scale must be between 0 and 50, got {self.guidance_scale}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta must be between 0 and 1, got {self.eta}")
        if self.control_scale is not None and not 0.0 <= float(self.control_scale) <= MAX_CONTROL_SCALE:
            raise ValueError(f"control scale must be between 0 and {MAX_CONTROL_SCALE:g}, got {self.control_scale}")
        if self.control_end is not None and not 0.0 < float(self.control_end) <= 1.0:
            raise ValueError(f"control end must be a fraction of the steps, above 0 and at most 1, "
                             f"got {self.control_end}")
        if self.autoguidance is not None and not 1.0 <= float(self.autoguidance) <= MAX_AUTOGUIDANCE:
            raise ValueError(f"autoguidance must be between 1 (off) and {MAX_AUTOGUIDANCE:g}, got {self.autoguidance}")

    def control_scale_for(self, model: SiameseModel) -> float:
        """The control scale used with `model`: this one, or the model's recommended value when None."""
        return model.config.control_scale if self.control_scale is None else float(self.control_scale)

    def control_end_for(self, model: SiameseModel) -> float:
        """The control end used with `model`: this one, or the model's recommended value when None."""
        return model.config.control_end if self.control_end is None else float(self.control_end)

    def autoguidance_for(self, model: SiameseModel) -> float:
        """The autoguidance weight used with `model`: this one, or the model's recommended value when None; a
        weight above 1 for a model without a guide is a ValueError."""
        weight = model.config.autoguidance if self.autoguidance is None else float(self.autoguidance)
        check_autoguidance(model, weight)
        return weight


def check_autoguidance(model: SiameseModel, weight: float) -> None:
    """Autoguidance above 1 needs the model's guide (its folder's guide/)."""
    if weight != 1.0 and model.guide is None:
        raise ValueError(f"autoguidance {weight:g} needs a guide (a weaker version of the model, in its folder's "
                         "guide/), and this model has none: use 1 (off), or add one with `python -m siamese add-guide`")


def controlled_steps(steps: int, control_end: float) -> int:
    """How many of `steps` denoising steps, from the first, the ControlNet acts in: floor(control_end * steps) as
    diffusers' `control_guidance_end` keeps them, but at least one."""
    return max(1, math.floor(control_end * steps + 1e-6))


def describe_mask(control_scale: float, control_end: float) -> str:
    """How the mask acts, in words: "1.5 in every step" or "2 in the first 50% of the steps"."""
    where = "in every step" if control_end >= 1 else f"in the first {control_end:.0%} of the steps"
    return f"{control_scale:g} {where}"


@dataclass
class Generated:
    """One generated pair: image (H, W, 3) uint8 RGB, mask (H, W) uint8 in {0, 255}, and how it was made."""

    image: np.ndarray
    mask: np.ndarray
    seed: int
    params: dict = field(default_factory=dict)


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


def validate_request(num_images: int, seed: int | None, batch_size: int) -> None:
    """The checks of `generate`'s counts, for callers that check before loading a model (the CLI)."""
    if not 1 <= num_images <= MAX_IMAGES:
        raise ValueError(f"number of images must be between 1 and {MAX_IMAGES}, got {num_images}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    if not batch_size >= 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


def make_scheduler(name: str, scheduler_config: dict, eta: float = 0.0):
    """A diffusers sampling scheduler on the model's training schedule."""
    if name == "ddim":
        return DDIMScheduler.from_config(scheduler_config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++",
                                                       solver_order=2)
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(scheduler_config)
    raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got '{name}'")


@torch.no_grad()
def sample(
    model: SiameseModel,
    mask_hint: Tensor,
    prompts: list[str],
    generators: list[torch.Generator],
    steps: int = 50,
    guidance_scale: float = 9.0,
    scheduler: str = "ddim",
    eta: float = 0.0,
    callback: Callable[[int, int], None] | None = None,
    control_scale: float = 1.0,
    control_end: float = 1.0,
    autoguidance: float = 1.0,
) -> Tensor:
    """Mask-Diffusion sampling. mask_hint: (B, 3, H, W) in {0, 1}; one prompt and one generator per image.

    Guidance: eps = eps_uncond + g (eps_cond - eps_uncond), where the unconditional branch keeps the mask
    and has the empty prompt; the ControlNet's residuals are multiplied by `control_scale` in both. The ControlNet
    runs in the first `controlled_steps(steps, control_end)` steps only (not at all in the others). With
    `autoguidance` w > 1, eps += (w - 1) (eps_cond - eps_guide), eps_guide the model's guide's conditional
    prediction (same prompt, mask and control scale; its UNet encoding is the model's when they share it).
    Returns images (B, 3, H, W) in [0, 1], float32 on the model's device.
    `callback(step, steps)` is called after every denoising step.
    """
    if model.controlnet is None:
        raise ValueError("this model has no ControlNet (a base model): train it with the siamese objective first")
    B = mask_hint.shape[0]
    if not len(prompts) == len(generators) == B:
        raise ValueError(f"need one prompt and one generator per mask: {B} masks, {len(prompts)} prompts, "
                         f"{len(generators)} generators")
    check_autoguidance(model, autoguidance)
    device, dtype = model.device, model.dtype
    sched = make_scheduler(scheduler, model.scheduler_config)
    sched.set_timesteps(steps, device=device)
    guided = guidance_scale > 1.0
    guide = model.guide if autoguidance != 1.0 else None
    controlled = controlled_steps(len(sched.timesteps), control_end)

    # 1. conditions, computed once: hint embedding (B or 2B, C0, h, w), prompt embeddings (B or 2B, L, D). The DHI
    #    runs on the batch the ControlNet sees (with guidance both halves keep the mask), as diffusers' ControlNet
    #    forward does: a diffusers pipeline with these weights then makes the same pixels (siamese.pipeline)
    hint = mask_hint.to(device, dtype)
    prompt_embeds = model.encode_prompt(list(prompts))
    if guided:
        prompt_embeds = torch.cat([model.encode_prompt([""] * B), prompt_embeds])
        hint = torch.cat([hint, hint])
    hint_emb = model.controlnet.embed_hint(hint)
    cond = slice(B, 2 * B) if guided else slice(0, B)  # the conditional half of the batch
    guide_hint_emb = (guide.controlnet.embed_hint(hint[cond])
                      if guide is not None and guide.controlnet is not None else None)

    # 2. starting noise, one generator per image
    c, s = model.codec.latent_channels, model.latent_size
    latents = randn_tensor((B, c, s, s), generator=generators, device=device, dtype=dtype)
    latents = latents * sched.init_noise_sigma

    # 3. denoising loop
    for i, t in enumerate(sched.timesteps):
        x = torch.cat([latents, latents]) if guided else latents
        x = sched.scale_model_input(x, t)
        tt = t.expand(x.shape[0]).to(device)
        down, mid = (controlnet_residuals(model.controlnet, x, tt, prompt_embeds, hint_emb, control_scale)
                     if i < controlled else (None, None))
        enc = unet_encode(model.unet, x, tt, prompt_embeds)
        eps = unet_decode(model.unet, enc, prompt_embeds, down, mid)
        eps_cond = eps[cond]
        if guided:
            eps = eps[:B] + guidance_scale * (eps_cond - eps[:B])
        if guide is not None:
            eps = eps + (autoguidance - 1.0) * (eps_cond - _guide_eps(guide, x[cond], tt[cond], prompt_embeds[cond],
                                                                      enc, cond, down, mid, guide_hint_emb,
                                                                      control_scale))
        kwargs = {}
        if scheduler == "ddim":
            kwargs["eta"] = eta
            if eta > 0:
                kwargs["variance_noise"] = randn_tensor(latents.shape, generator=generators, device=device,
                                                        dtype=dtype)
        latents = sched.step(eps, t, latents, **kwargs).prev_sample
        if callback is not None:
            callback(i + 1, len(sched.timesteps))

    # 4. decode
    return (model.codec.decode(latents).float() / 2 + 0.5).clamp(0, 1)


def _guide_eps(guide, x: Tensor, t: Tensor, prompt_embeds: Tensor, enc, cond: slice, down, mid,
               hint_emb: Tensor | None, control_scale: float) -> Tensor:
    """The guide's conditional noise prediction (B, C, h, w), reusing what it shares with the model: the UNet
    encoding (`enc`, of the whole batch) and, when it has no ControlNet of its own, the residuals (`down`, `mid`)."""
    genc = enc.select(cond) if guide.shares_encoder else unet_encode(guide.unet, x, t, prompt_embeds)
    if down is None:
        gdown, gmid = None, None
    elif guide.controlnet is None:
        gdown, gmid = [d[cond] for d in down], mid[cond]
    else:
        gdown, gmid = controlnet_residuals(guide.controlnet, x, t, prompt_embeds, hint_emb, control_scale)
    return unet_decode(guide.unet, genc, prompt_embeds, gdown, gmid)


def prepare_mask(model: SiameseModel, mask: np.ndarray) -> np.ndarray:
    """Any mask array -> (R, R) {0, 1} at the model resolution; refuses empty and full masks."""
    binary = binarize_mask(mask)
    _, binary = resize_pair(None, binary, model.config.resolution)
    fraction = float(binary.mean())
    if fraction == 0.0:
        raise DataError("the mask is empty: draw or upload a mask with a white (foreground) region")
    if fraction == 1.0:
        raise DataError("the mask is all white: it needs some background (black) too")
    return binary


def generate(
    model: SiameseModel,
    mask: np.ndarray,
    num_images: int = 1,
    seed: int | None = None,
    params: SamplingParams | None = None,
    batch_size: int = 4,
    callback: Callable[[int, int], None] | None = None,
    source: str = "",
) -> list[Generated]:
    """Images from one mask (any array `binarize_mask` accepts). Image i has seed `seed + i`.

    `callback(done_steps, total_steps)` counts denoising steps over all batches.
    """
    params = params or SamplingParams()
    params.validate()
    validate_request(num_images, seed, batch_size)
    base = random_seed() if seed is None else int(seed)
    binary = prepare_mask(model, mask)
    prompt = model.config.prompt if params.prompt is None else params.prompt
    control_scale, control_end = params.control_scale_for(model), params.control_end_for(model)
    autoguidance = params.autoguidance_for(model)
    hint = mask_to_hint(binary)
    seeds = [(base + i) % (MAX_SEED + 1) for i in range(num_images)]
    total = len(seeds) * params.steps
    identity = model.identity()
    out: list[Generated] = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]
        step_cb = None
        if callback is not None:
            done = start * params.steps
            step_cb = lambda i, n, done=done, k=len(chunk): callback(done + i * k, total)  # noqa: E731
        images = sample(model, hint.expand(len(chunk), -1, -1, -1), [prompt] * len(chunk), gens, params.steps,
                        params.guidance_scale, params.scheduler, params.eta, step_cb, control_scale,
                        control_end, autoguidance)
        for s, img in zip(chunk, images):
            arr = (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            meta = {"prompt": prompt, "steps": params.steps, "guidance_scale": params.guidance_scale,
                    "scheduler": params.scheduler, "eta": params.eta, "control_scale": control_scale,
                    "control_end": control_end, "autoguidance": autoguidance, "seed": s,
                    "resolution": model.config.resolution, "model": identity}
            if source:
                meta["source_mask"] = source
            out.append(Generated(arr, binary * 255, s, meta))
    logger.info("generated %d images (%s, %d steps)", len(out), params.scheduler, params.steps)
    return out

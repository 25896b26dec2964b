"""Sampling: the Mask-Diffusion branch only (METHOD.md), with text-only classifier-free guidance and, for a model
with a guide, autoguidance (`siamese.guide`).

`sample` is the loop (tensors in, tensors out); `generate` is what the CLI and the app call: one mask,
several images, one recorded seed per image, batching and a progress callback.

Faster than a diffusers ControlNet pipeline with the same weights, for the same images:
- the DHI hint embedding depends on the mask only: it is computed once per image, not per step, and shared by
  both guidance branches (which keep the mask, as diffusers' ControlNet forward does, so the numbers are the same);
- each image's starting noise (and DDIM's eta noise) comes from its own generator, so batching never
  changes an image and any image is reproduced alone from its seed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from .carried.pipeline_siamese import blend_known, to_uint8
from .codec import VAECodec
from .data import DataError, binarize_mask, mask_to_hint, resize_pair
from .deepcache import controlnet_residuals_shallow, decode_deep, decode_last, encode_shallow
from . import inpaint
from .inpaint import (DEFAULT_MARGIN, Frame, check_aspect, check_inside, check_margin, composite, full_size_mask,
                      harmonize_colors, latent_region, lesion_region, paste, prepare_frame)
from .model import SiameseModel
from .networks import controlnet_residuals, unet_decode, unet_encode
from .params import (MAX_CONTROL_SCALE, MAX_IMAGES, MAX_SEED, SCHEDULERS, Generated, SamplingParams,
                     check_autoguidance, check_speed_settings, controlled_steps, describe_mask, random_seed,
                     validate_request)

logger = logging.getLogger(__name__)

# the settings and the generated pair are defined in `siamese.params` (below the model), and are part of this
# module's API as they always were
__all__ = ["SCHEDULERS", "make_scheduler", "sample", "controlled_steps", "generate", "Generated", "SamplingParams",
           "random_seed", "validate_request", "prepare_mask", "check_autoguidance", "describe_mask", "MAX_SEED",
           "MAX_IMAGES", "MAX_CONTROL_SCALE", "encode_frames"]


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
    cache_interval: int = 1,
    precision: str = "float32",
    frame_latents: Tensor | None = None,
    region: Tensor | None = None,
) -> Tensor:
    """Mask-Diffusion sampling. mask_hint: (B, 3, H, W) in {0, 1}; one prompt and one generator per image.

    Guidance: eps = eps_uncond + g (eps_cond - eps_uncond), where the unconditional branch keeps the mask
    and has the empty prompt; the ControlNet's residuals are multiplied by `control_scale` in both. The ControlNet
    runs in the first `controlled_steps(steps, control_end)` steps only (not at all in the others). With
    `autoguidance` w > 1, eps += (w - 1) (eps_cond - eps_guide), eps_guide the model's guide's conditional
    prediction (same prompt, mask and control scale; its UNet encoding is the model's when they share it).
    `cache_interval` k > 1 reuses the networks' deep features for k - 1 steps after each step that computes them
    (DeepCache; 1: every step computes every block); `precision` "bfloat16" runs the networks and the codec under
    bfloat16 autocast ("float32": as the model is). Returns images (B, 3, H, W) in [0, 1], float32 on the model's
    device. `callback(step, steps)` is called after every denoising step.

    Blended sampling (inpainting, `siamese.inpaint`): with `frame_latents` (B, C, h, w), a frame's clean latents
    (`encode_frames`), and `region` (B, 1, h, w) in [0, 1], after every step (and at the start) the latents are
    region * latents + (1 - region) * the frame's latents noised to the next step's level with the starting noise
    (the scheduler's `add_noise`; the clean latents after the last step): the model generates inside the region
    only, with the mask as control as without a frame.
    """
    if model.controlnet is None:
        raise ValueError("this model has no ControlNet (a base model): train it with the siamese objective first")
    B = mask_hint.shape[0]
    if not len(prompts) == len(generators) == B:
        raise ValueError(f"need one prompt and one generator per mask: {B} masks, {len(prompts)} prompts, "
                         f"{len(generators)} generators")
    check_autoguidance(model, autoguidance)
    check_speed_settings(cache_interval, precision)
    device, dtype = model.device, model.dtype
    if (frame_latents is None) != (region is None):
        raise ValueError("blended sampling needs both the frame's latents and the region")
    sched = make_scheduler(scheduler, model.scheduler_config)
    sched.set_timesteps(steps, device=device)
    guided = guidance_scale > 1.0
    guide = model.guide if autoguidance != 1.0 else None
    controlled = controlled_steps(len(sched.timesteps), control_end)

    # 1. conditions, computed once: hint embedding (B or 2B, C0, h, w), prompt embeddings (B or 2B, L, D). The DHI
    #    runs on the batch the ControlNet sees (with guidance both halves keep the mask), as diffusers' ControlNet
    #    forward does: a diffusers pipeline with these weights then makes the same pixels (siamese.pipeline). On B
    #    masks repeated it would be a little faster, but with several threads a batch of B and one of 2B round
    #    differently (1 grey level in the pipeline's images)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext()
    # the full-resolution convolutions (the DHI, the decoder) run about 1.3x faster on the CPU on channels-last input
    hint = mask_hint.to(device, dtype).contiguous(memory_format=torch.channels_last)
    prompt_embeds = model.encode_prompt(list(prompts))
    with amp:
        hint_emb = model.controlnet.embed_hint(torch.cat([hint, hint]) if guided else hint)
        guide_hint_emb = (guide.controlnet.embed_hint(hint)
                          if guide is not None and guide.controlnet is not None else None)
    if guided:
        prompt_embeds = torch.cat([model.encode_prompt([""] * B), prompt_embeds])
    cond = slice(B, 2 * B) if guided else slice(0, B)  # the conditional half of the batch

    # 2. starting noise, one generator per image
    c, s = model.codec.latent_channels, model.latent_size
    noise = randn_tensor((B, c, s, s), generator=generators, device=device, dtype=dtype)
    latents = noise * sched.init_noise_sigma
    if frame_latents is not None:  # the frame outside the region, at the first step's noise level
        known, region = frame_latents.to(device, dtype), region.to(device, dtype)
        if known.shape != latents.shape or region.shape != (B, 1, s, s):
            raise ValueError(f"frame latents {tuple(known.shape)} and region {tuple(region.shape)} must be "
                             f"{(B, c, s, s)} and {(B, 1, s, s)}")
        latents = blend_known(latents, known, noise, region, sched, sched.timesteps[0])

    # 3. denoising loop. With feature reuse (cache_interval k > 1) every k-th step is a refresh step, which runs the
    #    networks whole and keeps their deep features; the steps between run their first level alone
    #    (siamese.deepcache).
    #    A change of control (control_end) refreshes: the kept features were made with or without the mask.
    predict = Denoiser(model, guide, prompt_embeds, hint_emb, guide_hint_emb, cond, control_scale, cache_interval > 1)
    age, kept_control = cache_interval, None  # steps since the last refresh; whether it ran the ControlNet
    for i, t in enumerate(sched.timesteps):
        x = torch.cat([latents, latents]) if guided else latents
        x = sched.scale_model_input(x, t)
        tt = t.expand(x.shape[0]).to(device)
        control = i < controlled
        refresh = age >= cache_interval or control != kept_control
        with amp:
            eps, eps_guide = predict.full(x, tt, control) if refresh else predict.cached(x, tt, control)
        age, kept_control = (1, control) if refresh else (age + 1, kept_control)
        eps = eps.to(dtype)
        eps_cond = eps[cond]
        if guided:
            eps = eps[:B] + guidance_scale * (eps_cond - eps[:B])
        if eps_guide is not None:
            eps = eps + (autoguidance - 1.0) * (eps_cond - eps_guide.to(dtype))
        kwargs = {}
        if scheduler == "ddim":
            kwargs["eta"] = eta
            if eta > 0:
                kwargs["variance_noise"] = randn_tensor(latents.shape, generator=generators, device=device,
                                                        dtype=dtype)
        latents = sched.step(eps, t, latents, **kwargs).prev_sample
        if frame_latents is not None:
            latents = blend_known(latents, known, noise, region, sched,
                                  sched.timesteps[i + 1] if i + 1 < len(sched.timesteps) else None)
        if callback is not None:
            callback(i + 1, len(sched.timesteps))

    # 4. decode
    with amp:
        images = model.codec.decode(latents.contiguous(memory_format=torch.channels_last))
    return (images.float() / 2 + 0.5).clamp(0, 1).contiguous()


class Denoiser:
    """The networks' noise predictions in one denoising step: the model's on the guidance batch x (2B or B) and,
    with autoguidance, the guide's on its conditional half, reusing what the guide shares with the model (the UNet
    encoding; the ControlNet's residuals when it has no ControlNet of its own). With `keep`, `full` keeps each
    UNet's deep features (the input of its last up block) and `cached` runs the first level alone with them."""

    def __init__(self, model: SiameseModel, guide, prompt_embeds: Tensor, hint_emb: Tensor,
                 guide_hint_emb: Tensor | None, cond: slice, control_scale: float, keep: bool) -> None:
        self.model, self.guide, self.cond, self.scale, self.keep = model, guide, cond, control_scale, keep
        self.prompt_embeds, self.hint_emb, self.guide_hint_emb = prompt_embeds, hint_emb, guide_hint_emb
        self.deep: dict[str, Tensor] = {}  # "model" / "guide" -> the kept input of the last up block

    def full(self, x: Tensor, t: Tensor, control: bool) -> tuple[Tensor, Tensor | None]:
        """Every block: (the model's prediction (2B or B, C, h, w), the guide's on the conditional half or None)."""
        model, guide, c, pe = self.model, self.guide, self.cond, self.prompt_embeds
        down, mid = (controlnet_residuals(model.controlnet, x, t, pe, self.hint_emb, self.scale) if control
                     else (None, None))
        enc = unet_encode(model.unet, x, t, pe)
        eps = self._decode("model", model.unet, enc, pe, down, mid)
        if guide is None:
            return eps, None
        genc = enc.select(c) if guide.shares_encoder else unet_encode(guide.unet, x[c], t[c], pe[c])
        if down is None:
            gdown, gmid = None, None
        elif guide.controlnet is None:
            gdown, gmid = [d[c] for d in down], mid[c]
        else:
            gdown, gmid = controlnet_residuals(guide.controlnet, x[c], t[c], pe[c], self.guide_hint_emb, self.scale)
        return eps, self._decode("guide", guide.unet, genc, pe[c], gdown, gmid)

    def _decode(self, key: str, unet, enc, prompt_embeds: Tensor, down, mid) -> Tensor:
        if not self.keep:
            return unet_decode(unet, enc, prompt_embeds, down, mid)
        self.deep[key], skips = decode_deep(unet, enc, prompt_embeds, down, mid)
        return decode_last(unet, self.deep[key], skips, enc.emb, prompt_embeds)

    def cached(self, x: Tensor, t: Tensor, control: bool) -> tuple[Tensor, Tensor | None]:
        """The first level of each network, with the deep features kept by the last `full` step."""
        model, guide, c, pe = self.model, self.guide, self.cond, self.prompt_embeds
        emb, skips = encode_shallow(model.unet, x, t, pe)
        down = (controlnet_residuals_shallow(model.controlnet, x, t, pe, self.hint_emb, self.scale) if control
                else None)
        eps = decode_last(model.unet, self.deep["model"], _add(skips, down), emb, pe)
        if guide is None:
            return eps, None
        gemb, gskips = ((emb[c], [s[c] for s in skips]) if guide.shares_encoder
                        else encode_shallow(guide.unet, x[c], t[c], pe[c]))
        if down is None:
            gdown = None
        elif guide.controlnet is None:
            gdown = [d[c] for d in down]
        else:
            gdown = controlnet_residuals_shallow(guide.controlnet, x[c], t[c], pe[c], self.guide_hint_emb, self.scale)
        return eps, decode_last(guide.unet, self.deep["guide"], _add(gskips, gdown), gemb, pe[c])


def _add(skips: list[Tensor], residuals: list[Tensor] | None) -> list[Tensor]:
    return skips if residuals is None else [s + r for s, r in zip(skips, residuals)]


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


def encode_frames(model: SiameseModel, images: np.ndarray) -> Tensor:
    """Frames (B, R, R, 3) uint8 -> their clean latents (B, C, h, w) in the model's dtype, on its device: the patch
    codec's encoding or the VAE's posterior mean (the carried pipeline's `frame_latents`)."""
    codec = model.codec
    if isinstance(codec, VAECodec):
        return inpaint.frame_latents(images, model.device, model.dtype, vae=codec.vae)
    return inpaint.frame_latents(images, model.device, model.dtype, codec=codec)


def _frames_for(model: SiameseModel, frame, frame_mask, count: int) -> list[Frame]:
    """`generate`'s frame argument -> one `Frame` per image."""
    if isinstance(frame, Frame):
        frames = [frame] * count
    elif isinstance(frame, (list, tuple)):
        frames = list(frame)
        if len(frames) != count or not all(isinstance(f, Frame) for f in frames):
            raise ValueError(f"frame: expected one frame, or a list of {count} Frames (one per image)")
    else:
        frames = [prepare_frame(frame, model.config.resolution, frame_mask)] * count
        frame_mask = None
    if frame_mask is not None:
        raise ValueError("frame_mask: a Frame carries its own mask (give the frame as an image to give its mask)")
    return frames


def generate(
    model: SiameseModel,
    mask: np.ndarray,
    num_images: int = 1,
    seed: int | None = None,
    params: SamplingParams | None = None,
    batch_size: int = 4,
    callback: Callable[[int, int], None] | None = None,
    source: str = "",
    frame: np.ndarray | Frame | list[Frame] | None = None,
    frame_mask: np.ndarray | None = None,
    margin: int = DEFAULT_MARGIN,
    clear_frame_lesions: bool = False,
    harmonize: bool = False,
) -> list[Generated]:
    """Images from one mask (any array `binarize_mask` accepts). Image i has seed `seed + i`.

    `callback(done_steps, total_steps)` counts denoising steps over all batches.

    Inpainting: with `frame` (an (H, W, 3) uint8 RGB image of the mask's aspect, a `siamese.inpaint.Frame`, or a
    list of Frames, one per image) the lesion is painted into the frame: blended sampling inside its region (the
    mask dilated by `margin` pixels at the model resolution, `siamese.inpaint`), with `harmonize` the sample's
    colours matched to the frame's in a ring inside the region's edge (`inpaint.harmonize_colors`; off by default:
    it lowered the seam measure but cost realism, docs in the model card), and a pixel
    composite with a feathered edge at the frame's own size (`inpaint.paste`) that keeps every pixel outside the
    region exactly the frame's: the image and the pair's mask have the frame's size (a Frame kept at the model
    resolution only: that resolution). `frame_mask` is the frame's own lesion (None: unknown; with a Frame, its
    `mask`): the pair's mask is the union of it and the new lesion (the mask as given, brought to the frame's size
    by nearest neighbour). With `clear_frame_lesions` the frame's own lesion is painted away first (the same
    blended sampling inside its region, with an empty mask as control) and the pair's mask is the new lesion alone.
    Each image's params record the frame's name, "frame_mask" ("known" or "unknown"), both lesions' areas
    (fractions of the image at the model resolution), the margin, clear_frame_lesions and harmonize.
    """
    params = params or SamplingParams()
    params.validate()
    validate_request(num_images, seed, batch_size)
    base = random_seed() if seed is None else int(seed)
    binary = prepare_mask(model, mask)
    frames = None
    if frame is not None:
        check_margin(margin, model.config.resolution)
        for name, flag in (("clear_frame_lesions", clear_frame_lesions), ("harmonize", harmonize)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        frames = _frames_for(model, frame, frame_mask, num_images)
        for one in {id(f): f for f in frames}.values():  # each distinct frame once
            check_aspect(np.asarray(mask).shape, one.size)
            check_inside(binary, one)
        if any(f.mask is None for f in frames):
            logger.warning("a frame without its mask: its own lesion stays unlabelled in the pair (frame_mask: "
                           "unknown)")
    elif frame_mask is not None:
        raise ValueError("frame_mask: the mask of a frame, given without a frame")
    prompt = model.config.prompt if params.prompt is None else params.prompt
    control_scale, control_end = params.control_scale_for(model), params.control_end_for(model)
    autoguidance = params.autoguidance_for(model)
    hint = mask_to_hint(binary)
    seeds = [(base + i) % (MAX_SEED + 1) for i in range(num_images)]
    clearing = [clear_frame_lesions and f.mask is not None and bool(f.mask.any()) for f in frames or []]
    total = (len(seeds) + sum(clearing)) * params.steps
    identity = model.identity()
    run = (params.steps, params.guidance_scale, params.scheduler, params.eta)
    speed = (control_scale, control_end, autoguidance, params.cache_interval, params.precision)
    new_region = lesion_region(binary, margin) if frames is not None else None
    done = 0
    out: list[Generated] = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]

        def step_cb(k: int):
            if callback is None:
                return None
            return lambda i, n, done=done, k=k: callback(done + i * k, total)

        if frames is None:
            gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]
            images = to_uint8(sample(model, hint.expand(len(chunk), -1, -1, -1), [prompt] * len(chunk), gens, *run,
                                     step_cb(len(chunk)), *speed))
            done += len(chunk) * params.steps
        else:
            fr = frames[start:start + len(chunk)]
            canvas = np.stack([f.image for f in fr])
            read = {id(f): f.original() for f in fr}  # each distinct frame at its own size, once
            originals = [read[id(f)] for f in fr]
            fulls = [None if o is None else o[0] for o in originals]  # paste returns new arrays
            sub = [j for j in range(len(chunk)) if clearing[start + j]]
            if sub:  # 1. the frames' own lesions painted away: an empty control inside their regions
                regions = [lesion_region(fr[j].mask, margin) for j in sub]
                gens = [torch.Generator("cpu").manual_seed(chunk[j]) for j in sub]
                zero = torch.zeros_like(hint).expand(len(sub), -1, -1, -1)
                latent = torch.from_numpy(np.stack([latent_region(r, model.codec.downscale) for r, _ in regions]))
                cleared = to_uint8(sample(model, zero, [prompt] * len(sub), gens, *run, step_cb(len(sub)), *speed,
                                          frame_latents=encode_frames(model, canvas[sub]), region=latent[:, None]))
                done += len(sub) * params.steps
                for j, (_, alpha), img in zip(sub, regions, cleared):
                    if harmonize:
                        img = harmonize_colors(canvas[j], img, fr[j].mask, margin)
                    canvas[j] = composite(canvas[j], img, alpha)
                    if fulls[j] is not None:
                        fulls[j] = paste(fulls[j], img, alpha)
            # 2. the new lesion, inside its region
            gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]
            latent = torch.from_numpy(latent_region(new_region[0], model.codec.downscale))
            painted = to_uint8(sample(model, hint.expand(len(chunk), -1, -1, -1), [prompt] * len(chunk), gens, *run,
                                      step_cb(len(chunk)), *speed, frame_latents=encode_frames(model, canvas),
                                      region=latent[None, None].expand(len(chunk), -1, -1, -1)))
            done += len(chunk) * params.steps
            if harmonize:
                painted = [harmonize_colors(c, img, binary, margin) for c, img in zip(canvas, painted)]
            images = [composite(c, img, new_region[1]) if full is None else paste(full, img, new_region[1])
                      for c, img, full in zip(canvas, painted, fulls)]
        for j, (s, arr) in enumerate(zip(chunk, images)):
            meta = {"prompt": prompt, "steps": params.steps, "guidance_scale": params.guidance_scale,
                    "scheduler": params.scheduler, "eta": params.eta, "control_scale": control_scale,
                    "control_end": control_end, "autoguidance": autoguidance,
                    "cache_interval": params.cache_interval, "precision": params.precision, "seed": s,
                    "resolution": model.config.resolution, "model": identity}
            if source:
                meta["source_mask"] = source
            pair_mask = binary
            if frames is not None:
                f = frames[start + j]
                known = f.mask is not None
                meta.update({"frame": f.name, "frame_mask": "known" if known else "unknown",
                             "frame_lesion_area": round(float(f.mask.mean()), 6) if known else None,
                             "new_lesion_area": round(float(binary.mean()), 6), "margin": int(margin),
                             "clear_frame_lesions": bool(clear_frame_lesions), "harmonize": bool(harmonize)})
                own = f.mask
                if originals[j] is not None:  # the pair at the frame's size
                    pair_mask = full_size_mask(mask, f.size)
                    own = originals[j][1]
                    if own is None and known:  # a Frame given with its mask at the model resolution only
                        own = full_size_mask(f.mask, f.size)
                if known and not clear_frame_lesions:
                    pair_mask = np.maximum(pair_mask, own)
            out.append(Generated(arr, pair_mask * 255, s, meta))
    logger.info("generated %d images (%s, %d steps%s)", len(out), params.scheduler, params.steps,
                ", painted into frames" if frames is not None else "")
    return out

"""Sampling benchmark: our sampler against the diffusers ControlNet pipeline's loop, same images.

The baseline is the loop of `StableDiffusionControlNetPipeline.__call__` written out with the model's
codec (the tiny preset has a patch codec, not a VAE): the stock `ControlNetModel.forward` with the hint
as input, so the DHI runs in every step, and the stock `UNet2DConditionModel.forward`, on the
classifier-free-guidance batch [uncond, cond] where the unconditional half keeps the mask and has the
empty prompt; same scheduler, steps, guidance, and starting noise from the same per-image generators.
`pipeline_sample` runs the real pipeline (with a tiny AutoencoderKL that is never used: it returns
latents, decoded by the model's codec) as a second baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from siamese.batch import run_batch
from siamese.model import SiameseModel
from siamese.params import SamplingParams
from siamese.sampling import generate, make_scheduler, sample

from .timing import interleaved
from .workload import PROMPT, mask_hints

__all__ = ["SETTINGS", "diffusers_loop_sample", "pipeline_sample", "compare_samplers", "images_per_second",
           "compare_memory_formats", "compare_presets", "batch_images_per_hour"]

# Today's sampler, the app's settings before presets (issue 27; `siamese.presets.FALLBACK_PRESETS["default"]`):
# DPM-Solver++ 2M, 16 steps, guidance 9.0, every block in every step, float32, batches of 4; the app's control
# scale and autoguidance are the model's recommended ones (bench/run.py adds them). The app's defaults now are the
# model's "default" preset (`compare_presets`)
SETTINGS = dict(scheduler="dpm++", steps=16, guidance_scale=9.0)


def _generators(n: int, seed: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


@torch.no_grad()
def diffusers_loop_sample(
    model: SiameseModel, mask_hint: Tensor, prompts: list[str], generators: list[torch.Generator],
    steps: int, guidance_scale: float, scheduler: str, eta: float = 0.0, control_scale: float = 1.0,
    control_end: float = 1.0,
) -> Tensor:
    """The pipeline's denoising loop with stock forwards. Returns images (B, 3, H, W) in [0, 1]. After
    `control_end` of the steps the ControlNet runs at scale 0, as diffusers' `control_guidance_end` does."""
    device, dtype = model.device, model.dtype
    sched = make_scheduler(scheduler, model.scheduler_config)
    sched.set_timesteps(steps, device=device)
    B = mask_hint.shape[0]
    guided = guidance_scale > 1.0
    # 1. prompts ([uncond, cond]) and control image, the mask in both halves (pipeline: torch.cat([image] * 2))
    prompt_embeds = model.encode_prompt(list(prompts))
    control = mask_hint.to(device, dtype)
    if guided:
        prompt_embeds = torch.cat([model.encode_prompt([""] * B), prompt_embeds])
        control = torch.cat([control, control])
    # 2. starting noise (pipeline.prepare_latents)
    c, s = model.codec.latent_channels, model.latent_size
    latents = randn_tensor((B, c, s, s), generator=generators, device=device, dtype=dtype) * sched.init_noise_sigma
    extra = {"eta": eta} if scheduler == "ddim" else {}
    # 3. denoising loop
    n = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        x = torch.cat([latents, latents]) if guided else latents
        x = sched.scale_model_input(x, t)
        keep = float((i + 1) / n <= control_end)  # the pipeline's controlnet_keep
        down, mid = model.controlnet(x, t, encoder_hidden_states=prompt_embeds, controlnet_cond=control,
                                     conditioning_scale=control_scale * keep, return_dict=False)
        eps = model.unet(x, t, encoder_hidden_states=prompt_embeds, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]
        if guided:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        latents = sched.step(eps, t, latents, **extra).prev_sample
    # 4. decode
    return (model.codec.decode(latents).float() / 2 + 0.5).clamp(0, 1)


def build_pipeline(model: SiameseModel, scheduler: str):
    """diffusers' StableDiffusionControlNetPipeline on the model's networks (a tiny unused VAE)."""
    from diffusers import AutoencoderKL, StableDiffusionControlNetPipeline

    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
        latent_channels=model.codec.latent_channels,
    ).to(model.device, model.dtype)
    if 2 ** (len(vae.config.block_out_channels) - 1) != model.codec.downscale:
        raise ValueError(f"codec downscale {model.codec.downscale} != 8: cannot mirror it with a VAE")
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        controlnet=model.controlnet, scheduler=make_scheduler(scheduler, model.scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def pipeline_sample(pipe, model: SiameseModel, mask_hint: Tensor, prompts: list[str],
                    generators: list[torch.Generator], steps: int, guidance_scale: float,
                    control_scale: float = 1.0, control_end: float = 1.0) -> Tensor:
    R = model.config.resolution
    latents = pipe(prompt=list(prompts), image=mask_hint.to(model.device, model.dtype), height=R, width=R,
                   num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                   controlnet_conditioning_scale=control_scale, control_guidance_end=control_end,
                   output_type="latent").images
    return (model.codec.decode(latents).float() / 2 + 0.5).clamp(0, 1)


def compare_samplers(
    model: SiameseModel, batch: int, repeats: int, settings: dict = SETTINGS, with_pipeline: bool = False,
    seed: int = 0, log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Images per second of ours and of the baseline(s), interleaved; the largest pixel difference."""
    R, device = model.config.resolution, model.device
    hint = mask_hints(batch, R, seed).to(device, model.dtype)
    prompts = [PROMPT] * batch
    runs: dict[str, Callable[[], Tensor]] = {
        "ours": lambda: sample(model, hint, prompts, _generators(batch, seed), **settings),
        "diffusers_loop": lambda: diffusers_loop_sample(model, hint, prompts, _generators(batch, seed), **settings),
    }
    if with_pipeline:
        pipe = build_pipeline(model, settings["scheduler"])
        runs["diffusers_pipeline"] = lambda: pipeline_sample(pipe, model, hint, prompts, _generators(batch, seed),
                                                             settings["steps"], settings["guidance_scale"],
                                                             settings.get("control_scale", 1.0),
                                                             settings.get("control_end", 1.0))
    log(f"  warm-up {', '.join(runs)} (and image comparison)")
    images = {name: run() for name, run in runs.items()}
    log(f"  timing interleaved, {repeats} repeats")
    timings = interleaved(runs, repeats, device)
    out = {
        "batch": batch, "resolution": R, **settings, "repeats": repeats,
        "seconds": {name: round(timings.median(name), 4) for name in runs},
        "images_per_second": {name: round(batch / timings.median(name), 4) for name in runs},
        "speedup": round(timings.ratio("diffusers_loop", "ours"), 3),
        "speedup_cpu_time": round(timings.ratio("diffusers_loop", "ours", "cpu"), 3),
        "max_pixel_diff": float((images["ours"] - images["diffusers_loop"]).abs().max()),
        "timings": timings.summary(),
    }
    if with_pipeline:
        out["speedup_vs_pipeline"] = round(timings.ratio("diffusers_pipeline", "ours"), 3)
        out["max_pixel_diff_vs_pipeline"] = float((images["ours"] - images["diffusers_pipeline"]).abs().max())
    return out


def images_per_second(model: SiameseModel, batch: int, repeats: int, settings: dict = SETTINGS, seed: int = 0,
                      warm: bool = True) -> dict:
    """Our sampler alone at one batch size (after one warm-up call unless `warm` is False)."""
    R, device = model.config.resolution, model.device
    hint = mask_hints(batch, R, seed).to(device, model.dtype)
    run = lambda: sample(model, hint, [PROMPT] * batch, _generators(batch, seed), **settings)  # noqa: E731
    if warm:
        run()
    timings = interleaved({"ours": run}, repeats, device)
    seconds = timings.median("ours")
    return {"batch": batch, "seconds": round(seconds, 4), "images_per_second": round(batch / seconds, 4),
            "seconds_per_image": round(seconds / batch, 4), "wall_s": timings.wall["ours"]}


def autoguidance_cost(model: SiameseModel, batch: int, repeats: int, settings: dict, weight: float,
                      seed: int = 0) -> dict:
    """Our sampler with the model's autoguidance `weight` and without (1), interleaved: what the guide costs."""
    hint = mask_hints(batch, model.config.resolution, seed).to(model.device, model.dtype)
    runs = {name: (lambda w=w: sample(model, hint, [PROMPT] * batch, _generators(batch, seed),
                                      **{**settings, "autoguidance": w}))
            for name, w in (("without", 1.0), ("with", weight))}
    for run in runs.values():
        run()
    t = interleaved(runs, repeats, model.device)
    return {"batch": batch, "autoguidance": weight, "ratio": round(t.ratio("with", "without"), 3),
            **{f"seconds_per_image_{k}": round(t.median(k) / batch, 4) for k in runs},
            "seconds_with": round(t.median("with"), 4), "wall_s": t.wall["with"]}


def frame_mode_cost(model: SiameseModel, batch: int, repeats: int, settings: dict, seed: int = 0,
                    size: tuple[int, int] = (530, 622)) -> dict:
    """`generate` painting into a frame of `size` (H, W: a Kvasir-SEG frame's, so that the full-size composite
    counts) against `generate` making whole images, from the same mask, interleaved: what frame mode costs."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    frame = np.clip(np.stack([150 + 60 * yy, 80 + 40 * xx, 70 + 30 * yy * xx], -1) + rng.normal(0, 6, (h, w, 3)),
                    0, 255).astype(np.uint8)
    mask = (((yy - 0.45 * h / max(h, w)) / 0.15) ** 2 + ((xx - 0.5 * w / max(h, w)) / 0.2) ** 2 <= 1).astype(np.uint8)
    params = SamplingParams(**settings)
    runs = {"whole": lambda: generate(model, mask, batch, seed=seed, params=params, batch_size=batch),
            "frame": lambda: generate(model, mask, batch, seed=seed, params=params, batch_size=batch, frame=frame,
                                      frame_mask=np.zeros_like(mask))}  # a frame known to hold no lesion
    for run in runs.values():
        run()
    t = interleaved(runs, repeats, model.device)
    return {"batch": batch, "frame_size": [h, w], "ratio": round(t.ratio("frame", "whole"), 3),
            **{f"seconds_per_image_{k}": round(t.median(k) / batch, 4) for k in runs}}


def compare_memory_formats(contiguous: SiameseModel, channels_last: SiameseModel, batch: int, repeats: int,
                           settings: dict = SETTINGS, seed: int = 0) -> dict:
    """Our sampler and the baseline loop with the networks in contiguous and in channels_last format
    (the app loads models contiguous), to see whether the sampler should switch formats."""
    hint = mask_hints(batch, contiguous.config.resolution, seed).to(contiguous.device, contiguous.dtype)
    prompts = [PROMPT] * batch
    runs = {}
    for fmt, model in (("contiguous", contiguous), ("channels_last", channels_last)):
        runs[f"ours_{fmt}"] = lambda m=model: sample(m, hint, prompts, _generators(batch, seed), **settings)
        runs[f"diffusers_loop_{fmt}"] = lambda m=model: diffusers_loop_sample(m, hint, prompts,
                                                                               _generators(batch, seed), **settings)
    for run in runs.values():
        run()
    t = interleaved(runs, repeats, contiguous.device)
    return {"batch": batch, **settings, "seconds": {k: round(t.median(k), 4) for k in runs},
            "ours_channels_last_speedup": round(t.ratio("ours_contiguous", "ours_channels_last"), 3),
            "speedup_contiguous": round(t.ratio("diffusers_loop_contiguous", "ours_contiguous"), 3),
            "speedup_channels_last": round(t.ratio("diffusers_loop_channels_last", "ours_channels_last"), 3)}


def compare_presets(model: SiameseModel, batch: int, repeats: int, today: dict, presets: dict[str, dict],
                    seed: int = 0) -> dict:
    """Seconds per image of the model's presets (name -> `sample` settings) against today's sampler (`today`),
    interleaved at one batch size: each preset's median and its paired speedup over today (wall and CPU time)."""
    hint = mask_hints(batch, model.config.resolution, seed).to(model.device, model.dtype)
    settings = {"today": today, **presets}
    runs = {name: (lambda s=s: sample(model, hint, [PROMPT] * batch, _generators(batch, seed), **s))
            for name, s in settings.items()}
    for run in runs.values():
        run()
    t = interleaved(runs, repeats, model.device)
    return {"batch": batch, "repeats": repeats, "settings": settings,
            "seconds_per_image": {k: round(t.median(k) / batch, 4) for k in runs},
            "speedup": {k: round(t.ratio("today", k), 3) for k in presets},
            "speedup_cpu_time": {k: round(t.ratio("today", k, "cpu"), 3) for k in presets},
            "timings": t.summary()}


def batch_images_per_hour(model: SiameseModel, scorer, masks: list, params, num_images: int = 2,
                          batch_size: int = 4, seed: int = 0) -> dict:
    """The Batch tab's path (`siamese.batch.run_batch`: sample, then score each pair with the model's fidelity
    scorer when it has one), timed end to end on `masks` with `num_images` pairs each: pairs per hour."""
    t0 = time.perf_counter()
    pairs = list(run_batch(model, masks, num_images, seed, params, scorer=scorer, batch_size=batch_size))
    seconds = time.perf_counter() - t0
    return {"pairs": len(pairs), "seconds": round(seconds, 6), "seconds_per_pair": round(seconds / len(pairs), 4),
            "images_per_hour": round(3600 * len(pairs) / seconds), "scored": scorer is not None,
            "num_images": num_images, "batch_size": batch_size}

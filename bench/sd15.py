"""Stable Diffusion 1.5 on a GPU: sampling speed at 384x384 and the training-memory recipe, measured.

Runs only with `--sd15 <folder or hub id>` on CUDA (weights are never downloaded implicitly: a hub id
is fetched by `siamese.model.load_model` only when named). Sampling uses METHOD.md's reference setting
(DDIM, 50 steps, guidance 9) and the app's defaults; training memory is measured in fresh worker
processes at batch 4 with mixed precision, with and without gradient checkpointing, with 8-bit AdamW
when bitsandbytes is installed (the recipe of docs/PERFORMANCE.md).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from siamese.model import load_model

from .sampling import SETTINGS, compare_samplers, images_per_second
from .worker import measure

__all__ = ["run_sd15", "REFERENCE_SETTINGS"]

REFERENCE_SETTINGS = dict(scheduler="ddim", steps=50, guidance_scale=9.0)
RESOLUTION = 384


def run_sd15(path: str | None, device: torch.device, dtype: torch.dtype, quick: bool, compile: bool,
             log: Callable[[str], None] = lambda s: None) -> dict:
    if path is None:
        return {"skipped": "no --sd15 folder or hub id given"}
    if device.type != "cuda":
        return {"skipped": "needs a CUDA device (SD1.5 on this CPU would take minutes per image)"}
    model = load_model(path, device=device, dtype=dtype)
    model.config.resolution = RESOLUTION
    if model.controlnet is None:
        model.add_controlnet(0)
    model.controlnet.to(device=device, dtype=dtype)
    for net in (model.unet, model.controlnet):
        net.to(memory_format=torch.channels_last)
    if compile:
        from .workload import compile_blocks

        compile_blocks(model)
    model.eval()
    out: dict = {"model": str(path), "resolution": RESOLUTION, "dtype": str(dtype).replace("torch.", ""),
                 "attention": type(next(iter(model.unet.attn_processors.values()))).__name__}
    repeats = 1 if quick else 3
    for name, settings in (("reference", REFERENCE_SETTINGS), ("app_defaults", SETTINGS)):
        log(f"SD1.5 sampling, {name} settings {settings}")
        out[f"sample_{name}"] = compare_samplers(model, 4, repeats, settings, log=log)
        out[f"images_per_second_{name}"] = {
            b: images_per_second(model, b, repeats, settings)["images_per_second"] for b in (1, 4, 8)
        }
    del model
    torch.cuda.empty_cache()

    have_bnb = importlib.util.find_spec("bitsandbytes") is not None
    amp = "bfloat16" if dtype == torch.bfloat16 else "float16"
    base = dict(model_path=str(path), resolution=RESOLUTION, batch=4, device="cuda", amp_dtype=amp,
                channels_last=True, timed_steps=1 if quick else 3)
    runs = {
        "ours_checkpointing_8bit": dict(variant="ours", gradient_checkpointing=True,
                                        optimizer="adamw8bit" if have_bnb else "adamw"),
        "ours_checkpointing": dict(variant="ours", gradient_checkpointing=True, optimizer="adamw"),
        "ours": dict(variant="ours", optimizer="adamw"),
        "naive": dict(variant="naive", optimizer="adamw"),
    }
    out["train_batch4"] = {}
    for name, spec in runs.items():
        log(f"SD1.5 training memory: {name}")
        out["train_batch4"][name] = measure({**base, **spec})
    out["bitsandbytes"] = have_bnb
    return out

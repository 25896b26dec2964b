"""Sampling settings and what sampling makes: `SamplingParams`, `Generated`, their limits and checks.

Below the model and the sampler: `sampling` samples with these settings, `export` writes `Generated` pairs, the
card describes a model's recommended values with `describe_mask`. Nothing here imports the rest of the package;
a model is read through its `config` (recommended values) and `guide` only.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["SCHEDULERS", "MAX_SEED", "MAX_IMAGES", "MAX_CONTROL_SCALE", "MAX_AUTOGUIDANCE", "PRECISIONS",
           "MAX_CACHE_INTERVAL", "SamplingParams", "check_speed_settings",
           "Generated", "check_autoguidance", "controlled_steps", "describe_mask", "random_seed", "validate_request"]

SCHEDULERS = ("ddim", "dpm++", "unipc")
MAX_SEED = 2**32 - 1
MAX_IMAGES = 64  # per generate() call (per mask)
MAX_CONTROL_SCALE = 10.0
MAX_AUTOGUIDANCE = 10.0
PRECISIONS = ("float32", "bfloat16")  # what the networks run in while sampling (`sample`'s precision)
MAX_CACHE_INTERVAL = 8  # feature reuse: deep features recomputed every k-th step, 1 <= k <= this


class ModelLike(Protocol):
    """What the settings read of a model (a `SiameseModel`): its recommended values and its guide."""

    config: Any  # SiameseConfig: control_scale, control_end, autoguidance
    guide: Any  # Guide | None


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
    cache_interval: int = 1  # deep UNet features recomputed every k-th step (`siamese.deepcache`); 1: every step
    precision: str = "float32"  # "bfloat16": networks and codec under bfloat16 autocast

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
        check_speed_settings(self.cache_interval, self.precision)

    def control_scale_for(self, model: ModelLike) -> float:
        """The control scale used with `model`: this one, or the model's recommended value when None."""
        return model.config.control_scale if self.control_scale is None else float(self.control_scale)

    def control_end_for(self, model: ModelLike) -> float:
        """The control end used with `model`: this one, or the model's recommended value when None."""
        return model.config.control_end if self.control_end is None else float(self.control_end)

    def autoguidance_for(self, model: ModelLike) -> float:
        """The autoguidance weight used with `model`: this one, or the model's recommended value when None. Whether
        the model has the guide a weight above 1 needs is checked where sampling starts (`sample`)."""
        return model.config.autoguidance if self.autoguidance is None else float(self.autoguidance)


def is_whole(value) -> bool:
    """A whole number: an int (numpy's too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite real number: an int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_autoguidance(model: ModelLike, weight: float) -> None:
    """Autoguidance above 1 needs the model's guide (its folder's guide/)."""
    if weight != 1.0 and model.guide is None:
        raise ValueError(f"autoguidance {weight:g} needs a guide (a weaker version of the model, in its folder's "
                         "guide/), and this model has none: use 1 (off), or add one with `python -m siamese add-guide`")


def check_speed_settings(cache_interval: int, precision: str) -> None:
    """The sampler's speed settings: a whole cache interval from 1 (off) to MAX_CACHE_INTERVAL, a known precision."""
    if isinstance(cache_interval, bool) or not isinstance(cache_interval, (int, float)) or \
            cache_interval != int(cache_interval) or not 1 <= cache_interval <= MAX_CACHE_INTERVAL:
        raise ValueError(f"cache interval must be a whole number of steps from 1 (off) to {MAX_CACHE_INTERVAL}, "
                         f"got {cache_interval!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


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

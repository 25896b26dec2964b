"""The settings of a training run: `TrainConfig`, checked by `validate` before anything is read or written, saved
as the run folder's train_config.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from . import tracking

__all__ = ["TrainConfig", "OBJECTIVES", "MIXED_PRECISION", "TIMESTEP_BIAS", "MAX_SEED"]

OBJECTIVES = ("siamese", "controlnet", "base")
MIXED_PRECISION = ("no", "fp16", "bf16")
TIMESTEP_BIAS = ("none", "later", "earlier")
MAX_SEED = 2**32 - 1

@dataclass
class TrainConfig:
    """Everything a run needs; saved as train_config.json in the run folder."""

    data: str
    output: str
    model: str = "tiny"  # "tiny", a model folder, or a hub repo id
    objective: str = "siamese"
    base_steps: int = 0  # with model "tiny": pre-train the UNet alone this long first (OUTPUT/base)
    resolution: int = 256
    batch_size: int = 8  # per process and micro-step
    max_steps: int = 1000
    stop_at: int = 0  # > 0: stop at this step as a Ctrl-C would (checkpoint + model saved; resume continues)
    lr: float = 1e-5
    zero_lr_scale: float = 1.0  # lr multiplier of the ControlNet's zero-initialised layers (see zero_initialised)
    timestep_bias: str = "none"  # diffusers' --timestep_bias_strategy: none (METHOD.md's U{0..999}), later, earlier
    timestep_bias_multiplier: float = 1.0  # weight of the biased timesteps
    timestep_bias_portion: float = 0.25  # fraction of the timesteps that get the bias
    weight_decay: float = 1e-2  # AdamW's torch default
    warmup_steps: int = 0
    ema_decay: float = 0.0  # > 0: an exponential moving average of the trainable weights is what is saved
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    unlock_decoder: bool = True
    use_8bit_adam: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    preview_every: int = 0
    prompt: str | None = None
    prompt_dropout: float = 0.05
    flip: bool = True
    seed: int = 0
    holdout: float = 0.0  # fraction of pairs left out (split_pairs with holdout_seed), for a fair evaluation
    holdout_seed: int = 0
    resume: str | None = None  # "latest" or a checkpoint folder
    name: str = ""
    report_to: str = "none"  # tensorboard | wandb | none: accelerate's trackers (siamese.tracking)
    scorer_steps: int = 200  # at the end, a fidelity scorer on the training pairs (`fidelity`, segmenter/); 0: none

    def validate(self) -> None:
        """Every setting, with a message naming it; called before anything is read or written."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed precision must be one of {', '.join(MIXED_PRECISION)}, "
                             f"got '{self.mixed_precision}'")
        for name in ("data", "output", "model", "name"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be text, got {getattr(self, name)!r}")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be text, got {self.prompt!r}")
        for name, low, high in (("batch_size", 1, None), ("max_steps", 1, None), ("gradient_accumulation", 1, None),
                                ("checkpoint_every", 1, None), ("log_every", 1, None), ("keep_checkpoints", 1, None),
                                ("base_steps", 0, None), ("warmup_steps", 0, None), ("preview_every", 0, None),
                                ("scorer_steps", 0, None),
                                ("seed", 0, MAX_SEED), ("holdout_seed", 0, MAX_SEED), ("resolution", 64, 1024),
                                ("stop_at", 0, None)):
            value = getattr(self, name)
            if not _whole(value) or value < low or (high is not None and value > high):
                limits = f"between {low} and {high}" if high is not None else f"{low} or more"
                raise ValueError(f"{name.replace('_', ' ')} must be a whole number {limits}, got {value!r}")
        if self.resolution % 64:
            raise ValueError(f"resolution must be a multiple of 64 between 64 and 1024, got {self.resolution}")
        for name, what in (("lr", "learning rate"), ("zero_lr_scale", "zero-layer lr scale")):
            if not _real(getattr(self, name)) or not getattr(self, name) > 0:
                raise ValueError(f"{what} must be a positive number, got {getattr(self, name)!r}")
        if self.timestep_bias not in TIMESTEP_BIAS:
            raise ValueError(f"timestep bias must be one of {', '.join(TIMESTEP_BIAS)}, got {self.timestep_bias!r}")
        if not _real(self.timestep_bias_multiplier) or not self.timestep_bias_multiplier > 0:
            raise ValueError(f"timestep bias multiplier must be a positive number, "
                             f"got {self.timestep_bias_multiplier!r}")
        if not _real(self.timestep_bias_portion) or not 0 < self.timestep_bias_portion <= 1:
            raise ValueError(f"timestep bias portion must be a fraction in (0, 1], got {self.timestep_bias_portion!r}")
        if not _real(self.weight_decay) or not self.weight_decay >= 0:
            raise ValueError(f"weight decay must be a number, 0 or more, got {self.weight_decay!r}")
        if not _real(self.ema_decay) or not 0 <= self.ema_decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1) (0 turns it off), got {self.ema_decay!r}")
        if not _real(self.holdout) or not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")
        if not _real(self.prompt_dropout) or not 0 <= self.prompt_dropout <= 1:
            raise ValueError(f"prompt dropout must be between 0 and 1, got {self.prompt_dropout!r}")
        tracking.check_report_to(self.report_to)
        if self.base_steps and (self.model != "tiny" or self.objective == "base"):
            raise ValueError("base steps pre-train a UNet built from scratch before its ControlNet: use them "
                             f"with model 'tiny' and objective siamese or controlnet (got model '{self.model}', "
                             f"objective '{self.objective}')")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

"""The settings of a training run: `TrainConfig`, checked by `validate` before anything is read or written, saved
as the run folder's train_config.json."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from .tracking import REPORT_TO, check_report_to
from .files import same_folder
from .overlay import OVERLAY_MODES
from .params import MAX_SEED, is_real, is_whole

__all__ = ["TrainConfig", "setting", "OBJECTIVES", "MIXED_PRECISION", "TIMESTEP_BIAS", "OVERLAY_MODES", "MAX_SEED",
           "RECORD_NAME", "training_record", "trained_on", "same_split"]

OBJECTIVES = ("siamese", "controlnet", "base")
MIXED_PRECISION = ("no", "fp16", "bf16")
TIMESTEP_BIAS = ("none", "later", "earlier")
MAX_LR = 1.0  # AdamW moves each weight by about lr per step: above 1 a step outweighs the weights themselves
MAX_BATCH_SIZE = 4096  # one micro-batch of images is encoded and held in memory at once
RECORD_NAME = "train_config.json"  # a run folder's record: TrainConfig and what the run measured

def setting(default: Any = MISSING, help: str = "", **cli: Any) -> Any:
    """A dataclass field and its command-line option (`siamese.cli_options` makes `--field-name` of it): `help`
    (argparse's %(default)s shows the default), and in `cli`: `choices`; `flag`, another option name (a bool
    field that defaults to True becomes a flag that sets it False); `hidden=True`, no option (the library and
    train_config.json only)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything a run needs; saved as train_config.json in the run folder. Each field is also an option of
    `python -m siamese train` (its help text is the field's)."""

    data: str = setting(help="folder with images/ and masks/, or prompt.json")
    output: str = setting(help="run folder; becomes a loadable model folder")
    model: str = setting("tiny", "tiny, a model folder, or a hub repo id (default: %(default)s)")
    objective: str = setting("siamese", "siamese (the method), controlnet (mask-only baseline) or base (pre-train "
                             "a UNet); default %(default)s", choices=OBJECTIVES)
    base_steps: int = setting(0, "with --model tiny: pre-train the UNet alone this many steps first (OUTPUT/base), "
                              "then the ControlNet from it (0: off)")
    resolution: int = setting(256, "image size, a multiple of 64 (default %(default)s)")
    batch_size: int = setting(8, "images per process and micro-step (default %(default)s)")
    max_steps: int = setting(1000, "training steps (default %(default)s)")
    stop_at: int = setting(0, "stop at this step as Ctrl-C would (checkpoint and model saved, --resume latest "
                           "continues); the schedules still run to --max-steps (0: off)")
    lr: float = setting(1e-5, "learning rate after the warm-up (default %(default)g)")
    zero_lr_scale: float = setting(1.0, "lr multiplier of the ControlNet's zero-initialised layers (zero convolutions, "
                                   "the DHI's output conv; see schedule.zero_initialised); default %(default)g. An experiment: on "
                                   "the bundled model 10 grew those layers but did not make the mask act more (its "
                                   "model card has the figures)")
    timestep_bias: str = setting("none", "sample training timesteps non-uniformly (diffusers' "
                                 "--timestep_bias_strategy): 'later' favours the noisiest steps, where the layout "
                                 "(the mask) is decided; default %(default)s, the method's uniform U{0..999}",
                                 choices=TIMESTEP_BIAS)
    timestep_bias_multiplier: float = setting(1.0, "weight of the biased timesteps")
    timestep_bias_portion: float = setting(0.25, "fraction of timesteps biased")
    weight_decay: float = setting(1e-2, "AdamW's weight decay (torch's default)", hidden=True)
    warmup_steps: int = setting(0, "linear learning-rate warm-up steps (0: none)")
    ema_decay: float = setting(0.0, "keep an exponential moving average of the weights (e.g. 0.999) and save it; "
                               "0: off")
    gradient_accumulation: int = setting(1, "micro-batches per step")
    mixed_precision: str = setting("no", "autocast precision (GPU)", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass (less memory)")
    unlock_decoder: bool = setting(True, "train the ControlNet only (UNet decoder frozen)", flag="--lock-decoder")
    use_8bit_adam: bool = setting(False, "bitsandbytes 8-bit AdamW (GPU)")
    checkpoint_every: int = setting(500, "save a checkpoint every N steps (default %(default)s)")
    keep_checkpoints: int = setting(2, "checkpoints kept (the latest)", hidden=True)
    log_every: int = setting(10, "a metrics.csv row every N steps (default %(default)s)")
    preview_every: int = setting(0, "save preview samples every N steps (0: never)")
    prompt: str | None = setting(None, "prompt for pairs without one (default: from the data)")
    overlay: str = setting("auto", "on-screen overlays (text, dates, marker dashes, static labels: siamese.overlay): "
                           "'auto' finds them in the training images and leaves their latents out of the loss, "
                           "'off' trains on every pixel; default %(default)s", choices=OVERLAY_MODES)
    prompt_dropout: float = setting(0.05, "share of the prompts replaced by the empty one", hidden=True)
    flip: bool = setting(True, "random horizontal and vertical flips", hidden=True)
    seed: int = setting(0, "seed of the batches, noise and the starting weights")
    holdout: float = setting(0.0, "fraction of pairs left out of training, the same split `evaluate` tests on "
                             "(seed 0)")
    holdout_seed: int = setting(0, "seed of the held-out split (split_pairs)", hidden=True)
    resume: str | None = setting(None, "'latest' or a checkpoint folder")
    name: str = setting("", "model name recorded in its config")
    report_to: str = setting("none", "also log the losses, lr and previews to TensorBoard (OUTPUT/logs) or W&B, "
                             "through accelerate's trackers (the package must be installed); default %(default)s",
                             choices=REPORT_TO)
    scorer_steps: int = setting(200, "at the end, train the fidelity scorer (segmenter/, see train-scorer) this many "
                                "steps on the training pairs; 0: none")

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
            if not is_whole(value) or value < low or (high is not None and value > high):
                limits = f"between {low} and {high}" if high is not None else f"{low} or more"
                raise ValueError(f"{name.replace('_', ' ')} must be a whole number {limits}, got {value!r}")
        if self.resolution % 64:
            raise ValueError(f"resolution must be a multiple of 64 between 64 and 1024, got {self.resolution}")
        for name, what in (("lr", "learning rate"), ("zero_lr_scale", "zero-layer lr scale")):
            if not is_real(getattr(self, name)) or not getattr(self, name) > 0:
                raise ValueError(f"{what} must be a positive number, got {getattr(self, name)!r}")
        if self.lr * max(1.0, self.zero_lr_scale) > MAX_LR:
            scaled = (f" times the zero-layer lr scale {self.zero_lr_scale:g} = {self.lr * self.zero_lr_scale:g}"
                      if self.zero_lr_scale > 1 else "")
            raise ValueError(f"learning rate must be at most {MAX_LR:g}, got {self.lr:g}{scaled}: AdamW moves every "
                             "weight by about the learning rate at each step, so above 1 the weights (mostly below "
                             "1) are overwritten and the loss diverges; fine-tuning uses about 1e-5 to 1e-4")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ValueError(f"batch size must be at most {MAX_BATCH_SIZE}, got {self.batch_size}: a batch (per "
                             "process and micro-step) is encoded and held in memory at once; for a larger effective "
                             "batch raise the gradient accumulation")
        if self.overlay not in OVERLAY_MODES:
            raise ValueError(f"overlay must be one of {', '.join(OVERLAY_MODES)}, got {self.overlay!r}")
        if self.timestep_bias not in TIMESTEP_BIAS:
            raise ValueError(f"timestep bias must be one of {', '.join(TIMESTEP_BIAS)}, got {self.timestep_bias!r}")
        if not is_real(self.timestep_bias_multiplier) or not self.timestep_bias_multiplier > 0:
            raise ValueError(f"timestep bias multiplier must be a positive number, "
                             f"got {self.timestep_bias_multiplier!r}")
        if not is_real(self.timestep_bias_portion) or not 0 < self.timestep_bias_portion <= 1:
            raise ValueError(f"timestep bias portion must be a fraction in (0, 1], got {self.timestep_bias_portion!r}")
        if not is_real(self.weight_decay) or not self.weight_decay >= 0:
            raise ValueError(f"weight decay must be a number, 0 or more, got {self.weight_decay!r}")
        if not is_real(self.ema_decay) or not 0 <= self.ema_decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1) (0 turns it off), got {self.ema_decay!r}")
        if not is_real(self.holdout) or not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in [0, 1), got {self.holdout!r}")
        if not is_real(self.prompt_dropout) or not 0 <= self.prompt_dropout <= 1:
            raise ValueError(f"prompt dropout must be between 0 and 1, got {self.prompt_dropout!r}")
        check_report_to(self.report_to)
        if self.base_steps and (self.model != "tiny" or self.objective == "base"):
            raise ValueError("base steps pre-train a UNet built from scratch before its ControlNet: use them "
                             f"with model 'tiny' and objective siamese or controlnet (got model '{self.model}', "
                             f"objective '{self.objective}')")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# -- a trained model's record (what evaluation and the fidelity scorer need to know of its training) ---------------
def training_record(model_folder: str | Path) -> dict | None:
    """The model folder's train_config.json (data folder, holdout, holdout_seed), when it has one that names its
    data; None otherwise (a hub id, a converted model, an unreadable file)."""
    path = Path(model_folder) / RECORD_NAME
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "data" in record else None


def trained_on(record: dict | None, data: str | Path) -> bool:
    """Whether a training record (`training_record`) names the data folder `data`."""
    return record is not None and same_folder(str(record["data"]), data)


def same_split(record: dict | None, data: str | Path, holdout: float, holdout_seed: int) -> bool:
    """Whether a model trained as `record` says held out exactly the pairs `split_pairs(find_pairs(data), holdout,
    holdout_seed)` holds out: the same data folder, fraction and seed."""
    return (trained_on(record, data) and record.get("holdout") == holdout
            and record.get("holdout_seed") == holdout_seed)

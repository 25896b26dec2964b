"""What each training step draws and updates, as pure functions of the settings and the step: the learning rate,
the timestep weights, the seeded batches, the parameters that train and their optimiser groups."""

from __future__ import annotations

import numpy as np
import torch

from .model import SiameseModel
from .networks import UNET_DECODER_PREFIXES
from .train_config import TrainConfig

__all__ = ["lr_at", "timestep_weights", "batch_generator", "batch_indices", "trainable_parameters", "zero_initialised",
           "param_groups", "ZERO_INITIALISED"]


def lr_at(step: int, config: TrainConfig) -> float:
    """Constant learning rate after a linear warm-up."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def timestep_weights(config: TrainConfig, num_timesteps: int) -> torch.Tensor | None:
    """Sampling weights of the training timesteps, (num_timesteps,), or None for METHOD.md's uniform U{0..T-1}.

    diffusers' `--timestep_bias_strategy` semantics: the last ("later", the noisiest) or first ("earlier")
    `portion` of the timesteps weigh `multiplier` times the others."""
    if config.timestep_bias == "none" or config.timestep_bias_multiplier == 1.0:
        return None
    weights = torch.ones(num_timesteps, dtype=torch.float64)
    count = max(1, int(config.timestep_bias_portion * num_timesteps))
    biased = slice(num_timesteps - count, None) if config.timestep_bias == "later" else slice(0, count)
    weights[biased] *= config.timestep_bias_multiplier
    return weights / weights.sum()


def batch_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The random stream of one micro-batch of one process: a pure function of its coordinates."""
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def batch_indices(n: int, seed: int, position: int, size: int) -> list[int]:
    """Samples position..position+size of an endless sequence of seeded permutations of range(n)."""
    out = []
    for k in range(position, position + size):
        epoch, i = divmod(k, n)
        perm = torch.randperm(n, generator=torch.Generator("cpu").manual_seed(seed * 100_003 + epoch))
        out.append(int(perm[i]))
    return out


def trainable_parameters(model: SiameseModel, objective: str, unlock_decoder: bool) -> dict[str, torch.nn.Parameter]:
    """Named trainable parameters: the whole UNet (base); else the ControlNet and, when unlocked, the UNet
    decoder (up blocks, output norm and conv). Everything else is frozen."""
    for m in model.modules().values():
        m.requires_grad_(False)
    params: dict[str, torch.nn.Parameter] = {}
    if objective == "base":
        params.update({f"unet.{n}": p for n, p in model.unet.named_parameters()})
    else:
        params.update({f"controlnet.{n}": p for n, p in model.controlnet.named_parameters()})
        if unlock_decoder:
            params.update({f"unet.{n}": p for n, p in model.unet.named_parameters()
                           if n.startswith(UNET_DECODER_PREFIXES)})
    for p in params.values():
        p.requires_grad_(True)
    return params


ZERO_INITIALISED = ("controlnet.controlnet_down_blocks.", "controlnet.controlnet_mid_block.",
                    "controlnet.controlnet_cond_embedding.conv_out.")


def zero_initialised(name: str) -> bool:
    """True for the ControlNet's zero-initialised layers: its zero convolutions and the DHI's output conv.

    They start at 0 and Adam moves each weight by about lr per step, so at a small lr they stay near 0
    for thousands of steps (a random walk of size lr * sqrt(steps)) while their gradients already point
    the right way. `TrainConfig.zero_lr_scale` gives them a larger lr: measured on the tiny Kvasir model,
    10 grows them 2.5-7x but does not raise mask use (1000 steps from the bundled model lost it: 1.06% ->
    0.00%), so the default stays 1; the option is there for experiments (see the model card)."""
    return name.startswith(ZERO_INITIALISED)


def param_groups(params: dict[str, torch.nn.Parameter], zero_lr_scale: float) -> list[dict]:
    """AdamW groups: everything at the base lr, the zero-initialised layers at `zero_lr_scale` times it
    (one group when the scale is 1). Each group's "lr_scale" multiplies the scheduled lr."""
    zero = [p for n, p in params.items() if zero_initialised(n)]
    rest = [p for n, p in params.items() if not zero_initialised(n)]
    if zero_lr_scale == 1.0 or not zero:
        return [{"params": rest + zero, "lr_scale": 1.0}]
    return [{"params": rest, "lr_scale": 1.0}, {"params": zero, "lr_scale": zero_lr_scale}]

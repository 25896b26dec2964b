"""Training state on disk and in memory: checkpoints (written atomically, the last K kept) and the
exponential moving average of the trainable weights. Used by `train`; a checkpoint folder holds
trainable.safetensors, optimizer.safetensors, state.json (step, optimiser groups, partial metrics) and,
with an EMA, ema.safetensors.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .files import atomic_folder

__all__ = ["EMA", "ema_decay_at", "latest_checkpoint", "save_checkpoint", "load_checkpoint", "checkpoint_metrics"]

def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after `step` updates, warmed up as (1 + step) / (10 + step), capped at `decay`."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    """Exponential moving average of named parameters (float32 copies on their device)."""

    FILE = "ema.safetensors"

    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.params = params
        self.shadow = {n: p.detach().float().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self, decay: float) -> None:
        names = list(self.params)
        torch._foreach_lerp_([self.shadow[n] for n in names],
                             [self.params[n].detach().float() for n in names], 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the averaged ones (call twice to restore)."""
        for n, p in self.params.items():
            live = p.detach().clone()
            p.copy_(self.shadow[n])
            self.shadow[n].copy_(live)

    @contextlib.contextmanager
    def applied(self):
        """The averaged weights in the model for the duration of the block."""
        self.swap()
        try:
            yield
        finally:
            self.swap()

    def save(self, folder: Path) -> None:
        save_file({n: v.cpu().contiguous() for n, v in self.shadow.items()}, folder / self.FILE)

    def load(self, folder: Path) -> bool:
        """Load the average from a checkpoint folder; False (average = current weights) if it has none."""
        if not (folder / self.FILE).is_file():
            return False
        saved = load_file(folder / self.FILE)
        for n, v in self.shadow.items():
            v.copy_(saved[n])
        return True


def _checkpoint_folders(folder: Path) -> list[Path]:
    """checkpoints/step-XXXXXXX folders, oldest first (not the .tmp folders of an interrupted write)."""
    return sorted(p for p in folder.glob("step-*") if re.fullmatch(r"step-\d{7}", p.name)) if folder.is_dir() else []


def latest_checkpoint(output: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    done = [p for p in _checkpoint_folders(Path(output) / "checkpoints") if (p / "state.json").is_file()]
    return done[-1] if done else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def save_checkpoint(output: Path, step: int, params: dict[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, keep: int, ema: EMA | None = None,
                    metrics: dict | None = None) -> Path:
    """Write checkpoints/step-XXXXXXX atomically (temp folder, then rename) and keep the last `keep`.
    `metrics`: the partial sums of the next metrics.csv row, so that a resumed run writes the same rows."""
    folder = output / "checkpoints" / f"step-{step:07d}"
    with atomic_folder(folder) as tmp:
        save_file({n: p.detach().float().cpu().contiguous() for n, p in params.items()}, tmp / "trainable.safetensors")
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file({k: v.cpu().contiguous() for k, v in opt_tensors.items()}, tmp / "optimizer.safetensors")
        state = {"step": step, "optimizer": opt_meta, "metrics": metrics,
                 "rng": "batches, timesteps and noise are derived from (seed, step): nothing else to restore"}
        if ema is not None:
            ema.save(tmp)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for old in _checkpoint_folders(folder.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def checkpoint_metrics(folder: Path) -> dict | None:
    """The partial metrics sums saved with a checkpoint (None for checkpoints of older versions)."""
    return json.loads((folder / "state.json").read_text()).get("metrics")


def load_checkpoint(folder: Path, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> int:
    """Restore weights and optimiser state in place; returns the step to continue from."""
    weights = load_file(folder / "trainable.safetensors")
    missing = set(params) - set(weights)
    if missing:
        raise ValueError(f"checkpoint {folder} does not match this model: {len(missing)} parameters missing, "
                         f"e.g. {sorted(missing)[0]}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    state = json.loads((folder / "state.json").read_text())
    opt = load_file(folder / "optimizer.safetensors")
    per_param: dict[int, dict] = {}
    for key, value in opt.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
    return int(state["step"])

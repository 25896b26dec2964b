"""The Train tab: /train_start, /train_stop, /train_status, and the page's polling timer.

The page polls only while a run is active: its timer starts inactive, and every poll (on page load, after
Start and Stop, and each tick) returns the timer switched on while a run is running or stopping, off otherwise.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import gradio as gr

from siamese import DataError, ModelLoadError
from siamese.data import find_pairs
from siamese.train import TrainConfig

from . import inputs
from .datasets import dataset_folder, safe_extract_zip
from .job import ACTIVE_STATES, TrainingJob, loss_frame, status_text
from .messages import Redactor, user_error
from .models import ModelCatalog, ModelStore, hub_snapshot
from .settings import Settings

BASE_MODELS = ("tiny (from scratch)", "current model (continue training)", "Stable Diffusion 1.5 folder or hub id")
POLL_SECONDS = 1.5


def run_name(text: str | None) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (text or "").strip()).strip(".-")
    return name or time.strftime("run-%Y%m%d-%H%M%S")


def _fetch_hub_base(config: TrainConfig) -> TrainConfig:
    """In the training thread: a hub base model -> its local snapshot (see models.hub_snapshot)."""
    return replace(config, model=str(hub_snapshot(config.model)))


class TrainingHandlers:
    """The Train tab's handlers; part of `Studio` (uses `self.settings`, `self.catalog`, `self.models`,
    `self.job`, `self.runs_dir`, `self.redact`)."""

    settings: Settings
    catalog: ModelCatalog
    models: ModelStore
    job: TrainingJob
    runs_dir: Path
    redact: Redactor

    @property
    def training_disabled(self) -> str | None:
        return self.settings.training_disabled

    def train_start(self, data_folder: str | None = None, data_zip: str | None = None,
                    base_model: str = BASE_MODELS[0], base_path: str | None = None, max_steps: int = 200,
                    batch_size: int = 4, lr: float = 1e-4, resolution: int = 256, checkpoint_every: int = 100,
                    preview_every: int = 50, name: str | None = None, model: str | None = None,
                    base_steps: int = 200) -> str:
        """Start a training run in the background (one at a time); poll /train_status. From scratch ("tiny"),
        the UNet is first pre-trained alone for `base_steps` steps, then the ControlNet is trained on it.
        `data_folder` is relative to the server's data folder; the base model is one the server offers."""
        if self.training_disabled:
            raise gr.Error(self.training_disabled, title="Training disabled")
        if self.job.running:
            raise gr.Error("a training run is already in progress: stop it first, or wait", title="Busy")
        tmp = None
        try:
            max_steps = inputs.number(max_steps, "steps", whole=True)
            base_steps = inputs.number(base_steps or 0, "pre-training steps", whole=True)
            batch_size = inputs.number(batch_size, "batch size", whole=True)
            resolution = inputs.number(resolution, "resolution", whole=True)
            checkpoint_every = inputs.number(checkpoint_every, "checkpoint every", whole=True)
            preview_every = inputs.number(preview_every or 0, "preview every", whole=True)
            lr = inputs.number(lr, "learning rate")
            data_folder = inputs.text(data_folder, "dataset folder")
            base_path = inputs.text(base_path, "base model folder or hub id")
            name = inputs.text(name, "run name")
            model = inputs.text(model, "model")
            if data_zip:
                tmp = tempfile.TemporaryDirectory(prefix="siamese-data-")
                data = safe_extract_zip(data_zip, Path(tmp.name), max_bytes=self.settings.max_unpacked_bytes)
                shown = f"the uploaded {Path(data_zip).name}"
            elif data_folder:
                data = dataset_folder(data_folder, self.settings.data_root)
                shown = f"`{self.redact(str(data))}`"
            else:
                raise DataError("no dataset: type a folder of the server's data folder (images/ + masks/, or "
                                "prompt.json) or upload a zip")
            pairs = find_pairs(data)  # fails early, with the library's message, for a folder without masks
            pretrain, prepare = 0, None
            if base_model in (BASE_MODELS[0], "tiny"):
                init, pretrain = "tiny", base_steps
            else:
                if base_model in (BASE_MODELS[1], "current"):
                    ref = self.catalog.resolve(model or self.catalog.default)
                elif base_model != BASE_MODELS[2]:
                    raise ValueError(f"start from must be one of: {'; '.join(BASE_MODELS)} "
                                     f"(got {str(base_model)[:60]!r})")
                elif base_path:
                    ref = self.catalog.resolve(base_path)
                else:
                    raise ValueError("type the Stable Diffusion 1.5 folder or hub id (e.g. owner/model)")
                init, prepare = ref.location, _fetch_hub_base if ref.hub else None
            output = self.runs_dir / run_name(name)
            if output.exists():
                output = output.with_name(f"{output.name}-{time.strftime('%H%M%S')}")
            config = TrainConfig(data=str(data), output=str(output), model=init, objective="siamese",
                                 base_steps=pretrain, resolution=resolution, batch_size=batch_size,
                                 max_steps=max_steps, lr=lr, checkpoint_every=checkpoint_every,
                                 log_every=max(1, (max_steps + pretrain) // 200), preview_every=preview_every,
                                 name=output.name)
            config.validate()
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.job.start(config, tmp, prepare)
        except (DataError, ModelLoadError, ValueError, RuntimeError) as e:
            if tmp is not None:
                tmp.cleanup()
            raise user_error(e, self.redact) from None
        return status_text(self.job.snapshot()) + f"\n\n{len(pairs)} image-mask pairs from {shown}."

    def train_stop(self) -> str:
        """Stop the running training after its current step; the model is saved first."""
        if not self.job.stop():
            gr.Warning("No training run is in progress.")
        return status_text(self.job.snapshot())

    def train_status(self) -> dict:
        """The training run as JSON: state (idle, running, stopping, finished, stopped, failed), step, max_steps,
        it_per_s, eta_s, output (the run's model id, runs/app/NAME), error, message (Markdown) and losses (one dict
        per metrics row, every ~1/200 of the run, plus the newest step reported in between: the first step, then
        every 10 s)."""
        snap = self.job.snapshot()
        keys = ("state", "step", "max_steps", "it_per_s", "eta_s", "error")
        output = (self.catalog.public_id(snap["output"]) or self.redact(snap["output"])) if snap["output"] else None
        return {**{k: snap[k] for k in keys}, "output": output, "message": status_text(snap), "losses": snap["rows"]}

    def train_poll(self, seen: int = -1):
        """For the page (on load, after Start and Stop, and on each tick of its timer): status text, the loss
        curves (step, value, term), the latest preview, the model list, the version, and the timer: active while
        a run is active, so an idle page does not poll. Parts that did not change since version `seen` are
        skipped, so polling is cheap."""
        snap = self.job.snapshot()
        timer = gr.Timer(POLL_SECONDS, active=snap["state"] in ACTIVE_STATES)
        if snap["version"] == seen:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen, timer
        if snap["state"] == "failed" and seen >= 0:
            gr.Warning(snap["error"], title="Training failed")
        ended = snap["state"] in ("finished", "stopped")
        frame = loss_frame(snap["rows"])
        # None, not an empty frame: a LinePlot that received an empty frame draws no lines later (Gradio 6.31)
        return (status_text(snap), frame if len(frame) else None, snap["preview"],
                gr.Dropdown(choices=self.catalog.choices()) if ended else gr.skip(), snap["version"], timer)

    def use_trained(self):
        snap = self.job.snapshot()
        if snap["state"] not in ("finished", "stopped") or not snap["output"]:
            gr.Warning("No finished training run yet.")
            return gr.skip()
        model = self.catalog.public_id(snap["output"]) or self.redact(snap["output"])
        self.models.forget(model)
        return gr.Dropdown(choices=self.catalog.choices(), value=model)

"""The Train tab: /train_start, /train_stop, /train_status, the page's polling timer, the status text and the loss
curves of the training job (`studio.jobs.training`). Two kinds of run: the quick two-stage run (`siamese.train`), and
the full model (`siamese.build`: every stage of the bundled models' recipe, the settings sweep, the evaluation and the
model card, in a budget of hours; stopped, it resumes when started again with the same run name).

The page polls only while a run is active: its timer starts inactive, and every poll (on page load, after
Start and Stop, and each tick) returns the timer switched on while a run is running or stopping, off otherwise.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import pandas as pd

from siamese import DataError
from siamese.build import BUILD_FOLDER, REFERENCE_HOURS, BuildConfig, begun_build
from siamese.data import find_pairs
from siamese.objective import LOSS_KEYS
from siamese.train import TrainConfig

from .. import inputs
from ..catalog import ModelCatalog, ModelStore, hub_snapshot
from ..datasets import dataset_folder, safe_extract_zip
from ..jobs.base import ACTIVE_STATES, POLL_SECONDS, STATE_ICONS, duration
from ..jobs.training import TrainingJob
from ..replies import Redactor, refusal
from ..scratch import Scratch
from ..settings import Settings

BASE_MODELS = ("tiny (from scratch)", "current model (continue training)", "Stable Diffusion 1.5 folder or hub id")
KINDS = ("quick run (two stages)", "full model (build: every stage, settings sweep, evaluation, card)")
BUDGET_HOURS = (0.01, 100.0)  # a full build's budget in hours on 2 idle CPU cores
MAX_RUN_NAME = 100  # characters of a run name (its folder's name)
LOSS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f")


def run_name(text: str | None) -> str:
    """A visitor's run name -> a folder name (letters, digits, '_', '.', '-'); a dated one for nothing."""
    if text is not None and len(text) > MAX_RUN_NAME:
        raise ValueError(f"run name must be at most {MAX_RUN_NAME} characters, got {len(text):,}")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (text or "").strip()).strip(".-")
    return name or time.strftime("run-%Y%m%d-%H%M%S")


def _fetch_hub_base(config: TrainConfig) -> TrainConfig:
    """In the training thread: a hub base model -> its local snapshot (see catalog.hub_snapshot)."""
    return replace(config, model=str(hub_snapshot(config.model)))


def status_text(snap: dict) -> str:
    """The run's status in Markdown: its message, step, speed, ETA and latest losses."""
    text = STATE_ICONS[snap["state"]] + snap["message"]
    stage = snap.get("stage")
    if snap["state"] in ACTIVE_STATES and stage:  # a full build
        text += f"\n\n**stage {stage['index']}/{stage['total']}: {stage['name']}**"
        if snap["max_steps"]:
            text += f" · {'step' if stage['training'] else 'done'} {snap['step']} / {snap['max_steps']}"
        if snap["it_per_s"] and stage["training"]:
            text += f" · {snap['it_per_s']:.2f} it/s"
        text += f" · ETA {duration(snap['eta_s'])} (the whole build; later stages as planned on 2 idle cores)"
    elif snap["state"] in ACTIVE_STATES and snap["max_steps"]:
        text += f"\n\nStep **{snap['step']} / {snap['max_steps']}**"
        if snap["it_per_s"]:
            text += f" · {snap['it_per_s']:.2f} it/s · ETA {duration(snap['eta_s'])}"
    if snap["rows"]:
        last = snap["rows"][-1]
        text += "\n\n" + " · ".join(f"{k} {last[k]:.4g}" for k in LOSS_KEYS if k in last)
    return text


def loss_frame(rows: list[dict]) -> pd.DataFrame:
    """Loss rows -> long format (step, value, term) for the line plot."""
    records = [(r["step"], float(r[k]), k) for r in rows for k in LOSS_KEYS if k in r]
    steps, values, terms = zip(*records) if records else ((), (), ())
    # typed even when empty, so the plot's axes are numeric from the start
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "value": pd.Series(values, dtype="float64"),
                         "term": pd.Series(terms, dtype="str")})


class TrainTab:
    """The Train tab's handlers."""

    def __init__(self, settings: Settings, catalog: ModelCatalog, models: ModelStore, job: TrainingJob,
                 runs_dir: Path, scratch: Scratch, redact: Redactor) -> None:
        self.settings, self.catalog, self.models, self.job = settings, catalog, models, job
        self.runs_dir, self.scratch, self.redact = Path(runs_dir), scratch, redact

    @property
    def training_disabled(self) -> str | None:
        return self.settings.training_disabled

    def train_start(self, data_folder: str | None = None, data_zip: str | None = None,
                    base_model: str = BASE_MODELS[0], base_path: str | None = None, max_steps: int = 200,
                    batch_size: int = 4, lr: float = 1e-4, resolution: int = 256, checkpoint_every: int = 100,
                    preview_every: int = 50, name: str | None = None, model: str | None = None,
                    base_steps: int = 200, kind: str = KINDS[0], budget_hours: float = 0.25,
                    label: str | None = None, overlays_out: bool = True) -> str:
        """Start a training run in the background (one at a time); poll /train_status. From scratch ("tiny"),
        the UNet is first pre-trained alone for `base_steps` steps, then the ControlNet is trained on it.
        `data_folder` is relative to the server's data folder; the base model is one the server offers.
        `kind` "full" (or KINDS[1]) builds a complete model instead (`siamese.build`): from scratch, in `budget_hours`
        of CPU time, at `resolution` and `batch_size` (the step settings and the base model do not apply), shown in
        the model selector as `label`; a build begun with the same run name resumes, with its own settings.
        `overlays_out`: leave the dataset's on-screen overlays (text, marker dashes, static labels) out of the loss
        (`siamese.overlay`; TrainConfig.overlay "auto", else "off")."""
        if self.training_disabled:
            raise gr.Error(self.training_disabled, title="Training disabled")
        if self.job.running:
            raise gr.Error("a training run is already in progress: stop it first, or wait", title="Busy")
        try:
            kind = inputs.text(kind, "kind of run") or KINDS[0]
            if kind not in (*KINDS, "quick", "full"):
                raise ValueError(f"kind of run must be one of: {'; '.join(KINDS)} (got {kind[:60]!r})")
            overlay = "auto" if inputs.flag(overlays_out, "leave overlays out") else "off"
        except Exception as e:
            raise refusal(e, self.redact, "the training run") from None
        if kind in (KINDS[1], "full"):
            return self.build_start(data_folder, data_zip, budget_hours, resolution, batch_size, name, label, overlay)
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
            base_model = inputs.text(base_model, "start from") or BASE_MODELS[0]
            output = self.runs_dir / run_name(name)
            zipped = inputs.upload(data_zip, "dataset zip")
            if zipped is not None:
                tmp = self.scratch.folder("data-")
            data, shown = self._dataset(data_folder, zipped, inputs.shown_name(data_zip), tmp)
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
            if output.exists():
                output = output.with_name(f"{output.name}-{time.strftime('%H%M%S')}")
            config = TrainConfig(data=str(data), output=str(output), model=init, objective="siamese",
                                 base_steps=pretrain, resolution=resolution, batch_size=batch_size,
                                 max_steps=max_steps, lr=lr, checkpoint_every=checkpoint_every,
                                 log_every=max(1, (max_steps + pretrain) // 200), preview_every=preview_every,
                                 name=output.name, overlay=overlay)
            config.validate()
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.job.start(config, tmp, prepare)
        except Exception as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise refusal(e, self.redact, "the training run") from None
        return status_text(self.job.snapshot()) + f"\n\n{len(pairs)} image-mask pairs from {shown}."

    def _dataset(self, data_folder: str | None, zipped, zip_name: str, unpack_to: Path | None) -> tuple[Path, str]:
        """The training data (the uploaded zip `zipped`, already read by `inputs.upload`, unpacked into `unpack_to`;
        or a folder of the server's data folder) and how the status names it."""
        if zipped is not None:
            data = safe_extract_zip(zipped, unpack_to, max_bytes=self.settings.max_unpacked_bytes, shown=zip_name)
            return data, f"the uploaded {zip_name}"
        if data_folder:
            data = dataset_folder(data_folder, self.settings.data_root)
            return data, f"`{self.redact(str(data))}`"
        raise DataError("no dataset: type a folder of the server's data folder (images/ + masks/, or prompt.json) or "
                        "upload a zip")

    def build_start(self, data_folder: str | None = None, data_zip: str | None = None, budget_hours: float = 0.25,
                    resolution: int = 256, batch_size: int = 8, name: str | None = None,
                    label: str | None = None, overlay: str = "auto") -> str:
        """Start (or resume) a full build in the background: runs/app/NAME becomes a complete model. A build begun in
        runs/app/NAME resumes with its own settings (the dataset, budget, sizes and overlay mode given are then not
        used); an uploaded zip is unpacked into the build's folder, so that it resumes without it."""
        created = None
        try:
            budget = inputs.number(budget_hours, "budget hours", low=BUDGET_HOURS[0], high=BUDGET_HOURS[1])
            batch_size = inputs.number(batch_size, "batch size", whole=True)
            resolution = inputs.number(resolution, "resolution", whole=True)
            data_folder = inputs.text(data_folder, "dataset folder")
            label = inputs.text(label, "label")
            output = self.runs_dir / run_name(inputs.text(name, "run name"))
            begun = begun_build(output)
            if begun is not None:  # the same run name: resume it
                config = replace(begun, label=label)
                config.validate()
                pairs = find_pairs(config.data)
                shown = "its dataset"
            else:
                if output.exists():  # a quick run's folder or a model of that name: a new folder
                    output = output.with_name(f"{output.name}-{time.strftime('%H%M%S')}")
                config = BuildConfig(data="", output=str(output), budget_hours=budget, resolution=resolution,
                                     batch_size=batch_size, name=output.name, label=label, overlay=overlay)
                config.validate()  # before anything is unpacked or written
                zipped = inputs.upload(data_zip, "dataset zip")
                if zipped is not None:
                    created = output
                data, shown = self._dataset(data_folder, zipped, inputs.shown_name(data_zip),
                                            output / BUILD_FOLDER / "data")
                pairs = find_pairs(data)  # fails early, with the library's message
                config = replace(config, data=str(data))
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.job.start_build(config, resumed=begun is not None)
        except Exception as e:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise refusal(e, self.redact, "the full build") from None
        return status_text(self.job.snapshot()) + f"\n\n{len(pairs)} image-mask pairs from {shown}."

    def train_stop(self) -> str:
        """Stop the running training after its current step; the model is saved first."""
        if not self.job.stop():
            gr.Warning("No training run is in progress.")
        return status_text(self.job.snapshot())

    def train_status(self) -> dict:
        """The training run as JSON: state (idle, running, stopping, finished, stopped, failed), step, max_steps,
        it_per_s, eta_s, output (the run's model id, runs/app/NAME), error, stage (a full build's running stage: name,
        index, total, training; else None), message (Markdown) and losses (one dict
        per metrics row, every ~1/200 of the run, plus the newest step reported in between: the first step, then
        every 10 s)."""
        snap = self.job.snapshot()
        keys = ("state", "step", "max_steps", "it_per_s", "eta_s", "error", "stage")
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

    @staticmethod
    def kind_fields(kind: str | None):
        """The kind of run changed: the quick run's settings (start from, steps, ...) or the full build's (budget,
        label) shown."""
        full = kind in (KINDS[1], "full")
        return gr.update(visible=not full), gr.update(visible=not full), gr.update(visible=full)

    def use_trained(self):
        snap = self.job.snapshot()
        if snap["state"] not in ("finished", "stopped") or not snap["output"]:
            gr.Warning("No finished training run yet.")
            return gr.skip()
        model = self.catalog.public_id(snap["output"]) or self.redact(snap["output"])
        self.models.forget(model)
        return gr.Dropdown(choices=self.catalog.choices(), value=model)


@dataclass
class TrainWidgets:
    kind: gr.Radio
    quick_settings: gr.Column
    quick_steps: gr.Row
    build_settings: gr.Row
    budget_hours: gr.Number
    label: gr.Textbox
    data_folder: gr.Textbox
    data_zip: gr.File
    base_model: gr.Radio
    base_path: gr.Textbox
    max_steps: gr.Number
    base_steps: gr.Number
    batch_size: gr.Number
    overlays_out: gr.Checkbox
    lr: gr.Number
    resolution: gr.Dropdown
    checkpoint_every: gr.Number
    preview_every: gr.Number
    name: gr.Textbox
    start: gr.Button
    stop: gr.Button
    use: gr.Button
    status: gr.Markdown
    losses: gr.LinePlot
    preview: gr.Image
    timer: gr.Timer


def build(tab: TrainTab) -> TrainWidgets:
    """The tab's content (inside the page's gr.Tab)."""
    disabled = tab.training_disabled
    if disabled:
        gr.Markdown(f"⚠️ {disabled}")
    with gr.Row():
        with gr.Column():
            data_folder = gr.Textbox(label="Dataset folder on the server",
                                     placeholder="e.g. data/kvasir-seg, in the server's data folder "
                                                 "(images/ + masks/, or prompt.json)")
            data_zip = gr.File(label="...or upload a dataset zip (images/ + masks/)", file_types=[".zip"],
                               type="filepath")
            kind = gr.Radio(list(KINDS), value=KINDS[0], label="What to train",
                            info="the full model runs every stage of the bundled models' recipe (UNet, Siamese "
                                 "stages, decoder, scorer, guide, settings sweep, evaluation, card) in the budget; "
                                 "stopped, it resumes when started again with the same run name")
            with gr.Column() as quick_settings:
                base_model = gr.Radio(list(BASE_MODELS), value=BASE_MODELS[0], label="Start from")
                base_path = gr.Textbox(label="Stable Diffusion 1.5 folder or hub id",
                                       placeholder="e.g. stable-diffusion-v1-5/stable-diffusion-v1-5")
            with gr.Row(visible=False) as build_settings:
                budget_hours = gr.Number(0.25, label=f"Budget (hours on 2 idle CPU cores; {REFERENCE_HOURS:.1f}: the "
                                               "polyp model's full recipe at 256 px)",
                                         minimum=BUDGET_HOURS[0], maximum=BUDGET_HOURS[1])
                label = gr.Textbox(label="What it makes (its name in the model selector)",
                                   placeholder="e.g. skin lesions (dermoscopy)")
            with gr.Row() as quick_steps:
                max_steps = gr.Number(200, label="Steps", precision=0, minimum=1)
                base_steps = gr.Number(200, label="UNet pre-training steps (from scratch)", precision=0, minimum=0)
                lr = gr.Number(1e-4, label="Learning rate", minimum=0)
                checkpoint_every = gr.Number(100, label="Checkpoint every", precision=0, minimum=1)
                preview_every = gr.Number(50, label="Preview every (0: never)", precision=0, minimum=0)
            with gr.Row():
                resolution = gr.Dropdown([64, 128, 256, 384, 512], value=256, label="Resolution")
                batch_size = gr.Number(4, label="Batch size", precision=0, minimum=1)
            overlays_out = gr.Checkbox(True, label="Leave on-screen overlays out of the loss",
                                       info="text, dates, marker dashes and static labels that the frames share "
                                            "(found in the dataset; none on data without them)")
            name = gr.Textbox(label="Run name (saved in runs/app/NAME)", placeholder="default: run-DATE")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", interactive=not disabled)
                stop = gr.Button("Stop", variant="stop", interactive=not disabled)
                use = gr.Button("Use in Generate")
        with gr.Column():
            status = gr.Markdown(status_text(tab.job.snapshot()), elem_id="train-status", label="Status")
            losses = gr.LinePlot(None, x="step", y="value", color="term", label="Losses", y_title="loss",
                                 color_map=dict(zip(LOSS_KEYS, LOSS_COLORS)), colors_in_legend=list(LOSS_KEYS))
            preview = gr.Image(label="Preview (top: samples, bottom: their training masks)", interactive=False,
                               format="png")
    timer = gr.Timer(POLL_SECONDS, active=False)  # on only while a run is active (train_poll)
    return TrainWidgets(kind, quick_settings, quick_steps, build_settings, budget_hours, label, data_folder, data_zip,
                        base_model, base_path, max_steps, base_steps, batch_size, overlays_out, lr,
                        resolution, checkpoint_every, preview_every, name, start, stop, use, status, losses, preview,
                        timer)


def wire(demo: gr.Blocks, tab: TrainTab, w: TrainWidgets, model: gr.Dropdown, seen: gr.State) -> None:
    """Polled with a timer, never a blocking generator. The timer is on only while a run is active: each poll (on
    load, after Start and Stop, on each tick) switches it on or off; `seen` (the session's gr.State) is the version
    it shows. /train_start runs without Gradio's preprocessing: the handler checks every value."""
    poll = dict(fn=tab.train_poll, inputs=seen, outputs=[w.status, w.losses, w.preview, model, seen, w.timer],
                api_visibility="private", show_progress="hidden", concurrency_limit=None)
    demo.load(**poll)
    w.start.click(tab.train_start, [w.data_folder, w.data_zip, w.base_model, w.base_path, w.max_steps, w.batch_size,
                                    w.lr, w.resolution, w.checkpoint_every, w.preview_every, w.name, model,
                                    w.base_steps, w.kind, w.budget_hours, w.label, w.overlays_out], w.status,
                  api_name="train_start",
                  preprocess=False).success(**poll)
    w.kind.change(tab.kind_fields, w.kind, [w.quick_settings, w.quick_steps, w.build_settings],
                  api_visibility="private")
    w.stop.click(tab.train_stop, None, w.status, api_name="train_stop").then(**poll)
    w.timer.tick(**poll)
    gr.api(tab.train_status, api_name="train_status", concurrency_limit=None)
    w.use.click(tab.use_trained, None, model, api_visibility="private")

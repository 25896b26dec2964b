"""The background training run, one at a time: `siamese.train.train` (the quick two-stage run) or `siamese.build.build`
(the full model: every stage of the bundled models' recipe) in a thread, its events turned into the state, message,
stage, losses and preview the Train tab shows (`studio.tabs.train`).

The job keeps server paths to itself: every message it writes goes through `public` (a Redactor), which shows
the run folder as `runs/app/NAME`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from siamese import DataError, ModelLoadError
from siamese.build import BuildConfig, BuildStopped, build, planned_stages
from siamese.objective import LOSS_KEYS
from siamese.train import TrainConfig, train

from ..replies import Busy, md_escape, os_reason
from .base import BackgroundJob

logger = logging.getLogger(__name__)

# what each stage of a full build does, for the status (siamese.build's stages)
STAGE_TEXT = {"1-base": "pre-training the UNet alone", "decoder": "fitting the codec's learned decoder",
              "scorer": "training the fidelity scorer", "2-siamese": "training the ControlNet (Siamese objective)",
              "3-biased": "more Siamese steps, the noisiest timesteps favoured",
              "4-locked": "more Siamese steps, the UNet decoder locked", "assemble": "assembling the model",
              "sweep": "choosing the recommended settings on the held-out pairs", "ship": "saving the model",
              "evaluate": "evaluating it on the held-out pairs (the model card's figures)"}


class TrainingJob(BackgroundJob):
    """One training run at a time, in a background thread; the page polls `snapshot()`."""

    def __init__(self, public: Callable[[str], str] = str) -> None:
        super().__init__("No training run yet.")
        self.public = public  # server paths -> what visitors may see
        self.rows: list[dict] = []
        self.preview = None
        self.step = 0
        self.max_steps = 0
        self._base_steps = 0  # stage 1 (UNet pre-training, from scratch only): its steps come first
        self._pretraining = False
        self._live_tail = False  # the last row is a live log event (between metrics rows): replaced by the next
        self.it_per_s = 0.0
        self.eta_s = 0.0
        self.output: str | None = None
        self._tmp: Path | None = None
        self.stage: dict | None = None  # a full build's stage: name, index, total (None: a quick run)
        self._build: dict | None = None  # a full build: its output, planned steps and timings (None: a quick run)

    def start(self, config: TrainConfig, tmp: Path | None = None,
              prepare: Callable[[TrainConfig], TrainConfig] | None = None) -> None:
        """Run `train(config)` in a thread; `prepare` (e.g. fetching a hub base model) runs there first, and
        the folder `tmp` (an unpacked upload) is removed when the run ends."""
        with self._lock:
            if self.running:
                raise Busy("a training run is already in progress: stop it first")
            self.state, self.rows, self.preview, self.error = "running", [], None, ""
            self._live_tail = False
            self.step, self.max_steps, self.it_per_s, self.eta_s = 0, config.base_steps + config.max_steps, 0.0, 0.0
            self._base_steps, self._pretraining = config.base_steps, False
            self.output, self._tmp = config.output, tmp
            self.stage, self._build = None, None
            where = self.public(config.output)
            self.message = f"Starting: loading the data and building the model for `{where}`..."
            work = lambda: train(prepare(config) if prepare else config, callback=self._on_event,  # noqa: E731
                                 stop=self._stop)
            self._launch(self._run, (work,), "siamese-train")

    def start_build(self, config: BuildConfig, resumed: bool = False) -> None:
        """Run `siamese.build.build(config)` in a thread: every stage of a complete model, into config.output (a build
        begun there resumes from its last finished stage and checkpoint)."""
        plan = planned_stages(config)  # a resumed build's own (ValueError, before any state changes)
        with self._lock:
            if self.running:
                raise Busy("a training run is already in progress: stop it first")
            self.state, self.rows, self.preview, self.error = "running", [], None, ""
            self._live_tail = False
            self.step, self.max_steps, self.it_per_s, self.eta_s = 0, 0, 0.0, 0.0
            self._base_steps, self._pretraining = 0, False
            self.output, self._tmp, self.stage = None, None, None
            # the training stages' steps (a stage may end before its schedule: stop_at)
            steps = {name: s["stop_at"] or s["max_steps"] for name, s in plan.items() if "objective" in s}
            self._build = dict(output=config.output, steps=steps, planned_s=0.0, stage_s=0.0, t0=time.monotonic(),
                               x0=0, x_end=0)
            where = self.public(config.output)
            self.message = (f"{'Resuming' if resumed else 'Starting'} the full build of `{where}`: checking the "
                            "data...")
            self._launch(self._run, (lambda: self._run_build(config),), "siamese-build")

    def stop(self) -> bool:
        if self.stage is None:  # a quick run (or a build before its first stage)
            return self._stop_with(f"Stopping after step {self.step + 1}; the model is saved first...")
        if self.stage["training"]:
            text = (f"Stopping stage {self.stage['name']} after step {self.step + 1}; its checkpoint is saved first "
                    "(start the same full build again to resume)...")
        elif self.stage["name"] == "sweep":
            text = ("Stopping the settings sweep after the setting it is measuring; the measured ones are kept "
                    "(start the same full build again to resume)...")
        elif self.stage["name"] == "evaluate":
            text = ("Stopping the evaluation now; it starts over when the same full build is started again "
                    "(the model itself is finished)...")
        else:
            text = (f"Stopping after stage {self.stage['name']} (it does not stop midway; start the same full build "
                    "again to resume)...")
        return self._stop_with(text)

    def _run_build(self, config: BuildConfig) -> None:
        try:
            out = build(config, callback=self._on_event, stop=self._stop)
        except BuildStopped:
            with self._lock:
                self.state, self.it_per_s, self.eta_s = "stopped", 0.0, 0.0
                where = (f"in stage {self.stage['index']}/{self.stage['total']}: {self.stage['name']}" if self.stage
                         else "before its first stage")
                self.message = (f"Stopped {where}. Start the full build again with the same run name "
                                f"(`{Path(config.output).name}`) to resume it: its finished stages and checkpoints "
                                f"are kept in `{self.public(config.output)}`.")
                self.version += 1
            return
        with self._lock:
            self.state, self.output, self.it_per_s, self.eta_s = "finished", str(out), 0.0, 0.0
            self.message = (f"Finished: the model built in `{self.public(str(out))}` (with its model card, evaluation "
                            "and example masks) is listed in the model selector.")
            self.version += 1

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except (DataError, ModelLoadError, ValueError) as e:
            self._fail(str(e))
        except OSError as e:  # its text names server files: the reason only
            logger.exception("training failed")
            self._fail(f"a file could not be read or written ({os_reason(e)})")
        except Exception as e:  # noqa: BLE001 - a failed run must not take the server down
            logger.exception("training failed")
            self._fail(f"{type(e).__name__}: {e}")
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def _fail(self, text: str) -> None:
        with self._lock:
            text = " ".join(self.public(text).split())
            self.state, self.error = "failed", text
            self.message = f"Training failed: {md_escape(text)}"
            self.version += 1

    def _on_event(self, event: dict) -> None:
        if self._build is not None:
            return self._on_build_event(event)
        with self._lock:
            kind = event["type"]
            if kind == "start":
                self._pretraining = bool(self._base_steps) and event["stage"] == "base"
            pretraining = self._pretraining
            offset = 0 if pretraining else self._base_steps  # stage 2 counts on from stage 1
            if kind == "start":
                self.state = "stopping" if self._stop.is_set() else "running"
                self.step = offset + event["step"]
                if not pretraining:
                    self.max_steps = offset + event["max_steps"]
                where = self.public(event["output"])
                self.message = (f"Stage 1 of 2: pre-training the UNet alone in `{where}`..." if pretraining
                                else f"Training `{where}`...")
            elif kind == "log":
                rate = event["it_per_s"]  # smoothed: single steps vary a lot on a busy CPU
                self.it_per_s = rate if not self.it_per_s else 0.8 * self.it_per_s + 0.2 * rate
                self.step = offset + event["step"]
                self.eta_s = (self.max_steps - self.step) / max(self.it_per_s, 1e-9)
                # stage 1 logs the four Siamese terms as 0 (as its metrics.csv does): a plot keeps the
                # terms of its first frame, so every line must be there from the start
                row = {"step": self.step, **{k: event[k] for k in LOSS_KEYS if k in event}}
                if self.rows and self._live_tail:  # the curve keeps the metrics rows and only the latest live point
                    self.rows[-1] = row
                else:
                    self.rows.append(row)
                self._live_tail = not event.get("row", True)
            elif kind == "preview":
                self.preview = event["image"]
            elif kind == "checkpoint":
                self.step = offset + event["step"]
            elif kind == "end" and pretraining and not event["stopped"]:
                pass  # stage 2 follows
            elif kind == "end":
                self.step, self.output = offset + event["step"], event["output"]
                self.state = "stopped" if event["stopped"] else "finished"
                verb = "Stopped" if event["stopped"] else "Finished"
                what = ("the pre-trained UNet (no ControlNet yet: it cannot generate) is saved in" if pretraining
                        else "the model is saved in")
                self.message = (f"{verb} at step {self.step}: {what} `{self.public(event['output'])}` "
                                "and listed in the model selector.")
            self.version += 1

    def _on_build_event(self, event: dict) -> None:
        """A full build's event: a new stage, a training stage's event (its "stage" is the build's stage), the sweep's
        progress. The curves run on across the training stages (each starts where the last one ended)."""
        with self._lock:
            b, kind = self._build, event["type"]
            if kind == "stage":
                name = event["stage"]
                self.stage = dict(name=name, index=event["index"], total=event["total"], training=name in b["steps"])
                b.update(planned_s=event["eta_s"], stage_s=event.get("stage_s", 0.0), t0=time.monotonic())
                b["x0"] = b["x_end"]
                self._live_tail = False  # a stage's latest point stays on the curve when the next stage begins
                self.step, self.max_steps = 0, b["steps"].get(name, 0)
                self.it_per_s = 0.0
                self.state = "stopping" if self._stop.is_set() else "running"
                self.message = (f"Building `{self.public(b['output'])}`: stage {event['index']}/{event['total']}: "
                                f"{name}, {STAGE_TEXT.get(name, name)}...")
            elif kind == "log":
                rate = event["it_per_s"]
                self.it_per_s = rate if not self.it_per_s else 0.8 * self.it_per_s + 0.2 * rate
                self.step = event["step"]
                x = b["x0"] + self.step
                row = {"step": x, "stage": event.get("stage", ""), **{k: event[k] for k in LOSS_KEYS if k in event}}
                if self.rows and self._live_tail:
                    self.rows[-1] = row
                else:
                    self.rows.append(row)
                self._live_tail = not event.get("row", True)
                b["x_end"] = max(b["x_end"], x)
            elif kind in ("start", "checkpoint", "end"):
                self.step = event["step"]
                if kind == "start" and not self.max_steps:
                    self.max_steps = event["max_steps"]
            elif kind == "preview":
                self.preview = event["image"]
            elif kind == "sweep":
                self.step, self.max_steps = event["done"], event["total"]
            self.eta_s = self._build_eta()
            self.version += 1

    def _build_eta(self) -> float:
        """Seconds left of the whole build: the running stage's steps at the measured speed (else its planned time
        less the time it has run), then the later stages' planned time (on 2 idle cores)."""
        b = self._build
        later = max(0.0, b["planned_s"] - b["stage_s"])
        if self.it_per_s and self.max_steps and self.stage and self.stage["training"]:
            return later + max(0, self.max_steps - self.step) / self.it_per_s
        return later + max(0.0, b["stage_s"] - (time.monotonic() - b["t0"]))

    def snapshot(self) -> dict:
        with self._lock:
            return dict(version=self.version, state=self.state, message=self.message, rows=list(self.rows),
                        preview=self.preview, step=self.step, max_steps=self.max_steps, it_per_s=self.it_per_s,
                        eta_s=self.eta_s, output=self.output, error=self.error,
                        stage=dict(self.stage) if self.stage else None)


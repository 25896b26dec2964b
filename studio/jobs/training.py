"""The background training run, one at a time: `siamese.train.train` in a thread, its events turned into the state,
message, losses and preview the Train tab shows (`studio.tabs.train`).

The job keeps server paths to itself: every message it writes goes through `public` (a Redactor), which shows
the run folder as `runs/app/NAME`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from siamese import DataError, ModelLoadError
from siamese.objective import LOSS_KEYS
from siamese.train import TrainConfig, train

from ..replies import Busy, md_escape, os_reason
from .base import BackgroundJob

logger = logging.getLogger(__name__)


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
            where = self.public(config.output)
            self.message = f"Starting: loading the data and building the model for `{where}`..."
            self._launch(self._run, (config, prepare), "siamese-train")

    def stop(self) -> bool:
        return self._stop_with(f"Stopping after step {self.step + 1}; the model is saved first...")

    def _run(self, config: TrainConfig, prepare: Callable[[TrainConfig], TrainConfig] | None) -> None:
        try:
            train(prepare(config) if prepare else config, callback=self._on_event, stop=self._stop)
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

    def snapshot(self) -> dict:
        with self._lock:
            return dict(version=self.version, state=self.state, message=self.message, rows=list(self.rows),
                        preview=self.preview, step=self.step, max_steps=self.max_steps, it_per_s=self.it_per_s,
                        eta_s=self.eta_s, output=self.output, error=self.error)


"""`Studio`: the app without its page. What all sessions share (the settings, the model catalogue and its loaded
models, the scratch folder, the training job, the sessions' batches and the turns at the models) and each part
of the page's handlers, built on what they use (testable without a server).

Per-browser-session data (results, the kept collection) lives in gr.State and is passed in and out; a session's
batch lives on the server (`studio.jobs.batch`), found by the key its page keeps.
"""

from __future__ import annotations

from pathlib import Path

from siamese import default_model

from .catalog import ModelCatalog, ModelStore
from .frames import example_frames
from .jobs.base import Turns
from .jobs.batch import BatchRegistry
from .jobs.training import TrainingJob
from .masks import example_masks
from .replies import Redactor
from .scratch import Scratch
from .settings import CHECKPOINTS_DIR, EXAMPLES_DIR, FRAMES_DIR, RUNS_DIR, Settings, device_and_dtype
from .tabs.batch import BatchTab
from .tabs.collection import CollectionTab
from .tabs.generate import GenerateTab
from .tabs.model import ModelSelector
from .tabs.train import TrainTab


class Studio:
    """The shared state and the handlers: `selector` (the model selector), `generate`, `collection`, `train` and
    `batch` (the tabs). `settings`: else from the environment."""

    def __init__(self, model_path: str | None = None, checkpoints_dir: Path = CHECKPOINTS_DIR,
                 runs_dir: Path = RUNS_DIR, examples_dir: Path = EXAMPLES_DIR,
                 settings: Settings | None = None, frames_dir: Path = FRAMES_DIR) -> None:
        self.settings = settings or Settings.from_env()
        self.default = str(model_path or default_model())
        self.checkpoints_dir, self.runs_dir = Path(checkpoints_dir), Path(runs_dir)
        self.catalog = ModelCatalog(self.default, self.checkpoints_dir, self.runs_dir, self.settings.models_root,
                                    self.settings.allow_hub)
        self.redact = Redactor([*self.catalog.redactor_names(), (self.settings.data_root, "")])
        self.models = ModelStore(self.catalog, self.redact, *device_and_dtype())
        self.scratch = Scratch()  # every file visitors' requests make
        self.turns = Turns()  # Generate before batch steps
        self.job = TrainingJob(public=self.redact)
        self.batches = BatchRegistry(self.scratch.path / "batches", self.settings.batch_max_active,
                                     public=self.redact)

        self.selector = ModelSelector(self.catalog, self.models)
        self.generate = GenerateTab(self.catalog, self.models, self.scratch, self.turns, self.redact,
                                    example_masks(Path(examples_dir)), example_frames(Path(frames_dir)))
        self.collection = CollectionTab(self.scratch, self.redact)
        self.train = TrainTab(self.settings, self.catalog, self.models, self.job, self.runs_dir, self.scratch,
                              self.redact)
        self.batch = BatchTab(self.settings, self.catalog, self.models, self.scratch, self.redact, self.batches,
                              self.turns)

    def preload(self) -> None:
        """Load the default model in the background so the first generation starts at once."""
        self.selector.preload()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the batches (their pairs are visitors' files) and remove the scratch folder; a training run goes on
        writing its own folder until the process ends (it resumes from its last checkpoint)."""
        self.batches.stop_all(timeout)
        self.scratch.cleanup()

"""`Studio`: the app's state shared by all sessions (settings, models, the training job) and its handlers.

Per-browser-session data (results, the kept collection) lives in gr.State and is passed in and out. The
handlers are grouped by concern in their modules; `Studio` holds what they share.
"""

from __future__ import annotations

from pathlib import Path

from siamese import default_model

from .collection import CollectionHandlers
from .generate import GenerateHandlers, PngFolder
from .job import TrainingJob
from .masks import example_masks
from .messages import Redactor
from .models import ModelCatalog, ModelHandlers, ModelStore
from .settings import CHECKPOINTS_DIR, EXAMPLES_DIR, RUNS_DIR, Settings, device_and_dtype
from .training import TrainingHandlers


class Studio(ModelHandlers, GenerateHandlers, CollectionHandlers, TrainingHandlers):
    """Every handler of the page, as methods (testable without a server). `settings`: else from the environment."""

    def __init__(self, model_path: str | None = None, checkpoints_dir: Path = CHECKPOINTS_DIR,
                 runs_dir: Path = RUNS_DIR, examples_dir: Path = EXAMPLES_DIR,
                 settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.default = str(model_path or default_model())
        self.checkpoints_dir, self.runs_dir = Path(checkpoints_dir), Path(runs_dir)
        self.catalog = ModelCatalog(self.default, self.checkpoints_dir, self.runs_dir, self.settings.models_root,
                                    self.settings.allow_hub)
        self.redact = Redactor([*self.catalog.redactor_names(), (self.settings.data_root, "")])
        self.examples = example_masks(Path(examples_dir))
        self.models = ModelStore(self.catalog, self.redact, *device_and_dtype())
        self.pngs = PngFolder()
        self.job = TrainingJob(public=self.redact)

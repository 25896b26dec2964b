"""`Studio`: the app's state shared by all sessions (settings, models, the training job, the sessions' batches)
and its handlers.

Per-browser-session data (results, the kept collection) lives in gr.State and is passed in and out; a session's
batch lives on the server (`studio.batch_job`), found by the key its page keeps. The handlers are grouped by
concern in their modules; `Studio` holds what they share.
"""

from __future__ import annotations

from pathlib import Path

from siamese import default_model

from siamese.fidelity import load_scorer

from .batch import BatchHandlers
from .batch_job import BatchRegistry
from .collection import CollectionHandlers
from .generate import GenerateHandlers, PngFolder
from .job import TrainingJob
from .masks import example_masks
from .messages import Redactor
from .models import ModelCatalog, ModelHandlers, ModelStore
from .settings import CHECKPOINTS_DIR, EXAMPLES_DIR, RUNS_DIR, Settings, device_and_dtype
from .training import TrainingHandlers
from .turns import Turns


class Studio(ModelHandlers, GenerateHandlers, CollectionHandlers, TrainingHandlers, BatchHandlers):
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
        self.turns = Turns()  # Generate before batch steps (studio.turns)
        self.batches = BatchRegistry(self.pngs.path / "batches", self.settings.batch_max_active, public=self.redact)
        self.load_scorer = load_scorer  # (model folder, device) -> FidelityScorer | None; tests put a fake here
        self._scorers: dict = {}

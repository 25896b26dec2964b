"""The model catalogue: which models the server offers (the access policy), and loading them (with their fidelity
scorers) once for all sessions. No widgets here: the model selector is `studio.tabs.model`.

Visitors see and send public model ids, never server paths. The server offers:

- the default model (`--model`, else $SIAMESE_MODEL, else the bundled one), whatever it is;
- the model folders in `checkpoints/` (the bundled models) as `checkpoints/NAME`;
- the runs trained by this server (`runs/app/`) as `runs/app/NAME`;
- any folder under the models root ($SIAMESE_MODELS_ROOT) as `models/PATH` (or its absolute path);
- hub ids (`owner/name`) only with SIAMESE_ALLOW_HUB=1, fetched from the hub, never a server folder.

Anything else is refused with one message, whatever exists on the server. Folders are compared after
following links, so a link that leads out of these folders is refused too.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from siamese import ModelLoadError, SiameseConfig, load_model
from siamese.fidelity import load_scorer
from siamese.data import EXAMPLES_FOLDER
from siamese.guide import GUIDE_FOLDER
from siamese.model import HUB_ALLOW_PATTERNS, HUB_IGNORE_PATTERNS

from .replies import Redactor, os_reason, shorten

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
MAX_NAME_CHARS = 1000  # a model name longer than this is not one the server offers
MAX_EXAMPLES = 24  # example masks shown of a model's examples/


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "unet").is_dir() and (path / "text_encoder").is_dir()


def model_label(path: Path) -> str:
    """What a model folder says it makes (its siamese_config.json `label`, e.g. "skin lesions (dermoscopy)"), else
    the folder's name (also for a folder whose config does not load: its own error shows when it is selected)."""
    try:
        label = SiameseConfig.load(path).label if path.is_dir() else None
    except (ModelLoadError, ValueError, TypeError, OSError):
        label = None
    return label or path.name


def hub_snapshot(repo_id: str) -> Path:
    """A hub model's local snapshot (downloaded when missing and online), found by repo id only.

    `load_model("owner/name")` prefers a server folder of that relative name; a visitor's hub id must never
    reach one, so the app fetches the snapshot itself (the library's file patterns: no pickles) and loads it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(
            repo_id, allow_patterns=HUB_ALLOW_PATTERNS, ignore_patterns=HUB_IGNORE_PATTERNS,
        ))
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"Hub model '{repo_id}' is not in the server's cache and the hub cannot be "
                             "reached from here") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelLoadError(f"Could not download hub model '{repo_id}': {e}") from None


class ModelNotOffered(ModelLoadError):
    """A model this server does not offer; the message names no server path."""


@dataclass(frozen=True)
class ModelRef:
    """A model the server offers: `location` is what it loads (a server folder or a hub id), `public` what
    visitors see and send."""

    location: str
    public: str
    hub: bool = False


class ModelCatalog:
    """The models this server offers: the selector's choices, and `resolve` for every model a request names."""

    def __init__(self, default: str, checkpoints_dir: Path, runs_dir: Path, models_root: Path | None = None,
                 allow_hub: bool = False) -> None:
        self.default = str(default)
        self.checkpoints_dir, self.runs_dir = Path(checkpoints_dir), Path(runs_dir)
        self.models_root = Path(models_root) if models_root else None
        self.allow_hub = allow_hub
        self._default_is_hub = not Path(self.default).exists() and bool(HUB_ID.fullmatch(self.default))
        self.default_id = (self.default if self._default_is_hub
                           else self.public_id(self.default) or Path(self.default).name or "default")

    def roots(self) -> list[tuple[str, Path, bool]]:
        """(public prefix, server folder, direct children only) for every folder whose models are offered."""
        roots = [("runs/app", self.runs_dir, True), ("checkpoints", self.checkpoints_dir, True)]
        return roots + ([("models", self.models_root, False)] if self.models_root else [])

    def public_id(self, path: str | Path) -> str | None:
        """A server folder -> its public id, or None when it is not in an offered folder."""
        real = Path(path).resolve()
        for prefix, folder, direct in self.roots():
            base = folder.resolve()
            if real != base and real.is_relative_to(base):
                rel = real.relative_to(base)
                if not direct or len(rel.parts) == 1:
                    return f"{prefix}/{rel.as_posix()}"
        return None

    def redactor_names(self) -> list[tuple[Path | str, str]]:
        names = [(folder, prefix) for prefix, folder, _ in self.roots()]
        return names + ([] if self._default_is_hub else [(self.default, self.default_id)])

    def choices(self) -> list[tuple[str, str]]:
        """The selector's (label, id) pairs: the default, then the model folders of checkpoints/, runs/app/ and the
        models root. A folder is shown by its label (`model_label`), with its name too when two share a label."""
        default = Path(self.default)
        available = is_model_folder(default) or self._default_is_hub
        found = [(default, f"default{'' if available else ', not available yet'}", self.default_id)]
        seen = {self.default_id}
        for prefix, folder, where in (("checkpoints", self.checkpoints_dir, "checkpoints"),
                                      ("runs/app", self.runs_dir, "trained here"),
                                      ("models", self.models_root, "models folder")):
            if folder is not None and folder.is_dir():
                for p in sorted(folder.iterdir()):
                    public = self.public_id(p) if is_model_folder(p) else None
                    if public and public not in seen:
                        seen.add(public)
                        found.append((p, where, public))
        labels = [model_label(p) for p, _, _ in found]
        repeated = {label for label in labels if labels.count(label) > 1}
        return [(f"{label}{f' · {p.name}' if label in repeated and label != p.name else ''} ({where})", public)
                for label, (p, where, public) in zip(labels, found)]

    def default_config(self) -> SiameseConfig:
        """The default model's config, read without loading the model (the package defaults for a hub id or a
        folder that cannot load: the sliders follow the model once it loads, or its own error shows)."""
        folder = Path(self.default)
        try:
            return SiameseConfig.load(folder) if folder.is_dir() else SiameseConfig()
        except (ModelLoadError, ValueError, TypeError, OSError):
            return SiameseConfig()

    def examples(self, value: str | None) -> list[Path]:
        """The example masks a model offered here brings (the PNGs of its folder's examples/, which `build` writes),
        or [] (none, a hub model, or a model this server does not offer)."""
        try:
            ref = self.resolve(value or self.default)
        except ModelLoadError:
            return []
        folder = Path(ref.location) / EXAMPLES_FOLDER
        return [] if ref.hub or not folder.is_dir() else sorted(folder.glob("*.png"))[:MAX_EXAMPLES]

    def default_guided(self) -> bool:
        """Whether the default model's folder has a guide (autoguidance), seen without loading the model (True for
        a hub id: the slider follows the model once it loads)."""
        folder = Path(self.default)
        return (folder / GUIDE_FOLDER).is_dir() if folder.is_dir() else True

    def resolve(self, value: str | None) -> ModelRef:
        """The model a request names, if this server offers it; else ModelNotOffered (the same message whether
        or not the name exists on the server)."""
        text = str(value or "").strip()
        if not text:
            raise ModelLoadError("no model selected: pick one in the model selector")
        if len(text) > MAX_NAME_CHARS or any(len(part.encode()) > 255 for part in Path(text).parts):
            raise ModelNotOffered(self.refusal(text))  # no folder of the server has such a name
        if text in (self.default_id, self.default):
            return ModelRef(self.default, self.default_id, hub=self._default_is_hub)
        folder = next((root / text[len(prefix) + 1:] for prefix, root, _ in self.roots()
                       if text.startswith(prefix + "/")), None)
        if folder is None and Path(text).is_absolute():
            folder = Path(text)
        if folder is not None and ".." not in folder.parts:
            try:
                public = self.public_id(folder)
                location = str(folder.resolve())
            except (OSError, RuntimeError):  # a name too long for the file system, a loop of links
                public = None
            if public is not None:
                return ModelRef(location, public)
        elif folder is None and self.allow_hub and HUB_ID.fullmatch(text):
            return ModelRef(text, text, hub=True)
        raise ModelNotOffered(self.refusal(text))

    def refusal(self, text: str) -> str:
        shown = shorten(text)
        other = " or type a folder of the server's models folder as models/NAME" if self.models_root else ""
        hub = "hub ids (owner/name) are allowed" if self.allow_hub else "hub ids are not allowed here"
        return f"'{shown}' is not a model this server offers: pick one in the model selector{other} ({hub})."


class ModelStore:
    """Loaded models by location (the last `capacity` kept) and their fidelity scorers, shared by all sessions; only
    offered models load."""

    def __init__(self, catalog: ModelCatalog, redact: Redactor, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, capacity: int = 2) -> None:
        self.catalog, self.redact = catalog, redact
        self.device, self.dtype, self.capacity = device, dtype, capacity
        self._models: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.load_scorer = load_scorer  # (model folder, device) -> FidelityScorer | None; tests put a fake here
        self._scorers: dict = {}

    def get(self, value: str | None):
        """The model a request names (loaded once); ModelLoadError with a message that shows no server path."""
        try:
            ref = self.catalog.resolve(value)
        except ModelLoadError as e:
            raise type(e)(self.redact(str(e))) from None
        with self._lock:
            if ref.location in self._models:
                self._models.move_to_end(ref.location)
                return self._models[ref.location]
            t0 = time.perf_counter()
            try:
                folder = hub_snapshot(ref.location) if ref.hub else ref.location
                model = load_model(folder, device=self.device, dtype=self.dtype)
            except ModelLoadError as e:
                raise ModelLoadError(self.redact(str(e))) from None
            except OSError as e:  # its text names server files: the reason only
                raise ModelLoadError(f"{ref.public}: the model cannot be read ({os_reason(e)})") from None
            model.source = ref.public  # what generated pairs record: the public id, not the server folder
            logger.info("loaded %s in %.1f s", ref.public, time.perf_counter() - t0)
            self._models[ref.location] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return model

    def forget(self, value: str) -> None:
        try:
            location = self.catalog.resolve(value).location
        except ModelLoadError:
            return
        with self._lock:
            self._models.pop(location, None)

    def scorer(self, value: str | None):
        """The fidelity scorer of the model a request names (loaded once), or None when it has none; a damaged one
        is a ModelLoadError naming its file."""
        ref = self.catalog.resolve(value)
        if ref.location not in self._scorers:
            try:
                folder = hub_snapshot(ref.location) if ref.hub else Path(ref.location)
                self._scorers[ref.location] = self.load_scorer(folder, device=self.device)
            except (ModelLoadError, ValueError, OSError) as e:
                reason = os_reason(e) if isinstance(e, OSError) else self.redact(str(e))
                raise ModelLoadError(f"the model's fidelity scorer (segmenter/) cannot be loaded: {reason}") from None
        return self._scorers[ref.location]

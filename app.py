"""Siamese-Diffusion Studio: draw or upload a mask, generate image-mask pairs, curate, export, train.

    python app.py                      # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
    python app.py --model runs/smoke   # another model folder or hub id (default: $SIAMESE_MODEL, else bundled)

Layout and wiring only: every handler is a small method of `Studio` that calls the `siamese` library,
so it can be tested without a server. Scripts use the stable API names (gradio_client):
`/generate`, `/keep_all`, `/export`, `/train_start`, `/train_stop`, `/train_status`.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no analytics or other calls out
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import zipfile  # noqa: E402
from collections import OrderedDict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path, PurePosixPath  # noqa: E402

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from siamese import (  # noqa: E402
    DataError, Generated, ModelLoadError, SamplingParams, SiameseConfig, augment_mask, default_model, export_zip,
    generate, load_model, read_mask,
)
from siamese.data import binarize_mask, find_pairs  # noqa: E402
from siamese.export import png_bytes  # noqa: E402
from siamese.objective import LOSS_KEYS  # noqa: E402
from siamese.sampling import MAX_CONTROL_SCALE, MAX_SEED, SCHEDULERS, random_seed  # noqa: E402
from siamese.train import TrainConfig, train  # noqa: E402

try:  # Hugging Face Spaces (ZeroGPU): present on a Space, absent locally
    import spaces
except ImportError:
    spaces = None

logger = logging.getLogger("siamese.app")

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "masks"
CHECKPOINTS_DIR = ROOT / "checkpoints"
RUNS_DIR = ROOT / "runs" / "app"

CANVAS = 512  # drawing canvas (square); masks are resized to the model resolution by the library
MAX_MASK_FILE_BYTES = 20 * 2**20
MAX_UPLOAD = os.environ.get("SIAMESE_MAX_UPLOAD", "500mb")  # any upload; Gradio refuses bigger ones
MAX_ZIP_UNPACKED_BYTES = 4 * 2**30
MAX_ZIP_FILES = 100_000
MAX_COLLECTION = 5000
DEFAULTS = dict(scheduler="dpm++", steps=20, guidance_scale=3.0, num_images=4)
BASE_MODELS = ("tiny (from scratch)", "current model (continue training)", "Stable Diffusion 1.5 folder or hub id")


def training_disabled_reason() -> str | None:
    """Why training is off here, or None: an explicit switch, or a ZeroGPU Space (no long GPU jobs)."""
    if os.environ.get("SIAMESE_DISABLE_TRAINING", "").lower() in ("1", "true", "yes"):
        return "Training is disabled on this server (SIAMESE_DISABLE_TRAINING=1). Run the app locally to train."
    if os.environ.get("SPACES_ZERO_GPU"):
        return ("Training is disabled on ZeroGPU Spaces: GPU time comes in short slices, too short for a "
                "training run. Duplicate the Space on a dedicated GPU, or run the app locally to train.")
    return None


def _device() -> tuple[str, torch.dtype]:
    """cuda when present (a GPU Space), else cpu; float32 unless SIAMESE_DTYPE=float16|bfloat16."""
    device = os.environ.get("SIAMESE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(os.environ.get("SIAMESE_DTYPE", ""),
                                                                        torch.float32)
    return device, dtype


# -- masks ----------------------------------------------------------------------------------------
def procedural_mask(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A random lesion-like shape: 1-2 smooth blobs (star-shaped polygons with low-frequency radii)."""
    mask = np.zeros((size, size), np.uint8)
    for _ in range(1 if rng.random() < 0.8 else 2):
        center = rng.uniform(0.3, 0.7, 2) * size
        radius = rng.uniform(0.1, 0.26) * size
        angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        wobble = sum(rng.uniform(0, a) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
                     for k, a in ((2, 0.15), (3, 0.1), (4, 0.05)))
        stretch = rng.uniform(0.7, 1.3)
        xs = center[0] + radius * (1 + wobble) * np.cos(angles) * stretch
        ys = center[1] + radius * (1 + wobble) * np.sin(angles) / stretch
        cv2.fillPoly(mask, [np.stack([xs, ys], 1).round().astype(np.int32)], 1)
    return mask


def draw_example_masks(folder: Path, size: int = 256) -> list[Path]:
    """The example masks of `assets/masks/`: drawn shapes (ellipses, blobs), white lesion on black."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes: dict[str, np.ndarray] = {}
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (128, 120), (46, 40), 0, 0, 360, 255, -1)
    shapes["round"] = m
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (120, 140), (85, 50), 25, 0, 360, 255, -1)
    shapes["oval-large"] = m
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (80, 90), (30, 26), 0, 0, 360, 255, -1)
    cv2.ellipse(m, (176, 170), (22, 20), 0, 0, 360, 255, -1)
    shapes["two-small"] = m
    m = np.zeros((size, size), np.uint8)
    cv2.ellipse(m, (200, 60), (34, 28), -30, 0, 360, 255, -1)
    shapes["corner"] = m
    for name, seed in (("blob-lobulated", 3), ("blob-irregular", 11)):
        shapes[name] = procedural_mask(np.random.default_rng(seed), size) * 255
    paths = []
    for name, arr in shapes.items():
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), arr)
        paths.append(path)
    return paths


def example_masks(folder: Path = EXAMPLES_DIR) -> list[Path]:
    paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    return paths or draw_example_masks(folder)


def painted(layer: np.ndarray) -> np.ndarray:
    """A canvas layer -> (H, W) {0, 1}: painted (alpha > 127) and bright; a layer without alpha: bright."""
    return binarize_mask(np.asarray(layer))


def mask_from_editor(value: dict | None) -> np.ndarray:
    """The mask drawn in the ImageEditor: the union of its painted layer pixels, (H, W) {0, 1}.

    The background is only a backdrop (black, or a reference image) and never part of the mask.
    """
    layers = [np.asarray(x) for x in (value or {}).get("layers") or [] if x is not None]
    if not layers:
        raise DataError("the canvas is empty: pick the Brush and draw the lesion in white, upload a mask "
                        "file, or click an example mask")
    h, w = layers[0].shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for layer in layers:
        if layer.shape[:2] != (h, w):
            layer = cv2.resize(layer, (w, h), interpolation=cv2.INTER_NEAREST)
        mask |= painted(layer)
    if not mask.any():
        raise DataError("the mask is empty: pick the Brush and draw the lesion in white (or upload a mask)")
    return mask


def _backdrop(background: np.ndarray | None) -> np.ndarray:
    """The editor background as (CANVAS, CANVAS, 3) uint8: black when there is none."""
    if background is None:
        return np.zeros((CANVAS, CANVAS, 3), np.uint8)
    bg = np.asarray(background)
    if bg.ndim == 2:
        bg = np.repeat(bg[..., None], 3, 2)
    bg = bg[..., :3].astype(np.uint8)
    if bg.shape[:2] != (CANVAS, CANVAS):
        bg = cv2.resize(bg, (CANVAS, CANVAS), interpolation=cv2.INTER_AREA)
    return bg


def editor_value(mask01: np.ndarray | None, background: np.ndarray | None = None) -> dict:
    """An ImageEditor value: backdrop (black or reference) with the mask as one white RGBA layer."""
    bg = _backdrop(background)
    layers = []
    composite = bg.copy()
    if mask01 is not None:
        m = cv2.resize(np.asarray(mask01, np.uint8), (CANVAS, CANVAS), interpolation=cv2.INTER_NEAREST) > 0
        layer = np.zeros((CANVAS, CANVAS, 4), np.uint8)
        layer[m] = 255
        layers.append(layer)
        composite[m] = 255
    return {"background": bg, "layers": layers, "composite": composite}


def read_mask_upload(path: str | Path | None) -> np.ndarray:
    """An uploaded mask file -> (H, W) {0, 1}, with a clear message for non-images and huge files."""
    if not path:
        raise DataError("no file was uploaded")
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    if size > MAX_MASK_FILE_BYTES:
        raise DataError(f"{path.name} is {size / 2**20:.0f} MB; a mask file may be at most "
                        f"{MAX_MASK_FILE_BYTES // 2**20} MB")
    mask = read_mask(path)
    if not mask.any():
        raise DataError(f"{path.name}: the mask is empty (no white pixels above 127)")
    if mask.all():
        raise DataError(f"{path.name}: the mask is all white; it needs some black background")
    return mask


def outline(image: np.ndarray, mask: np.ndarray, color=(0, 255, 0)) -> np.ndarray:
    """The image with the mask's outline drawn over it (1-2 px, scaled to the image size)."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(image.copy())
    cv2.drawContours(out, contours, -1, color, max(1, image.shape[0] // 160), lineType=cv2.LINE_AA)
    return out


# -- models ---------------------------------------------------------------------------------------
def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "unet").is_dir() and (path / "text_encoder").is_dir()


def list_models(default: str, checkpoints_dir: Path, runs_dir: Path) -> list[tuple[str, str]]:
    """Dropdown choices (label, value): the default model, every model folder under checkpoints/ and runs/app/."""
    choices: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(label: str, value: str) -> None:
        key = str(Path(value).resolve()) if Path(value).exists() else value
        if key not in seen:
            seen.add(key)
            choices.append((label, value))

    available = is_model_folder(Path(default)) or not Path(default).exists() and default.count("/") == 1
    add(f"{Path(default).name} (default{'' if available else ', not available yet'})", default)
    for folder, where in ((checkpoints_dir, "checkpoints"), (runs_dir, "trained here")):
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if is_model_folder(p):
                    add(f"{p.name} ({where})", str(p))
    return choices


class ModelStore:
    """Loaded models by path or hub id (the last `capacity` kept), shared by all sessions."""

    def __init__(self, device: str = "cpu", dtype: torch.dtype = torch.float32, capacity: int = 2) -> None:
        self.device, self.dtype, self.capacity = device, dtype, capacity
        self._models: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str):
        """The model at `path` (loaded once); raises ModelLoadError with the library's message."""
        key = str(path or "").strip()
        if not key:
            raise ModelLoadError("no model selected: pick one in the model selector, or type a folder or hub id")
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            t0 = time.perf_counter()
            model = load_model(key, device=self.device, dtype=self.dtype)
            logger.info("loaded %s in %.1f s", key, time.perf_counter() - t0)
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return model

    def forget(self, path: str) -> None:
        with self._lock:
            self._models.pop(str(path), None)


def model_summary(model) -> str:
    ident = model.identity()
    prompt = model.config.prompt or "(empty)"
    return (f"**{ident['name'] or 'model'}** · {model.config.resolution}×{model.config.resolution} px · "
            f"default prompt: *{prompt}* · recommended mask strength {model.config.control_scale:g} · "
            f"weights `{ident['fingerprint']}` · from `{ident['source']}`")


def _sample(model, mask: np.ndarray, num_images: int, seed: int, params: SamplingParams, callback, source: str):
    return generate(model, mask, num_images=num_images, seed=seed, params=params, batch_size=4,
                    callback=callback, source=source)


if spaces is not None:  # a GPU slice per generation on ZeroGPU; a no-op elsewhere
    _sample = spaces.GPU(duration=120)(_sample)


# -- curation -------------------------------------------------------------------------------------
@dataclass
class Shot:
    """A generated pair plus its PNG file (parameters in the PNG text) for the galleries."""

    item: Generated
    png: str
    outlined: str | None = None


class PngFolder:
    """Where gallery PNGs are written (a temporary folder; Gradio copies them into its cache)."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="siamese-app-")
        self.path = Path(self._tmp.name)

    def write(self, array: np.ndarray, params: dict | None) -> str:
        path = self.path / f"{uuid.uuid4().hex}.png"
        path.write_bytes(png_bytes(array, params))
        return str(path)

    def shot(self, item: Generated) -> Shot:
        return Shot(item, self.write(item.image, item.params))

    def shown(self, shot: Shot, with_outline: bool) -> str:
        if not with_outline:
            return shot.png
        if shot.outlined is None:
            shot.outlined = self.write(outline(shot.item.image, shot.item.mask), shot.item.params)
        return shot.outlined


def _caption(shot: Shot) -> str:
    return f"seed {shot.item.seed}"


def _index(selected, items: list) -> int | None:
    """A gallery selection as a valid index; a single item counts as selected."""
    if isinstance(selected, int) and 0 <= selected < len(items):
        return selected
    return 0 if len(items) == 1 else None


# -- training -------------------------------------------------------------------------------------
def safe_extract_zip(path: str | Path, dest: Path, max_bytes: int = MAX_ZIP_UNPACKED_BYTES,
                     max_files: int = MAX_ZIP_FILES) -> Path:
    """Extract a dataset zip into `dest`, refusing absolute paths, `..`, links and oversized archives.

    Returns the dataset folder inside: the shallowest folder with images/ + masks/ or prompt.json.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path.name} is not a readable zip file ({e})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
        if len(infos) > max_files:
            raise DataError(f"{path.name} holds {len(infos)} files; at most {max_files} are accepted")
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise DataError(f"{path.name} unpacks to {total / 2**30:.1f} GB; at most {max_bytes / 2**30:.0f} GB "
                            "are accepted")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        written = 0
        for info in infos:
            name = info.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or is_link:
                raise DataError(f"{path.name}: refusing the unsafe entry '{info.filename}' (absolute path, "
                                "'..' or link)")
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise DataError(f"{path.name}: refusing the entry '{info.filename}' outside the archive folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:  # the sizes in the header may lie
                        raise DataError(f"{path.name} unpacks to more than {max_bytes / 2**30:.0f} GB")
                    out.write(chunk)
    candidates = [p for p in [root, *sorted(root.rglob("*"))] if p.is_dir()
                  and ((p / "prompt.json").is_file() or ((p / "images").is_dir() and (p / "masks").is_dir()))]
    if not candidates:
        raise DataError(f"{path.name}: no dataset inside (expected images/ and masks/ folders, or prompt.json)")
    return min(candidates, key=lambda p: len(p.parts))


def run_name(text: str | None) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (text or "").strip()).strip(".-")
    return name or time.strftime("run-%Y%m%d-%H%M%S")


class TrainingJob:
    """One training run at a time, in a background thread; the page polls `snapshot()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.version = 0  # bumped on every change the page shows
        self.state = "idle"  # idle | running | stopping | finished | stopped | failed
        self.message = "No training run yet."
        self.rows: list[dict] = []
        self.preview = None
        self.step = 0
        self.max_steps = 0
        self._base_steps = 0  # stage 1 (UNet pre-training, from scratch only): its steps come first
        self._pretraining = False
        self.it_per_s = 0.0
        self.eta_s = 0.0
        self.output: str | None = None
        self.error = ""
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, config: TrainConfig, tmp: tempfile.TemporaryDirectory | None = None) -> None:
        with self._lock:
            if self.running:
                raise RuntimeError("a training run is already in progress: stop it first")
            self._stop = threading.Event()
            self.state, self.rows, self.preview, self.error = "running", [], None, ""
            self.step, self.max_steps, self.it_per_s, self.eta_s = 0, config.base_steps + config.max_steps, 0.0, 0.0
            self._base_steps, self._pretraining = config.base_steps, False
            self.output, self._tmp = config.output, tmp
            self.message = f"Starting: loading the data and building the model for `{config.output}`..."
            self.version += 1
            self._thread = threading.Thread(target=self._run, args=(config,), name="siamese-train", daemon=True)
            self._thread.start()

    def stop(self) -> bool:
        with self._lock:
            if not self.running:
                return False
            self._stop.set()
            self.state = "stopping"
            self.message = f"Stopping after step {self.step + 1}; the model is saved first..."
            self.version += 1
            return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, config: TrainConfig) -> None:
        try:
            train(config, callback=self._on_event, stop=self._stop)
        except (DataError, ModelLoadError, ValueError) as e:
            self._fail(str(e))
        except Exception as e:  # noqa: BLE001 - a failed run must not take the server down
            logger.exception("training failed")
            self._fail(f"{type(e).__name__}: {e}")
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def _fail(self, text: str) -> None:
        with self._lock:
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
                self.message = (f"Stage 1 of 2: pre-training the UNet alone in `{event['output']}`..." if pretraining
                                else f"Training `{event['output']}`...")
            elif kind == "log":
                rate = event["it_per_s"]  # smoothed: single steps vary a lot on a busy CPU
                self.it_per_s = rate if not self.it_per_s else 0.8 * self.it_per_s + 0.2 * rate
                self.step = offset + event["step"]
                self.eta_s = (self.max_steps - self.step) / max(self.it_per_s, 1e-9)
                # stage 1 logs the four Siamese terms as 0 (as its metrics.csv does): a plot keeps the
                # terms of its first frame, so every line must be there from the start
                self.rows.append({"step": self.step, **{k: event[k] for k in LOSS_KEYS if k in event}})
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
                self.message = (f"{verb} at step {self.step}: {what} `{event['output']}` "
                                "and listed in the model selector.")
            self.version += 1

    def snapshot(self) -> dict:
        with self._lock:
            return dict(version=self.version, state=self.state, message=self.message, rows=list(self.rows),
                        preview=self.preview, step=self.step, max_steps=self.max_steps, it_per_s=self.it_per_s,
                        eta_s=self.eta_s, output=self.output, error=self.error)


def md_escape(text: str) -> str:
    """Plain text shown in a Markdown component: no accidental bold, links or code."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", text)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def status_text(snap: dict) -> str:
    icon = {"idle": "", "running": "⏳ ", "stopping": "⏳ ", "finished": "✅ ", "stopped": "⏹️ ",
            "failed": "❌ "}[snap["state"]]
    text = icon + snap["message"]
    if snap["state"] in ("running", "stopping") and snap["max_steps"]:
        text += f"\n\nStep **{snap['step']} / {snap['max_steps']}**"
        if snap["it_per_s"]:
            text += f" · {snap['it_per_s']:.2f} it/s · ETA {_duration(snap['eta_s'])}"
    if snap["rows"]:
        last = snap["rows"][-1]
        text += "\n\n" + " · ".join(f"{k} {last[k]:.4g}" for k in LOSS_KEYS if k in last)
    return text


LOSS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f")


def loss_frame(rows: list[dict]) -> pd.DataFrame:
    """Loss rows -> long format (step, value, term) for the line plot."""
    records = [(r["step"], float(r[k]), k) for r in rows for k in LOSS_KEYS if k in r]
    steps, values, terms = zip(*records) if records else ((), (), ())
    # typed even when empty, so the plot's axes are numeric from the start
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "value": pd.Series(values, dtype="float64"),
                         "term": pd.Series(terms, dtype="str")})


# -- the handlers ---------------------------------------------------------------------------------
def _user_error(e: Exception) -> gr.Error:
    return gr.Error(str(e), title="Input problem" if isinstance(e, (DataError, ValueError)) else "Error")


class Studio:
    """The app's state shared by all sessions (models, the training job) and its handlers.

    Per-browser-session data (results, the kept collection) lives in gr.State and is passed in and out.
    """

    def __init__(self, model_path: str | None = None, checkpoints_dir: Path = CHECKPOINTS_DIR,
                 runs_dir: Path = RUNS_DIR, examples_dir: Path = EXAMPLES_DIR) -> None:
        self.default = str(model_path or default_model())
        self.checkpoints_dir, self.runs_dir = Path(checkpoints_dir), Path(runs_dir)
        self.examples = example_masks(Path(examples_dir))
        self.models = ModelStore(*_device())
        self.pngs = PngFolder()
        self.job = TrainingJob()
        self.training_disabled = training_disabled_reason()

    # -- models
    def model_choices(self) -> list[tuple[str, str]]:
        return list_models(self.default, self.checkpoints_dir, self.runs_dir)

    def refresh_models(self, model: str | None = None):
        """The model selector with a fresh list of folders (the selection kept)."""
        return gr.Dropdown(choices=self.model_choices(), value=model or self.default)

    def default_control_scale(self) -> float:
        """The default model's recommended mask strength, read from its config without loading it
        (1 for a hub id: the slider follows the model once it loads)."""
        folder = Path(self.default)
        try:
            return SiameseConfig.load(folder).control_scale if folder.is_dir() else 1.0
        except (ModelLoadError, ValueError, TypeError, OSError):
            return 1.0  # the model's own error shows when it loads

    def model_info(self, model: str | None):
        """Load the selected model: its description and its recommended mask strength for the slider;
        a clear message (not a crash, the slider left alone) when it cannot load."""
        try:
            m = self.models.get(model)
        except ModelLoadError as e:
            gr.Warning(str(e), title="Model not loaded")
            return f"⚠️ {md_escape(str(e))}", gr.Slider()
        return model_summary(m), gr.Slider(value=m.config.control_scale)

    def preload(self) -> None:
        """Load the default model in the background so the first generation starts at once."""
        def work():
            try:
                self.models.get(self.default)
            except Exception as e:  # noqa: BLE001 - reported when the model is used
                logger.warning("default model not loaded: %s", e)
        threading.Thread(target=work, name="siamese-preload", daemon=True).start()

    # -- the mask canvas
    def example_gallery(self) -> list[tuple[str, str]]:
        return [(str(p), p.stem) for p in self.examples]

    def use_example(self, editor: dict | None, evt: gr.SelectData) -> dict:
        return editor_value(read_mask(self.examples[evt.index]), (editor or {}).get("background"))

    def random_mask(self, editor: dict | None) -> dict:
        """An augmented example mask (flip, scale, rotate, shift) or a procedural blob."""
        rng = np.random.default_rng()
        if rng.random() < 0.5:
            mask = augment_mask(read_mask(self.examples[rng.integers(len(self.examples))]), rng)
        else:
            mask = procedural_mask(rng)
        return editor_value(mask, (editor or {}).get("background"))

    def upload_mask(self, file: str | None, editor: dict | None):
        """A mask file -> binarised and shown on the canvas (over the reference image, if any).

        Returns the editor value and None for the file box (ready for the next file)."""
        if not file:
            return gr.skip(), None
        try:
            mask = read_mask_upload(file)
        except DataError as e:
            gr.Warning(str(e).replace(str(Path(file).parent) + os.sep, ""), title="Not a usable mask")
            return gr.skip(), None
        return editor_value(mask, (editor or {}).get("background")), None

    def set_reference(self, reference: np.ndarray | None, editor: dict | None) -> dict:
        """Show a reference image under the drawing (or a black canvas again); the strokes are kept."""
        try:
            mask = mask_from_editor(editor)
        except DataError:
            mask = None
        return editor_value(mask, reference)

    def clear_canvas(self, editor: dict | None) -> dict:
        return editor_value(None, (editor or {}).get("background"))

    def prepare(self, editor: dict | None, seed: float | None, randomize: bool) -> tuple[np.ndarray, int]:
        """Step 1 of the Generate button: the canvas -> the binary mask (0/255) sent to /generate, and the seed."""
        try:
            mask = mask_from_editor(editor)
        except DataError as e:
            raise _user_error(e) from None
        if mask.all():
            raise gr.Error("the mask is all white: it needs some black background too", title="Input problem")
        seed = random_seed() if randomize or seed is None or seed < 0 else int(seed)
        return mask * 255, seed

    # -- generation (the /generate API)
    def generate(self, mask: np.ndarray | None, prompt: str | None = None, num_images: int = 4, steps: int = 20,
                 guidance_scale: float = 3.0, seed: int | None = None, scheduler: str = "dpm++",
                 model: str | None = None, show_outline: bool = False, results: list | None = None,
                 control_scale: float | None = None, progress=gr.Progress()):
        """Generate images for one mask. Returns the gallery (PNG files with the parameters in their text),
        the session's new results and a status line. `seed` None or negative: random; image i has seed + i;
        an empty prompt uses the model's default; `control_scale` multiplies the ControlNet's residuals
        (how strongly the mask acts; 1: as trained; None: the model's recommended value)."""
        if mask is None:
            raise gr.Error("no mask: draw one, upload a mask file or click an example", title="Input problem")
        try:
            m = self.models.get(model or self.default)
            params = SamplingParams(prompt=(prompt or "").strip() or None, steps=int(steps),
                                    guidance_scale=float(guidance_scale), scheduler=str(scheduler),
                                    control_scale=None if control_scale is None else float(control_scale))
            base = random_seed() if seed is None or int(seed) < 0 else int(seed)
            t0 = time.perf_counter()
            progress((0, int(num_images) * int(steps)), desc="Sampling", unit="steps")
            items = _sample(m, np.asarray(mask), int(num_images), base, params,
                            lambda done, total: progress((done, total), desc="Sampling", unit="steps"), "studio")
        except (DataError, ModelLoadError, ValueError) as e:
            raise _user_error(e) from None
        shots = [self.pngs.shot(it) for it in items]
        took = time.perf_counter() - t0
        status = (f"{len(shots)} images in {took:.1f} s · seeds {shots[0].item.seed}–{shots[-1].item.seed} · "
                  f"{params.scheduler}, {params.steps} steps, guidance {params.guidance_scale:g}, "
                  f"mask strength {items[0].params['control_scale']:g}. "
                  "Click an image, then Keep or Discard.")
        return self.render(shots, show_outline), shots, status

    def render(self, shots: list[Shot] | None, show_outline: bool = False) -> list[tuple[str, str]]:
        return [(self.pngs.shown(s, bool(show_outline)), _caption(s)) for s in shots or []]

    def results_view(self, shots: list[Shot], show_outline: bool = False, selected: int | None = None):
        return gr.Gallery(value=self.render(shots, show_outline), selected_index=selected)

    # -- curation (per session)
    def collection_view(self, collection: list[Shot]):
        n = len(collection)
        label = f"Kept pairs: {n}"
        return (gr.Gallery(value=[(s.png, f"#{i + 1} · seed {s.item.seed}") for i, s in enumerate(collection)],
                           label=label, selected_index=None),
                f"**{n}** pair{'s' if n != 1 else ''} kept in this session" + ("" if n else " — nothing yet"),
                gr.DownloadButton(value=None, label="Download zip (prepare it first)", interactive=False))

    def keep(self, results: list[Shot], collection: list[Shot], selected: int | None, show_outline: bool = False):
        """Move the selected result into the collection."""
        results, collection = list(results or []), list(collection or [])
        i = _index(selected, results)
        if i is None:
            gr.Warning("Click an image in the results first, then Keep." if results else "No results to keep.")
            return gr.skip(), results, collection, None, *self.collection_view(collection)
        if len(collection) >= MAX_COLLECTION:
            raise gr.Error(f"the collection holds at most {MAX_COLLECTION} pairs: export and remove some first")
        collection.append(results.pop(i))
        nxt = min(i, len(results) - 1) if results else None  # Keep / Discard again acts on the next image
        return (self.results_view(results, show_outline, nxt), results, collection, nxt,
                *self.collection_view(collection))

    def keep_all(self, results: list[Shot], collection: list[Shot], show_outline: bool = False):
        """Move every result into the collection."""
        results, collection = list(results or []), list(collection or [])
        if not results:
            gr.Warning("No results to keep: generate first.")
        if len(collection) + len(results) > MAX_COLLECTION:
            raise gr.Error(f"the collection holds at most {MAX_COLLECTION} pairs: export and remove some first")
        collection += results
        return self.results_view([], show_outline), [], collection, None, *self.collection_view(collection)

    def discard(self, results: list[Shot], selected: int | None, show_outline: bool = False):
        """Drop the selected result."""
        results = list(results or [])
        i = _index(selected, results)
        if i is None:
            gr.Warning("Click an image in the results first, then Discard." if results else "No results.")
            return gr.skip(), results, None
        results.pop(i)
        nxt = min(i, len(results) - 1) if results else None
        return self.results_view(results, show_outline, nxt), results, nxt

    def remove(self, collection: list[Shot], selected: int | None):
        """Remove the selected pair from the collection."""
        collection = list(collection or [])
        i = _index(selected, collection)
        if i is None:
            gr.Warning("Click a kept pair first, then Remove." if collection else "The collection is empty.")
            return collection, None, gr.skip(), gr.skip(), gr.skip()
        collection.pop(i)
        return collection, None, *self.collection_view(collection)

    def export(self, collection: list[Shot] | None, nnunet: bool = False, label: str = "lesion"):
        """A zip of the kept pairs: images/, masks/ (0/255), metadata.jsonl, README.txt; nnU-Net v2 as an option."""
        items = [s.item for s in collection or []]
        if not items:
            raise gr.Error("nothing to export: keep at least one generated image first", title="Nothing kept")
        label = re.sub(r"[^A-Za-z0-9_-]+", "_", (label or "").strip()) or "lesion"
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=self.pngs.path))
        return str(export_zip(items, folder / f"siamese-pairs-{len(items)}.zip", nnunet=bool(nnunet), label=label))

    def download_ready(self, collection: list[Shot] | None):
        n = len(collection or [])
        return gr.DownloadButton(label=f"Download {n} pair{'s' if n != 1 else ''} (.zip)", interactive=True)

    # -- training (the /train_* API)
    def train_start(self, data_folder: str | None = None, data_zip: str | None = None,
                    base_model: str = BASE_MODELS[0], base_path: str | None = None, max_steps: int = 200,
                    batch_size: int = 4, lr: float = 1e-4, resolution: int = 256, checkpoint_every: int = 100,
                    preview_every: int = 50, name: str | None = None, model: str | None = None,
                    base_steps: int = 200) -> str:
        """Start a training run in the background (one at a time); poll /train_status. From scratch ("tiny"),
        the UNet is first pre-trained alone for `base_steps` steps, then the ControlNet is trained on it."""
        if self.training_disabled:
            raise gr.Error(self.training_disabled, title="Training disabled")
        if self.job.running:
            raise gr.Error("a training run is already in progress: stop it first, or wait", title="Busy")
        tmp = None
        try:
            if data_zip:
                tmp = tempfile.TemporaryDirectory(prefix="siamese-data-")
                data = safe_extract_zip(data_zip, Path(tmp.name))
            elif data_folder and data_folder.strip():
                data = Path(data_folder.strip()).expanduser()
            else:
                raise DataError("no dataset: type a server folder (images/ + masks/, or prompt.json) or upload a zip")
            pairs = find_pairs(data)  # fails early, with the library's message, for a folder without masks
            pretrain = 0
            if base_model == BASE_MODELS[0] or base_model == "tiny":
                init, pretrain = "tiny", int(base_steps or 0)
            elif base_model == BASE_MODELS[1] or base_model == "current":
                init = str(model or self.default)
            else:
                if not (base_path and base_path.strip()):
                    raise ValueError("type the Stable Diffusion 1.5 folder or hub id (e.g. owner/model)")
                init = base_path.strip()
            output = self.runs_dir / run_name(name)
            if output.exists():
                output = output.with_name(f"{output.name}-{time.strftime('%H%M%S')}")
            steps = int(max_steps)
            config = TrainConfig(data=str(data), output=str(output), model=init, objective="siamese",
                                 base_steps=pretrain, resolution=int(resolution), batch_size=int(batch_size),
                                 max_steps=steps,
                                 lr=float(lr), checkpoint_every=max(1, int(checkpoint_every)),
                                 log_every=max(1, (steps + pretrain) // 200), preview_every=max(0, int(preview_every)),
                                 name=output.name)
            config.validate()
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.job.start(config, tmp)
        except (DataError, ModelLoadError, ValueError, RuntimeError) as e:
            if tmp is not None:
                tmp.cleanup()
            raise _user_error(e) from None
        return status_text(self.job.snapshot()) + f"\n\n{len(pairs)} image-mask pairs from `{data}`."

    def train_stop(self) -> str:
        """Stop the running training after its current step; the model is saved first."""
        if not self.job.stop():
            gr.Warning("No training run is in progress.")
        return status_text(self.job.snapshot())

    def train_status(self) -> dict:
        """The training run as JSON: state (idle, running, stopping, finished, stopped, failed), step, max_steps,
        it_per_s, eta_s, output (the run folder), error, message (Markdown) and losses (one dict per logged step)."""
        snap = self.job.snapshot()
        keys = ("state", "step", "max_steps", "it_per_s", "eta_s", "output", "error")
        return {**{k: snap[k] for k in keys}, "message": status_text(snap), "losses": snap["rows"]}

    def train_poll(self, seen: int = -1):
        """For the page's timer: status text, the loss curves (step, value, term), the latest preview, the model
        list, the version. Parts that did not change since version `seen` are skipped, so polling is cheap."""
        snap = self.job.snapshot()
        if snap["version"] == seen:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen
        if snap["state"] == "failed" and seen >= 0:
            gr.Warning(snap["error"], title="Training failed")
        ended = snap["state"] in ("finished", "stopped")
        frame = loss_frame(snap["rows"])
        # None, not an empty frame: a LinePlot that received an empty frame draws no lines later (Gradio 6.31)
        return (status_text(snap), frame if len(frame) else None, snap["preview"],
                gr.Dropdown(choices=self.model_choices()) if ended else gr.skip(), snap["version"])

    def use_trained(self):
        snap = self.job.snapshot()
        if snap["state"] not in ("finished", "stopped") or not snap["output"]:
            gr.Warning("No finished training run yet.")
            return gr.skip()
        self.models.forget(snap["output"])
        return gr.Dropdown(choices=self.model_choices(), value=snap["output"])


# -- the page -------------------------------------------------------------------------------------
INTRO = """# Siamese-Diffusion Studio
Draw a lesion mask (or upload one), generate matching medical images, keep the good pairs and export them
as a segmentation dataset. Based on *Siamese-Diffusion* (CVPR 2025). Synthetic images are for research
(data augmentation), not for diagnosis."""

CSS = """
#mask-editor {min-height: 420px}
.compact-gallery {min-height: 0}
"""


def build_demo(model_path: str | None = None, *, checkpoints_dir: str | Path | None = None,
               runs_dir: str | Path | None = None) -> gr.Blocks:
    """The app. `model_path`: the default model (else $SIAMESE_MODEL, else the bundled one)."""
    studio = Studio(model_path, Path(checkpoints_dir or CHECKPOINTS_DIR), Path(runs_dir or RUNS_DIR))
    with gr.Blocks(title="Siamese-Diffusion Studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        demo.studio = studio  # for tests and scripts
        results = gr.State([])
        collection = gr.State([])
        results_sel = gr.State(None)
        coll_sel = gr.State(None)
        train_seen = gr.State(-1)

        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(studio.model_choices(), value=studio.default, label="Model", allow_custom_value=True,
                                info="The bundled model, a folder under checkpoints/ or runs/app/, a local path, "
                                     "or a Hugging Face hub id (owner/name)", scale=4)
            refresh = gr.Button("Refresh list", size="sm", scale=0, min_width=110)
        model_md = gr.Markdown("Loading the model...", label="Model")

        with gr.Tabs():
            # ---- Generate
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        editor = gr.ImageEditor(
                            value=editor_value(None), label="Mask: pick the Brush and paint the lesion in white",
                            type="numpy", image_mode="RGBA", format="png", sources=(), transforms=(),
                            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed",
                                           default_size=28),
                            eraser=gr.Eraser(default_size=28), layers=False, canvas_size=(CANVAS, CANVAS),
                            fixed_canvas=True, height=520, elem_id="mask-editor",
                        )
                        with gr.Row():
                            clear_btn = gr.Button("Clear mask", size="sm")
                            random_btn = gr.Button("Random mask", size="sm")
                        examples = gr.Gallery(studio.example_gallery(), label="Example masks (click one)",
                                              columns=6, height=130, allow_preview=False, object_fit="contain", fit_columns=False,
                                              elem_classes="compact-gallery", buttons=[])
                        with gr.Accordion("Upload a mask file or a reference image", open=False):
                            mask_file = gr.File(label="Mask file (PNG/JPEG/...; white = lesion, binarised at 127)",
                                                file_types=["image"], type="filepath", elem_id="mask-file")
                            reference = gr.Image(label="Reference image (shown under the drawing, not used by "
                                                       "the model)", type="numpy", image_mode="RGB",
                                                 sources=["upload", "clipboard"], elem_id="reference")
                        mask_in = gr.Image(label="Mask sent to the model (binarised)", type="numpy", image_mode="L",
                                           format="png", interactive=False, height=160, elem_id="mask-preview",
                                           buttons=["download"])
                    with gr.Column(scale=1):
                        prompt = gr.Textbox(label="Prompt", placeholder="empty: the model's default prompt",
                                            lines=1)
                        with gr.Row():
                            num_images = gr.Slider(1, 16, value=DEFAULTS["num_images"], step=1,
                                                   label="Number of images")
                            steps = gr.Slider(1, 100, value=DEFAULTS["steps"], step=1, label="Steps")
                        with gr.Row():
                            guidance = gr.Slider(0.0, 15.0, value=DEFAULTS["guidance_scale"], step=0.5,
                                                 label="Guidance scale")
                            control = gr.Slider(0.0, MAX_CONTROL_SCALE, value=studio.default_control_scale(),
                                                step=0.25, label="Mask strength (control scale)",
                                                info="1: as trained; preset per model")
                        with gr.Row():
                            scheduler = gr.Dropdown(list(SCHEDULERS), value=DEFAULTS["scheduler"], label="Scheduler")
                            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
                            randomize = gr.Checkbox(True, label="Randomise seed")
                        generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                        show_outline = gr.Checkbox(False, label="Draw the mask outline over the results")
                        gallery = gr.Gallery(label="Results (click one, then Keep or Discard)", columns=4,
                                             height=360, format="png", object_fit="contain", elem_id="results", fit_columns=False,
                                             interactive=False)
                        gen_status = gr.Markdown("", label="Status")
                        with gr.Row():
                            keep_btn = gr.Button("✓ Keep", variant="primary", elem_id="keep-btn")
                            discard_btn = gr.Button("✗ Discard", elem_id="discard-btn")
                            keep_all_btn = gr.Button("Keep all", elem_id="keep-all-btn")

                gr.Markdown("### Collection")
                count_md = gr.Markdown("**0** pairs kept in this session — nothing yet", elem_id="count", label="Count")
                coll_gallery = gr.Gallery(label="Kept pairs: 0", columns=8, height=240, format="png",
                                          object_fit="contain", elem_id="collection", interactive=False,
                                          fit_columns=False)
                with gr.Row():
                    remove_btn = gr.Button("Remove selected", size="sm")
                    nnunet = gr.Checkbox(False, label="Also the nnU-Net v2 layout (imagesTr/, labelsTr/, dataset.json)")
                    label_name = gr.Textbox("lesion", label="Label name (nnU-Net)", max_lines=1)
                    export_btn = gr.Button("Prepare zip", variant="primary", elem_id="export-btn")
                    download = gr.DownloadButton("Download zip (prepare it first)", interactive=False,
                                                 elem_id="download-btn")

            # ---- Train
            with gr.Tab("Train", id="train"):
                disabled = studio.training_disabled
                if disabled:
                    gr.Markdown(f"⚠️ {disabled}")
                with gr.Row():
                    with gr.Column():
                        data_folder = gr.Textbox(label="Dataset folder on the server",
                                                 placeholder="e.g. data/kvasir-seg (images/ + masks/, or prompt.json)")
                        data_zip = gr.File(label="...or upload a dataset zip (images/ + masks/)", file_types=[".zip"],
                                           type="filepath")
                        base_model = gr.Radio(list(BASE_MODELS), value=BASE_MODELS[0], label="Start from")
                        base_path = gr.Textbox(label="Stable Diffusion 1.5 folder or hub id",
                                               placeholder="e.g. stable-diffusion-v1-5/stable-diffusion-v1-5")
                        with gr.Row():
                            max_steps = gr.Number(200, label="Steps", precision=0, minimum=1)
                            base_steps = gr.Number(200, label="UNet pre-training steps (from scratch)", precision=0,
                                                   minimum=0)
                            batch_size = gr.Number(4, label="Batch size", precision=0, minimum=1)
                            lr = gr.Number(1e-4, label="Learning rate", minimum=0)
                        with gr.Row():
                            resolution = gr.Dropdown([64, 128, 256, 384, 512], value=256, label="Resolution")
                            checkpoint_every = gr.Number(100, label="Checkpoint every", precision=0, minimum=1)
                            preview_every = gr.Number(50, label="Preview every (0: never)", precision=0, minimum=0)
                        name = gr.Textbox(label="Run name (saved in runs/app/NAME)", placeholder="default: run-DATE")
                        with gr.Row():
                            start_btn = gr.Button("Start training", variant="primary", interactive=not disabled)
                            stop_btn = gr.Button("Stop", variant="stop", interactive=not disabled)
                            use_btn = gr.Button("Use in Generate")
                    with gr.Column():
                        train_md = gr.Markdown(status_text(studio.job.snapshot()), elem_id="train-status", label="Status")
                        loss_plot = gr.LinePlot(None, x="step", y="value", color="term", label="Losses",
                                                y_title="loss", color_map=dict(zip(LOSS_KEYS, LOSS_COLORS)),
                                                colors_in_legend=list(LOSS_KEYS))
                        preview = gr.Image(label="Preview (top: samples, bottom: their training masks)",
                                           interactive=False, format="png")
                timer = gr.Timer(1.5)

            with gr.Tab("API", id="api"):
                gr.Markdown(API_HELP)

        # -- wiring: models
        demo.load(studio.model_info, model, [model_md, control], api_visibility="private")
        model.change(studio.model_info, model, [model_md, control], api_visibility="private")
        refresh.click(studio.refresh_models, model, model, api_visibility="private")

        # -- wiring: the canvas
        examples.select(studio.use_example, editor, editor, api_visibility="private")
        random_btn.click(studio.random_mask, editor, editor, api_visibility="private")
        clear_btn.click(studio.clear_canvas, editor, editor, api_visibility="private")
        mask_file.upload(studio.upload_mask, [mask_file, editor], [editor, mask_file], api_visibility="private")
        reference.change(studio.set_reference, [reference, editor], editor, api_visibility="private")

        # -- wiring: generate. The button turns the canvas into the binary mask (shown, then sent), then runs
        # the same /generate endpoint scripts call; its parameters are named by Studio.generate's signature.
        generate_btn.click(studio.prepare, [editor, seed, randomize], [mask_in, seed],
                           api_visibility="private").success(
            studio.generate, [mask_in, prompt, num_images, steps, guidance, seed, scheduler, model, show_outline,
                              results, control],
            [gallery, results, gen_status], api_name="generate").success(
            lambda: None, None, results_sel, api_visibility="private")
        show_outline.change(studio.render, [results, show_outline], gallery, api_visibility="private")

        def select_index(evt: gr.SelectData) -> int:
            return evt.index

        gallery.select(select_index, None, results_sel, api_visibility="private")
        coll_gallery.select(select_index, None, coll_sel, api_visibility="private")
        coll_outputs = [coll_gallery, count_md, download]
        keep_btn.click(studio.keep, [results, collection, results_sel, show_outline],
                       [gallery, results, collection, results_sel, *coll_outputs], api_name="keep")
        keep_all_btn.click(studio.keep_all, [results, collection, show_outline],
                           [gallery, results, collection, results_sel, *coll_outputs], api_name="keep_all")
        discard_btn.click(studio.discard, [results, results_sel, show_outline], [gallery, results, results_sel],
                          api_name="discard")
        remove_btn.click(studio.remove, [collection, coll_sel], [collection, coll_sel, *coll_outputs],
                         api_name="remove")
        export_btn.click(studio.export, [collection, nnunet, label_name], download, api_name="export").success(
            studio.download_ready, collection, download, api_visibility="private")

        # -- wiring: training (polled with a timer, never a blocking generator)
        start_btn.click(studio.train_start, [data_folder, data_zip, base_model, base_path, max_steps, batch_size, lr,
                                             resolution, checkpoint_every, preview_every, name, model, base_steps],
                        train_md, api_name="train_start")
        stop_btn.click(studio.train_stop, None, train_md, api_name="train_stop")
        status_outputs = [train_md, loss_plot, preview, model, train_seen]
        timer.tick(studio.train_poll, train_seen, status_outputs, api_visibility="private", show_progress="hidden",
                   concurrency_limit=None)
        gr.api(studio.train_status, api_name="train_status", concurrency_limit=None)
        use_btn.click(studio.use_trained, None, model, api_visibility="private")
    return demo


API_HELP = """### Scripting with gradio_client
```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/")
gallery, status = client.predict(mask=handle_file("mask.png"), prompt="", num_images=4, steps=20,
                                 guidance_scale=3.0, seed=0, scheduler="dpm++", api_name="/generate")
# control_scale=3.0 sets the mask strength (default: the default model's recommended value)
client.predict(api_name="/keep_all")                            # keep every result of this session
zip_path = client.predict(nnunet=True, label="polyp", api_name="/export")
client.predict(data_folder="data/kvasir-seg", max_steps=200, api_name="/train_start")
status = client.predict(api_name="/train_status")  # dict: state, step, max_steps, it_per_s, eta_s, losses...
client.predict(api_name="/train_stop")
```
`seed` below 0 means random; image *i* gets seed + *i*. Each generated PNG carries its parameters in the
PNG text `parameters` (Stable Diffusion convention) and the full record in `siamese`."""


def launch_options() -> dict:
    """What `demo.launch` gets here and in the tests (host and port come from the environment)."""
    return dict(max_file_size=MAX_UPLOAD, show_error=True, css=CSS, theme=gr.themes.Default(primary_hue="teal"),
                footer_links=["api", "settings"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Siamese-Diffusion Studio (Gradio app)")
    parser.add_argument("--model", default=None, help="default model folder or hub id "
                                                      "(default: $SIAMESE_MODEL, else checkpoints/siamese-kvasir-tiny)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    demo = build_demo(args.model)
    demo.studio.preload()
    # server name and port: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860
    demo.queue(default_concurrency_limit=1, max_size=64).launch(**launch_options())


if __name__ == "__main__":
    main()

"""The Generate tab: the canvas becomes a binary mask, /generate samples images for it, the gallery shows PNGs
that carry their parameters in the PNG text."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from siamese import DataError, Generated, ModelLoadError, SamplingParams, augment_mask, generate, read_mask
from siamese.export import png_bytes
from siamese.sampling import describe_mask, random_seed, validate_request

from . import inputs
from .masks import editor_value, mask_from_editor, outline, procedural_mask, read_mask_upload
from .messages import Redactor, user_error
from .models import ModelCatalog, ModelStore, describe_autoguidance, fit_autoguidance
from .turns import Turns

try:  # Hugging Face Spaces (ZeroGPU): present on a Space, absent locally
    import spaces
except ImportError:
    spaces = None

# 16 steps since version 7 of the bundled model: with its autoguidance, 20 steps took 1.56 s per image here and 16
# draw the same (its model card: colour/texture KID / fidelity 5.52 / 0.629 at 16 steps, 5.34 / 0.627 at 20)
DEFAULTS = dict(scheduler="dpm++", steps=16, guidance_scale=9.0, num_images=4)


def _sample(model, mask: np.ndarray, num_images: int, seed: int, params: SamplingParams, callback, source: str):
    return generate(model, mask, num_images=num_images, seed=seed, params=params, batch_size=4,
                    callback=callback, source=source)


if spaces is not None:  # a GPU slice per generation on ZeroGPU; a no-op elsewhere
    _sample = spaces.GPU(duration=120)(_sample)


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


def gallery_items(pngs: PngFolder, shots: list[Shot] | None, show_outline: bool = False) -> list[tuple[str, str]]:
    """The results gallery's (file, caption) pairs, with or without the mask outline."""
    return [(pngs.shown(s, bool(show_outline)), f"seed {s.item.seed}") for s in shots or []]


def results_view(pngs: PngFolder, shots: list[Shot], show_outline: bool = False, selected: int | None = None):
    return gr.Gallery(value=gallery_items(pngs, shots, show_outline), selected_index=selected)


class GenerateHandlers:
    """The canvas and /generate; part of `Studio` (uses `self.examples`, `self.catalog`, `self.models`,
    `self.pngs`, `self.redact`, `self.turns`)."""

    examples: list[Path]
    turns: Turns
    catalog: ModelCatalog
    models: ModelStore
    pngs: PngFolder
    redact: Redactor

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
            gr.Warning(self.redact(str(e).replace(str(Path(file).parent) + os.sep, "")), title="Not a usable mask")
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
            raise user_error(e, self.redact) from None
        if mask.all():
            raise gr.Error("the mask is all white: it needs some black background too", title="Input problem")
        seed = random_seed() if randomize or seed is None or seed < 0 else int(seed)
        return mask * 255, seed

    # -- generation (the /generate API)
    def generate(self, mask: np.ndarray | None, prompt: str | None = None, num_images: int = 4, steps: int = 20,
                 guidance_scale: float = DEFAULTS["guidance_scale"], seed: int | None = None,
                 scheduler: str = DEFAULTS["scheduler"], model: str | None = None, show_outline: bool = False,
                 results: list | None = None, control_scale: float | None = None, control_end: float | None = None,
                 autoguidance: float | None = None, progress=gr.Progress()):
        """Generate images for one mask. Returns the gallery (PNG files with the parameters in their text),
        the session's new results and a status line. `seed` None or negative: random; image i has seed + i;
        an empty prompt uses the model's default; `control_scale` multiplies the ControlNet's residuals
        (how strongly the mask acts; 1: as trained) and `control_end` is the share of the steps, from the first,
        in which it acts; `autoguidance` above 1 pushes the images away from the model's guide, a weaker version
        of it (1: off; above 1 needs a model with a guide); None for these three: the model's recommended values.
        `model`: one the server offers (see the model selector; None: the default)."""
        if mask is None:
            raise gr.Error("no mask: draw one, upload a mask file or click an example", title="Input problem")
        try:
            params = SamplingParams(prompt=inputs.text(prompt, "prompt"),
                                    steps=inputs.number(steps, "steps", whole=True),
                                    guidance_scale=inputs.number(guidance_scale, "guidance scale"),
                                    scheduler=inputs.text(scheduler, "scheduler") or "",
                                    control_scale=inputs.number(control_scale, "control scale", optional=True),
                                    control_end=inputs.number(control_end, "control end", optional=True),
                                    autoguidance=inputs.number(autoguidance, "autoguidance", optional=True))
            params.validate()  # before the model load
            count = inputs.number(num_images, "number of images", whole=True)
            seed = inputs.number(seed, "seed", whole=True, optional=True)
            base = random_seed() if seed is None or seed < 0 else seed
            validate_request(count, base, 4)
            m = self.models.get(inputs.text(model, "model") or self.catalog.default)
            off = fit_autoguidance(params, m)
            t0 = time.perf_counter()
            progress((0, count * params.steps), desc="Sampling", unit="steps")
            with self.turns.interactive():  # before any batch's next step (studio.turns)
                items = _sample(m, np.asarray(mask), count, base, params,
                                lambda done, total: progress((done, total), desc="Sampling", unit="steps"), "studio")
        except (DataError, ModelLoadError, ValueError) as e:
            raise user_error(e, self.redact) from None
        shots = [self.pngs.shot(it) for it in items]
        took = time.perf_counter() - t0
        used = items[0].params
        status = (f"{len(shots)} images in {took:.1f} s · seeds {shots[0].item.seed}–{shots[-1].item.seed} · "
                  f"{params.scheduler}, {params.steps} steps, guidance {params.guidance_scale:g}, "
                  f"mask strength {describe_mask(used['control_scale'], used['control_end'])}"
                  f"{describe_autoguidance(used['autoguidance'])}{off}. Click an image, then Keep or "
                  "Discard.")
        return self.render(shots, show_outline), shots, status

    def render(self, shots: list[Shot] | None, show_outline: bool = False) -> list[tuple[str, str]]:
        """The results gallery for the outline checkbox."""
        return gallery_items(self.pngs, shots, show_outline)

"""The Generate tab: the mask canvas (draw, examples, random, an uploaded mask file, a reference image under the
drawing), the sampling settings, /generate and the results gallery (PNGs that carry their parameters in the PNG
text); its collection is `studio.tabs.collection`.

The drawn mask leaves the canvas as a bool array (`prepare`), shown as a 1-bit PNG; /generate reads that file, or a
script's mask file, by the library's one mask rule, and hands the library an (H, W) {0, 1} array. The canvas events
and /generate run without Gradio's preprocessing: nothing is decoded before the handler checks its header. A
/generate whose request is cancelled, or whose client leaves, stops between two denoising steps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.context import LocalContext
from PIL import Image

from siamese import DataError, SamplingParams, augment_mask, generate, read_mask
from siamese.sampling import describe_mask

from .. import inputs
from ..catalog import ModelCatalog, ModelStore
from ..jobs.base import Cancelled, Turns
from ..masks import (CANVAS, backdrop_of, editor_value, mask_from_editor, mask_value, procedural_mask,
                     read_mask_upload)
from ..replies import Redactor, one_line, refusal
from ..scratch import Scratch
from . import collection, sampling
from .collection import Shot, gallery_items, shoot

try:  # Hugging Face Spaces (ZeroGPU): present on a Space, absent locally
    import spaces
except ImportError:
    spaces = None

logger = logging.getLogger(__name__)

NUM_IMAGES = (1, 16)  # images per request


def _sample(model, mask: np.ndarray, num_images: int, seed: int, params: SamplingParams, callback, source: str):
    return generate(model, mask, num_images=num_images, seed=seed, params=params, batch_size=4,
                    callback=callback, source=source)


if spaces is not None:  # a GPU slice per generation on ZeroGPU; a no-op elsewhere
    _sample = spaces.GPU(duration=120)(_sample)


def request_cancelled() -> bool:
    """Whether the Gradio event this handler runs for was cancelled (it left the server's running events) or its
    client left (its page or script closed the connection); False outside an event (a direct call)."""
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    running = getattr(getattr(blocks, "_queue", None), "active_jobs", None)
    if event_id is None or not isinstance(running, list):
        return False
    for job in list(running):
        for event in list(job or ()):
            if getattr(event, "_id", None) == event_id:
                return not getattr(event, "alive", True)
    return True


class GenerateTab:
    """The canvas and /generate."""

    def __init__(self, catalog: ModelCatalog, models: ModelStore, scratch: Scratch, turns: Turns, redact: Redactor,
                 examples: list[Path]) -> None:
        self.catalog, self.models, self.scratch, self.turns, self.redact = catalog, models, scratch, turns, redact
        self.examples = examples
        self.cancelled = request_cancelled  # () -> bool, asked between steps; a test puts its own here

    # -- the mask canvas
    def example_gallery(self) -> list[tuple[str, str]]:
        return [(str(p), p.stem) for p in self.examples]

    def use_example(self, editor: dict | None, evt: gr.SelectData) -> dict:
        try:
            i = inputs.number(evt.index, "example", whole=True, low=0, high=len(self.examples) - 1)
            return editor_value(read_mask(self.examples[i]), backdrop_of(editor))
        except Exception as e:
            raise refusal(e, self.redact, "the example mask") from None

    def random_mask(self, editor: dict | None) -> dict:
        """An augmented example mask (flip, scale, rotate, shift) or a procedural blob."""
        try:
            background = backdrop_of(editor)
        except Exception as e:
            raise refusal(e, self.redact, "the canvas") from None
        rng = np.random.default_rng()
        if rng.random() < 0.5:
            mask = augment_mask(read_mask(self.examples[rng.integers(len(self.examples))]), rng)
        else:
            mask = procedural_mask(rng)
        return editor_value(mask, background)

    def upload_mask(self, file, editor: dict | None):
        """A mask file -> binarised and shown on the canvas (over the reference image, if any).

        Returns the editor value and None for the file box (ready for the next file)."""
        if not file:
            return gr.skip(), None
        try:
            mask = read_mask_upload(inputs.upload(file, "mask file"), inputs.shown_name(file))
            background = backdrop_of(editor)
        except ValueError as e:  # DataError: the file's problem, named
            gr.Warning(one_line(str(e), self.redact), title="Not a usable mask")
            return gr.skip(), None
        except Exception as e:
            raise refusal(e, self.redact, "the mask file") from None
        return editor_value(mask, background), None

    def set_reference(self, reference, editor: dict | None) -> dict:
        """Show a reference image under the drawing (or a black canvas again); the strokes are kept."""
        try:
            background = inputs.image(reference, "the reference image")
            try:
                mask = mask_from_editor(editor)
            except DataError:
                mask = None
        except Exception as e:
            raise refusal(e, self.redact, "the reference image") from None
        return editor_value(mask, background)

    def clear_canvas(self, editor: dict | None) -> dict:
        try:
            return editor_value(None, backdrop_of(editor))
        except Exception as e:
            raise refusal(e, self.redact, "the canvas") from None

    def prepare(self, editor: dict | None, seed: float | None, randomize: bool) -> tuple[Image.Image, int]:
        """Step 1 of the Generate button: the canvas -> the mask sent to /generate (a bool array, shown and sent
        as a 1-bit PNG), and the seed."""
        try:
            mask = mask_from_editor(editor)
            if mask.all():
                raise DataError("the mask is all white: it needs some black background too")
            seed = inputs.seed(seed, inputs.flag(randomize, "randomise seed"))
        except Exception as e:
            raise refusal(e, self.redact, "the canvas") from None
        return Image.fromarray(mask), seed

    # -- generation (the /generate API)
    def generate(self, mask, prompt: str | None = None, num_images: int = 4, steps: int = 20,
                 guidance_scale: float = sampling.DEFAULTS["guidance_scale"], seed: int | None = None,
                 scheduler: str = sampling.DEFAULTS["scheduler"], model: str | None = None, show_outline: bool = False,
                 results: list | None = None, control_scale: float | None = None, control_end: float | None = None,
                 autoguidance: float | None = None, progress=gr.Progress()):
        """Generate images for one mask (a mask image file: white = lesion, read as the CLI reads it). Returns the
        gallery (PNG files with the parameters in their text), the session's new results and a status line.
        `seed` None or negative: random; image i has seed + i; an empty prompt uses the model's default;
        `control_scale` multiplies the ControlNet's residuals (how strongly the mask acts; 1: as trained) and
        `control_end` is the share of the steps, from the first, in which it acts; `autoguidance` above 1 pushes the
        images away from the model's guide, a weaker version of it (1: off; above 1 needs a model with a guide);
        None for these three: the model's recommended values. `model`: one the server offers (see the model
        selector; None: the default). A cancelled request stops between two steps."""
        try:
            binary = mask_value(mask)
            params = sampling.read_params(prompt, steps, guidance_scale, scheduler, control_scale, control_end,
                                          autoguidance)
            count = inputs.number(num_images, "number of images", whole=True, low=NUM_IMAGES[0], high=NUM_IMAGES[1])
            base = inputs.seed(seed)
            show_outline = inputs.flag(show_outline, "show outline")
            m = self.models.get(inputs.text(model, "model") or self.catalog.default)
            off = sampling.fit_autoguidance(params, m)
            t0 = time.perf_counter()
            progress((0, count * params.steps), desc="Sampling", unit="steps")

            def step(done: int, total: int) -> None:
                if self.cancelled():
                    raise Cancelled(f"stopped after {done} of {total} steps")
                progress((done, total), desc="Sampling", unit="steps")

            with self.turns.interactive(self.cancelled):  # before any batch's next step (studio.jobs.base.Turns)
                items = _sample(m, binary, count, base, params, step, "studio")
        except Cancelled as e:
            logger.info("generation cancelled by its client: %s", e)
            raise gr.Error("the request was cancelled", title="Cancelled") from None
        except Exception as e:
            raise refusal(e, self.redact, "generation") from None
        shots = [shoot(self.scratch, it) for it in items]
        took = time.perf_counter() - t0
        used = items[0].params
        status = (f"{len(shots)} images in {took:.1f} s · seeds {shots[0].item.seed}–{shots[-1].item.seed} · "
                  f"{params.scheduler}, {params.steps} steps, guidance {params.guidance_scale:g}, "
                  f"mask strength {describe_mask(used['control_scale'], used['control_end'])}"
                  f"{sampling.describe_autoguidance(used['autoguidance'])}{off}. Click an image, then Keep or "
                  "Discard.")
        return self.render(shots, show_outline), shots, status

    def render(self, shots: list[Shot] | None, show_outline: bool = False) -> list[tuple[str, str]]:
        """The results gallery for the outline checkbox."""
        return gallery_items(self.scratch, shots, show_outline)


@dataclass
class GenerateWidgets:
    """The tab's widgets, by the part of the page they are in (the canvas column, the settings column)."""

    editor: gr.ImageEditor
    clear: gr.Button
    random: gr.Button
    examples: gr.Gallery
    mask_file: gr.File
    reference: gr.Image
    mask_in: gr.Image
    prompt: gr.Textbox
    num_images: gr.Slider
    steps: gr.Slider
    guidance: gr.Slider
    control: gr.Slider
    control_end: gr.Slider
    autoguidance: gr.Slider
    scheduler: gr.Dropdown
    seed: gr.Number
    randomize: gr.Checkbox
    generate: gr.Button
    show_outline: gr.Checkbox
    gallery: gr.Gallery
    status: gr.Markdown
    curation: collection.CurationButtons


def _canvas_column(tab: GenerateTab) -> dict:
    """The mask: the canvas, its buttons, the example masks, the upload accordion and the mask sent."""
    editor = gr.ImageEditor(
        value=editor_value(None), label="Mask: pick the Brush and paint the lesion in white",
        type="numpy", image_mode="RGBA", format="png", sources=(), transforms=(),
        brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed", default_size=28),
        eraser=gr.Eraser(default_size=28), layers=False, canvas_size=(CANVAS, CANVAS),
        fixed_canvas=True, height=520, elem_id="mask-editor",
    )
    with gr.Row():
        clear = gr.Button("Clear mask", size="sm")
        random = gr.Button("Random mask", size="sm")
    examples = gr.Gallery(tab.example_gallery(), label="Example masks (click one)", columns=6, height=130,
                          allow_preview=False, object_fit="contain", fit_columns=False,
                          elem_classes="compact-gallery", buttons=[])
    with gr.Accordion("Upload a mask file or a reference image", open=False):
        mask_file = gr.File(label="Mask file (PNG/JPEG/TIFF...; white = lesion: above 127 in 8 bits, 1 in a 0/1 "
                                  "label mask)", file_types=["image"], type="filepath", elem_id="mask-file")
        reference = gr.Image(label="Reference image (shown under the drawing, not used by the model)",
                             type="numpy", image_mode="RGB", sources=["upload", "clipboard"], elem_id="reference")
    mask_in = gr.Image(label="Mask sent to the model (binarised)", type="numpy", image_mode="L", format="png",
                       interactive=False, height=160, elem_id="mask-preview", buttons=["download"])
    return dict(editor=editor, clear=clear, random=random, examples=examples, mask_file=mask_file,
                reference=reference, mask_in=mask_in)


def _settings_column(recommended, guided: bool) -> dict:
    """The sampling settings, the Generate button and the results with their curation buttons."""
    prompt = gr.Textbox(label="Prompt", placeholder="empty: the model's default prompt", lines=1)
    with gr.Row():
        num_images = gr.Slider(*NUM_IMAGES, value=sampling.DEFAULTS["num_images"], step=1, label="Number of images")
        steps = sampling.steps_slider()
    guidance = sampling.guidance_slider()
    with gr.Row():
        control = sampling.control_slider(recommended.control_scale, "1: as trained; preset per model")
        control_end = sampling.control_end_slider(recommended.control_end, "the mask acts in the first steps, "
                                                                            "which set the layout; preset per model")
        autoguidance = sampling.autoguidance_slider(recommended.autoguidance, guided)
    scheduler, seed, randomize = sampling.seed_row()
    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
    show_outline = gr.Checkbox(False, label="Draw the mask outline over the results")
    gallery = gr.Gallery(label="Results (click one, then Keep or Discard)", columns=4, height=360, format="png",
                         object_fit="contain", elem_id="results", fit_columns=False, interactive=False)
    status = gr.Markdown("", label="Status")
    curation = collection.curation_buttons()
    return dict(prompt=prompt, num_images=num_images, steps=steps, guidance=guidance, control=control,
                control_end=control_end, autoguidance=autoguidance, scheduler=scheduler, seed=seed,
                randomize=randomize, generate=generate_btn, show_outline=show_outline, gallery=gallery,
                status=status, curation=curation)


def build(tab: GenerateTab, recommended, guided: bool) -> GenerateWidgets:
    """The tab's two columns (inside the page's gr.Tab): `recommended` is the default model's config, which presets
    the mask and autoguidance sliders (they follow the selected model), `guided` whether it has a guide."""
    with gr.Row():
        with gr.Column(scale=1):
            canvas = _canvas_column(tab)
        with gr.Column(scale=1):
            settings = _settings_column(recommended, guided)
    return GenerateWidgets(**canvas, **settings)


def wire(tab: GenerateTab, w: GenerateWidgets, model: gr.Dropdown, results: gr.State, results_sel: gr.State) -> None:
    """The canvas, and the Generate button: the canvas becomes the mask (shown, then sent), then the same /generate
    endpoint scripts call runs; its parameters are named by GenerateTab.generate's signature. Every event that
    takes an image runs without Gradio's preprocessing (the handlers read the files)."""
    raw = dict(api_visibility="private", preprocess=False)
    w.examples.select(tab.use_example, w.editor, w.editor, **raw)
    w.random.click(tab.random_mask, w.editor, w.editor, **raw)
    w.clear.click(tab.clear_canvas, w.editor, w.editor, **raw)
    w.mask_file.upload(tab.upload_mask, [w.mask_file, w.editor], [w.editor, w.mask_file], **raw)
    w.reference.change(tab.set_reference, [w.reference, w.editor], w.editor, **raw)
    w.generate.click(tab.prepare, [w.editor, w.seed, w.randomize], [w.mask_in, w.seed], **raw).success(
        tab.generate, [w.mask_in, w.prompt, w.num_images, w.steps, w.guidance, w.seed, w.scheduler, model,
                       w.show_outline, results, w.control, w.control_end, w.autoguidance],
        [w.gallery, results, w.status], api_name="generate", preprocess=False).success(
        lambda: None, None, results_sel, api_visibility="private")
    w.show_outline.change(tab.render, [results, w.show_outline], w.gallery, api_visibility="private")
    w.gallery.select(collection.select_index, None, results_sel, api_visibility="private")

"""The Generate tab: the mask canvas (draw, examples, random, an uploaded mask file), the frame the lesion may be
painted into (an uploaded image or an example frame, shown under the drawing, with its own lesion's mask beside it),
the clinician's settings first and the technical ones in "Advanced", /generate and the results gallery (PNGs that
carry their parameters in the PNG text); its collection is `studio.tabs.collection`.

Painting into a frame (`siamese.inpaint`): the canvas shows the frame stretched to its square, so the drawn mask is
brought back to the frame's own shape (`prepare`) before it is sent; the results are the frame with the new lesion
(every pixel outside its region the frame's) and their masks the union of the new lesion and the frame's own (the
new lesion alone when the frame's is painted away, or not known: the status says so).

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

import cv2
import gradio as gr
import numpy as np
from gradio.context import LocalContext
from PIL import Image

from siamese import DataError, SamplingParams, augment_mask, generate, read_image, read_mask
from siamese.inpaint import DEFAULT_MARGIN, prepare_frame
from siamese.sampling import MAX_SEED, SCHEDULERS, describe_mask

from .. import inputs
from ..catalog import ModelCatalog, ModelStore
from ..jobs.base import Cancelled, Turns
from ..masks import (CANVAS, backdrop_of, editor_value, frame_mask_value, mask_from_editor, mask_value,
                     procedural_mask, read_mask_upload)
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
MARGIN = (0, 32)  # the Margin slider (pixels at the model resolution; the library allows up to a quarter of it)
UNLABELLED = ("⚠️ the frame's own lesions are not labelled: the pairs' masks hold the new lesion only (upload the "
              "frame's mask beside it to have its lesion in the masks too).")


def _sample(model, mask: np.ndarray, num_images: int, seed: int, params: SamplingParams, callback, source: str,
            frame: np.ndarray | None = None, frame_mask: np.ndarray | None = None, margin: int = DEFAULT_MARGIN,
            clear_frame_lesions: bool = False):
    return generate(model, mask, num_images=num_images, seed=seed, params=params, batch_size=4,
                    callback=callback, source=source, frame=frame, frame_mask=frame_mask, margin=margin,
                    clear_frame_lesions=clear_frame_lesions)


if spaces is not None:  # a GPU slice per generation on ZeroGPU; a no-op elsewhere
    _sample = spaces.GPU(duration=120)(_sample)


def _rgb(image: np.ndarray) -> np.ndarray:
    """A frame as (H, W, 3) uint8 RGB: a gray image repeated, an alpha channel dropped (a direct call's array)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, 2)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"the frame must be an RGB image, got an array of {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


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
                 examples: list[Path], frames: list[tuple[Path, Path | None]] | None = None) -> None:
        self.catalog, self.models, self.scratch, self.turns, self.redact = catalog, models, scratch, turns, redact
        self.examples = examples
        self.frames = list(frames or [])  # the example frames: (image, its mask or None)
        self.cancelled = request_cancelled  # () -> bool, asked between steps; a test puts its own here

    # -- the mask canvas
    def examples_of(self, model: str | None = None) -> list[Path]:
        """The selected model's example masks (its folder's examples/), else the app's (assets/masks/)."""
        return self.catalog.examples(inputs.text(model, "model")) or self.examples

    def example_gallery(self, model: str | None = None) -> list[tuple[np.ndarray, str]]:
        """The model's example masks as (H, W) 0/255 images and names: a model folder may lie outside the folders
        Gradio serves files from."""
        return [(read_mask(p) * np.uint8(255), p.stem) for p in self.examples_of(model)]

    def model_defaults(self, model: str | None):
        """The model changed: its example masks in the gallery and its default prompt in the prompt box (the box
        left alone when the model does not load: the model box says why)."""
        try:
            gallery = self.example_gallery(model)
        except Exception as e:
            raise refusal(e, self.redact, "the example masks") from None
        try:
            m = self.models.get(inputs.text(model, "model") or self.catalog.default)
            prompt = gr.Textbox(value=m.config.prompt)
        except Exception as e:  # noqa: BLE001 - a model that does not load is reported by the model box
            logger.info("model prompt not shown: %s", e)
            prompt = gr.skip()
        return gr.Gallery(value=gallery), prompt

    def use_example(self, editor: dict | None, evt: gr.SelectData, model: str | None = None) -> dict:
        try:
            examples = self.examples_of(model)
            i = inputs.number(evt.index, "example", whole=True, low=0, high=len(examples) - 1)
            return editor_value(read_mask(examples[i]), backdrop_of(editor))
        except Exception as e:
            raise refusal(e, self.redact, "the example mask") from None

    def random_mask(self, editor: dict | None, model: str | None = None) -> dict:
        """An augmented example mask of the model's (flip, scale, rotate, shift) or a procedural blob."""
        try:
            background = backdrop_of(editor)
            examples = self.examples_of(model)
        except Exception as e:
            raise refusal(e, self.redact, "the canvas") from None
        rng = np.random.default_rng()
        if rng.random() < 0.5:
            mask = augment_mask(read_mask(examples[rng.integers(len(examples))]), rng)
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

    # -- the frame
    def frame_gallery(self) -> list[tuple[np.ndarray, str]]:
        """The example frames as RGB images and names (read here: served by no folder of Gradio's)."""
        return [(read_image(image), image.stem) for image, _ in self.frames]

    def use_frame(self, evt: gr.SelectData):
        """An example frame clicked: the frame, its own lesion's mask (0/255, or None when it has none) and "Paint
        into this frame" on."""
        try:
            i = inputs.number(evt.index, "example frame", whole=True, low=0, high=len(self.frames) - 1)
            image, mask = self.frames[i]
            own = read_mask(mask) * np.uint8(255) if mask is not None else None
            return read_image(image), own, gr.Checkbox(value=True)
        except Exception as e:
            raise refusal(e, self.redact, "the example frame") from None

    def set_reference(self, reference, editor: dict | None) -> dict:
        """Show the frame (or a reference image) under the drawing, or a black canvas again; the strokes are
        kept."""
        try:
            background = inputs.image(reference, "the frame")
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

    def prepare(self, editor: dict | None, seed: float | None, randomize: bool, frame=None,
                paint: bool = False) -> tuple[Image.Image, int]:
        """Step 1 of the Generate button: the canvas -> the mask sent to /generate (a bool array, shown and sent
        as a 1-bit PNG), and the seed. Painting into a frame (`paint` with a `frame`), the mask drawn over the
        frame's square backdrop is brought to the frame's own height and width (it was drawn on the frame stretched
        to the square), so that it fits the frame as drawn."""
        try:
            mask = mask_from_editor(editor)
            if mask.all():
                raise DataError("the mask is all white: it needs some black background too")
            seed = inputs.seed(seed, inputs.flag(randomize, "randomise seed"))
            shown = inputs.image(frame, "the frame") if inputs.flag(paint, "paint into this frame") else None
            if shown is not None and np.asarray(shown).shape[:2] != mask.shape:
                h, w = np.asarray(shown).shape[:2]
                mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        except Exception as e:
            raise refusal(e, self.redact, "the canvas") from None
        return Image.fromarray(mask), seed

    # -- generation (the /generate API)
    def generate(self, mask, prompt: str | None = None, num_images: int = 4, steps: int = 20,
                 guidance_scale: float = sampling.DEFAULTS["guidance_scale"], seed: int | None = None,
                 scheduler: str = sampling.DEFAULTS["scheduler"], model: str | None = None, show_outline: bool = False,
                 results: list | None = None, control_scale: float | None = None, control_end: float | None = None,
                 autoguidance: float | None = None, cache_interval: int = 1, precision: str = "float32",
                 frame=None, frame_mask=None, paint_into_frame: bool = True, margin: int = DEFAULT_MARGIN,
                 clear_frame_lesions: bool = False, progress=gr.Progress()):
        """Generate images for one mask (a mask image file: white = lesion, read as the CLI reads it). Returns the
        gallery (PNG files with the parameters in their text), the session's new results and a status line.
        `seed` None or negative: random; image i has seed + i; an empty prompt uses the model's default;
        `control_scale` multiplies the ControlNet's residuals (how strongly the mask acts; 1: as trained) and
        `control_end` is the share of the steps, from the first, in which it acts; `autoguidance` above 1 pushes the
        images away from the model's guide, a weaker version of it (1: off; above 1 needs a model with a guide);
        None for these three: the model's recommended values. `cache_interval` k > 1 reuses the deep network
        features for k - 1 steps and `precision` "bfloat16" computes in bfloat16 (faster; 1 and "float32": the plain
        sampler; the page's Speed choice sets them from the model's presets). `model`: one the server offers (see
        the model selector; None: the default). A cancelled request stops between two steps.

        Painting into a frame: `frame` (an image file; used while `paint_into_frame` is true) is the real image the
        lesion is painted into; the mask must have its aspect (within 10%) and lie on its picture. The results are
        the frame with the new lesion, every pixel farther than `margin` pixels (at the model resolution) from it
        the frame's own. `frame_mask` (a mask file, optional) is the frame's own lesion: the pairs' masks are the
        union of it and the new lesion; without it they hold the new lesion only, and the status says so. With
        `clear_frame_lesions` the frame's own lesion is painted away first (the masks: the new lesion only)."""
        try:
            binary = mask_value(mask)
            params = sampling.read_params(prompt, steps, guidance_scale, scheduler, control_scale, control_end,
                                          autoguidance, cache_interval, precision)
            count = inputs.number(num_images, "number of images", whole=True, low=NUM_IMAGES[0], high=NUM_IMAGES[1])
            base = inputs.seed(seed)
            show_outline = inputs.flag(show_outline, "show outline")
            painting = inputs.flag(paint_into_frame, "paint into frame")
            image = inputs.image(frame, "the frame") if painting else None
            own = frame_mask_value(frame_mask) if image is not None else None
            margin = inputs.number(margin, "margin", whole=True, low=MARGIN[0], high=MARGIN[1])
            clear = inputs.flag(clear_frame_lesions, "clear the frame's own lesion")
            m = self.models.get(inputs.text(model, "model") or self.catalog.default)
            off = sampling.fit_autoguidance(params, m)
            painted = None if image is None else prepare_frame(
                _rgb(image), m.config.resolution, own,
                "" if isinstance(frame, np.ndarray) else inputs.shown_name(frame))  # recorded in each pair
            t0 = time.perf_counter()
            progress((0, count * params.steps), desc="Sampling", unit="steps")

            def step(done: int, total: int) -> None:
                if self.cancelled():
                    raise Cancelled(f"stopped after {done} of {total} steps")
                progress((done, total), desc="Sampling", unit="steps")

            with self.turns.interactive(self.cancelled):  # before any batch's next step (studio.jobs.base.Turns)
                items = _sample(m, binary, count, base, params, step, "studio",
                                **({} if image is None else dict(frame=painted, margin=margin,
                                                                 clear_frame_lesions=clear)))
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
                  f"{sampling.describe_autoguidance(used['autoguidance'])}{sampling.describe_speed(params)}{off}"
                  f"{describe_frame(used)}. Click an image, then Keep or Discard.")
        if used.get("frame_mask") == "unknown":
            status += "\n\n" + UNLABELLED
        return self.render(shots, show_outline), shots, status

    def speed_preset(self, model: str | None, speed: str | None):
        """The Speed choice or the model changed: the steps, scheduler, guidance, feature reuse and precision
        widgets at the selected model's preset (left alone when the model does not load: its box says why)."""
        try:
            return sampling.speed_values(self.models.get(inputs.text(model, "model") or self.catalog.default),
                                         sampling.read_speed(speed))
        except Exception as e:  # noqa: BLE001 - a model that does not load is reported by the model box
            logger.info("speed preset not applied: %s", e)
            return (gr.skip(),) * 5

    def render(self, shots: list[Shot] | None, show_outline: bool = False) -> list[tuple[str, str]]:
        """The results gallery for the outline checkbox."""
        return gallery_items(self.scratch, shots, show_outline)


def describe_frame(used: dict) -> str:
    """The frame part of a status line, from an image's recorded parameters; nothing without a frame."""
    if "frame_mask" not in used:
        return ""
    if used["clear_frame_lesions"] and used["frame_mask"] == "known":
        whose = "the frame's own lesion painted away first; masks: the new lesion"
    elif used["frame_mask"] == "known":
        whose = "masks: the new lesion and the frame's own"
    else:
        whose = "masks: the new lesion only"
    return f" · painted into the frame (margin {used['margin']} px; {whose})"


@dataclass
class GenerateWidgets:
    """The tab's widgets, by the part of the page they are in (the canvas column, the settings column)."""

    editor: gr.ImageEditor
    clear: gr.Button
    random: gr.Button
    examples: gr.Gallery
    mask_file: gr.File
    frame: gr.Image
    frame_mask: gr.Image
    paint: gr.Checkbox
    frame_examples: gr.Gallery
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
    speed: gr.Radio
    cache_interval: gr.Slider
    precision: gr.Dropdown
    show_outline: gr.Checkbox
    gallery: gr.Gallery
    status: gr.Markdown
    curation: collection.CurationButtons
    margin: gr.Slider
    clear_frame: gr.Checkbox


def _canvas_column(tab: GenerateTab) -> dict:
    """The mask and the frame: the canvas (over the frame, when one is loaded), its buttons, the example masks, the
    frame with its own lesion's mask beside it, the example frames, the mask file upload and the mask sent."""
    editor = gr.ImageEditor(
        value=editor_value(None), label="Mask: pick the Brush and paint the lesion in white (over the frame, when "
                                        "one is loaded)",
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
    with gr.Row():
        frame = gr.Image(label="Frame: a real image to paint the lesion into (optional)", type="numpy",
                         image_mode="RGB", format="png", sources=["upload", "clipboard"], height=220,
                         elem_id="frame")
        frame_mask = gr.Image(label="The frame's own lesion mask (optional; white = lesion)", type="numpy",
                              image_mode="L", format="png", sources=["upload", "clipboard"], height=220,
                              elem_id="frame-mask")
    paint = gr.Checkbox(True, label="Paint into this frame (the results keep the rest of the frame, pixel for "
                                     "pixel; the masks add the frame's own lesion)", elem_id="paint-frame")
    frame_examples = gr.Gallery(tab.frame_gallery(), label="Example frames, with their masks (click one)", columns=4,
                                height=130, allow_preview=False, object_fit="contain", fit_columns=False,
                                elem_id="example-frames", buttons=[])
    with gr.Accordion("Upload a mask file", open=False):
        mask_file = gr.File(label="Mask file (PNG/JPEG/TIFF...; white = lesion: above 127 in 8 bits, 1 in a 0/1 "
                                  "label mask)", file_types=["image"], type="filepath", elem_id="mask-file")
    mask_in = gr.Image(label="Mask sent to the model (binarised)", type="numpy", image_mode="L", format="png",
                       interactive=False, height=160, elem_id="mask-preview", buttons=["download"])
    return dict(editor=editor, clear=clear, random=random, examples=examples, mask_file=mask_file, frame=frame,
                frame_mask=frame_mask, paint=paint, frame_examples=frame_examples, mask_in=mask_in)


def _settings_column(recommended, guided: bool) -> dict:
    """The clinician's settings (prompt, number of images, seed) and the Generate button first, the technical ones
    in a closed "Advanced" section (preset per model: they follow the selected model and the Speed choice), then
    the results, large enough to judge, with their curation buttons."""
    prompt = gr.Textbox(recommended.prompt, label="Prompt", placeholder="empty: the model's default prompt", lines=1)
    preset = sampling.default_speed(recommended)
    with gr.Row():
        num_images = gr.Slider(*NUM_IMAGES, value=sampling.DEFAULTS["num_images"], step=1, label="Number of images",
                               scale=2)
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, scale=1)
        randomize = gr.Checkbox(True, label="Randomise seed", scale=1)
    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
    with gr.Accordion("Advanced (preset per model)", open=False, elem_id="advanced"):
        speed = sampling.speed_radio(elem_id="speed")
        with gr.Row():
            steps = sampling.steps_slider(preset["steps"])
            scheduler = gr.Dropdown(list(SCHEDULERS), value=preset["scheduler"], label="Scheduler")
        guidance = sampling.guidance_slider(preset["guidance_scale"])
        with gr.Row():
            control = sampling.control_slider(recommended.control_scale, "1: as trained; preset per model")
            control_end = sampling.control_end_slider(recommended.control_end, "the mask acts in the first steps, "
                                                                                "which set the layout; preset per model")
            autoguidance = sampling.autoguidance_slider(recommended.autoguidance, guided)
        with gr.Row():
            cache_interval, precision = sampling.speed_widgets(preset)
        with gr.Row():
            margin = gr.Slider(*MARGIN, value=DEFAULT_MARGIN, step=1, label="Margin (px)", elem_id="margin",
                               info="painting into a frame: how far around the lesion the frame may change (at the "
                                    "model's resolution); beyond it every pixel is the frame's")
            clear_frame = gr.Checkbox(False, label="Clear the frame's own lesion first", elem_id="clear-frame",
                                      info="paint it away (needs the frame's mask): the masks then hold the new "
                                           "lesion only")
    show_outline = gr.Checkbox(False, label="Draw the mask outline over the results")
    gallery = gr.Gallery(label="Results (click one, then Keep or Discard)", columns=2, height=620, format="png",
                         object_fit="contain", elem_id="results", fit_columns=False, interactive=False)
    status = gr.Markdown("", label="Status", elem_id="generate-status")
    curation = collection.curation_buttons()
    return dict(prompt=prompt, num_images=num_images, steps=steps, guidance=guidance, control=control,
                control_end=control_end, autoguidance=autoguidance, scheduler=scheduler, seed=seed,
                randomize=randomize, generate=generate_btn, show_outline=show_outline, gallery=gallery,
                status=status, curation=curation, speed=speed, cache_interval=cache_interval, precision=precision,
                margin=margin, clear_frame=clear_frame)


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
    w.examples.select(tab.use_example, [w.editor, model], w.editor, **raw)
    w.random.click(tab.random_mask, [w.editor, model], w.editor, **raw)
    model.change(tab.model_defaults, model, [w.examples, w.prompt], api_visibility="private")
    w.clear.click(tab.clear_canvas, w.editor, w.editor, **raw)
    w.mask_file.upload(tab.upload_mask, [w.mask_file, w.editor], [w.editor, w.mask_file], **raw)
    # the frame: shown under the drawing; "Paint into this frame" turned on when one is loaded (it starts on: a
    # script's frame is painted into unless it says otherwise); a new frame of the visitor's own drops the previous
    # frame's mask; an example frame brings its own
    w.frame.change(tab.set_reference, [w.frame, w.editor], w.editor, **raw)
    w.frame.change(lambda frame: gr.Checkbox(value=True) if frame is not None else gr.skip(), w.frame, w.paint,
                   **raw)
    w.frame.upload(lambda: None, None, w.frame_mask, api_visibility="private")
    w.frame.clear(lambda: None, None, w.frame_mask, api_visibility="private")
    w.frame_examples.select(tab.use_frame, None, [w.frame, w.frame_mask, w.paint], api_visibility="private")
    w.generate.click(tab.prepare, [w.editor, w.seed, w.randomize, w.frame, w.paint], [w.mask_in, w.seed],
                     **raw).success(
        tab.generate, [w.mask_in, w.prompt, w.num_images, w.steps, w.guidance, w.seed, w.scheduler, model,
                       w.show_outline, results, w.control, w.control_end, w.autoguidance, w.cache_interval,
                       w.precision, w.frame, w.frame_mask, w.paint, w.margin, w.clear_frame],
        [w.gallery, results, w.status], api_name="generate", preprocess=False).success(
        lambda: None, None, results_sel, api_visibility="private")
    speed_outputs = [w.steps, w.scheduler, w.guidance, w.cache_interval, w.precision]
    for trigger in (w.speed, model):  # the Speed choice sets them from the selected model's presets
        trigger.change(tab.speed_preset, [model, w.speed], speed_outputs, api_visibility="private")
    w.show_outline.change(tab.render, [results, w.show_outline], w.gallery, api_visibility="private")
    w.gallery.select(collection.select_index, None, results_sel, api_visibility="private")

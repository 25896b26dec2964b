"""The page: its layout (the model selector, then the Generate, Train, Batch and API tabs) and the wiring between
the parts; each part builds its own widgets and events (`studio.tabs`), every handler a method of `Studio`'s parts.
Scripts use the stable API names (gradio_client): `/generate`, `/keep_all`, `/export`, `/train_start`,
`/train_stop`, `/train_status`, `/batch_start`, `/batch_status`, `/batch_stop`, `/batch_move`, `/batch_export`."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
from gradio.exceptions import InvalidPathError

from .server import Studio
from .settings import CHECKPOINTS_DIR, RUNS_DIR, Settings
from .tabs import batch, collection, generate, model, train

logger = logging.getLogger(__name__)

INTRO = """# Siamese-Diffusion Studio
Draw a lesion mask (or upload one), generate matching medical images (or paint the lesion into a real frame of
your own), keep the good pairs and export them as a segmentation dataset. Based on *Siamese-Diffusion*
(CVPR 2025). Synthetic images are for research (data augmentation), not for diagnosis."""

CSS = """
#mask-editor {min-height: 420px}
.compact-gallery {min-height: 0}
"""

API_HELP = """### Scripting with gradio_client
```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/")
gallery, status = client.predict(mask=handle_file("mask.png"), prompt="", num_images=4, steps=16,
                                 guidance_scale=9.0, seed=0, scheduler="dpm++", api_name="/generate")
# control_scale=3.0 sets the mask strength, control_end=0.5 the share of the steps it acts in (from the first),
# autoguidance=2.0 pushes the images away from the model's guide, a weaker version of it (1: off; only a model
# with a guide takes more); default: the default model's recommended values
gallery, status = client.predict(mask=handle_file("lesion.png"), frame=handle_file("frame.jpg"),
                                 frame_mask=handle_file("frame_mask.png"), margin=12, api_name="/generate")
# paints the lesion into a real frame (the mask of the frame's aspect): every pixel farther than `margin` px (at the
# model resolution) from it is the frame's; the pairs' masks are the union with the frame's own lesion (frame_mask;
# without it they hold the new lesion only, and the status says so); clear_frame_lesions=True paints the frame's own
# lesion away first (masks: the new lesion alone); paint_into_frame=False ignores the frame
client.predict(api_name="/keep_all")                            # keep every result of this session
zip_path = client.predict(nnunet=True, label="polyp", api_name="/export")
client.predict(data_folder="data/kvasir-seg", max_steps=200, api_name="/train_start")  # in the data folder
status = client.predict(api_name="/train_status")  # dict: state, step, max_steps, it_per_s, eta_s, losses...
client.predict(api_name="/train_stop")
status, key = client.predict(mask_files=[handle_file("masks.zip")], num_images=2, min_fidelity=0.8,
                             api_name="/batch_start")                  # runs in the background
# frame_files=[handle_file("frames.zip")] (frames with an optional masks/ of the same names) or
# frames_folder="data/kvasir-seg" paints each mask into real frames (margin=, clear_frame_lesions= as above)
client.predict(batch_key=key, api_name="/batch_status")  # dict: state, done, total, accepted, rejected, pairs...
zip_path = client.predict(batch_key=key, nnunet=True, api_name="/batch_export")  # the accepted pairs
```
`seed` below 0 means random; image *i* gets seed + *i*; `min_fidelity=None` means no threshold (every pair
accepted, with its score). Each generated PNG carries its parameters in the PNG text `parameters` (Stable
Diffusion convention) and the full record in `siamese`."""


class Page(gr.Blocks):
    """gr.Blocks whose requests that fail before their handler runs (a file that was not uploaded to this server, a
    value its component cannot take) are answered in one line that names no server path."""

    async def preprocess_data(self, *args, **kwargs):
        try:
            return await super().preprocess_data(*args, **kwargs)
        except gr.Error:
            raise
        except InvalidPathError:
            raise gr.Error("a file in the request was not uploaded to this server: upload it first (gradio_client: "
                           "handle_file(...)) and send what the upload returned", title="Input problem") from None
        except Exception as e:
            logger.warning("a request's values were refused before its handler: %s", type(e).__name__)
            raise gr.Error("a value in the request is not one this endpoint takes: see the API page for the type "
                           "of each parameter", title="Input problem") from None


def build_demo(model_path: str | None = None, *, checkpoints_dir: str | Path | None = None,
               runs_dir: str | Path | None = None, settings: Settings | None = None) -> gr.Blocks:
    """The app. `model_path`: the default model (else $SIAMESE_MODEL, else the bundled one); `settings`: what
    visitors may reach (else read from the environment, see studio.settings)."""
    studio = Studio(model_path, Path(checkpoints_dir or CHECKPOINTS_DIR), Path(runs_dir or RUNS_DIR),
                    settings=settings)
    recommended = studio.catalog.default_config()  # the mask and autoguidance sliders' presets (they follow the model)
    guided = studio.catalog.default_guided()
    with Page(title="Siamese-Diffusion Studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        demo.studio = studio  # for tests and scripts
        # the session's state: its results and kept pairs (collection.Shot), the selected one of each, the training
        # status version shown, and its batch key, kept by the browser (a reload finds the batch)
        results, kept = gr.State([]), gr.State([])
        results_sel, kept_sel = gr.State(None), gr.State(None)
        train_seen = gr.State(-1)
        batch_key = gr.BrowserState("")

        gr.Markdown(INTRO)
        selector = model.build(studio.selector, studio.settings)
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                gen = generate.build(studio.generate, recommended, guided)
                coll = collection.build()
            with gr.Tab("Train", id="train"):
                trn = train.build(studio.train)
            with gr.Tab("Batch", id="batch") as batch_tab:
                bat = batch.build(studio.settings, recommended, guided)
                batch.wire(demo, studio.batch, bat, batch_tab, selector.model, batch_key)
            with gr.Tab("API", id="api"):
                gr.Markdown(API_HELP)

        model.wire(demo, studio.selector, selector, [gen.control, gen.control_end, gen.autoguidance])
        generate.wire(studio.generate, gen, selector.model, results, results_sel)
        collection.wire(studio.collection, coll, gen.curation, gen.gallery, results, kept, results_sel, kept_sel,
                        gen.show_outline)
        train.wire(demo, studio.train, trn, selector.model, train_seen)
    return demo


def launch_options(settings: Settings | None = None) -> dict:
    """What `demo.launch` gets here and in the tests (host and port come from the environment). Errors other than
    the handlers' own one-line answers are not shown (`show_error=False`): no server path or library internals."""
    max_upload = (settings or Settings.from_env()).max_upload
    return dict(max_file_size=max_upload, show_error=False, css=CSS, theme=gr.themes.Default(primary_hue="teal"),
                footer_links=["api", "settings"])

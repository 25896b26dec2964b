"""The page: layout and wiring only. Every handler is a method of `Studio`; scripts use the stable API names
(gradio_client): `/generate`, `/keep_all`, `/export`, `/train_start`, `/train_stop`, `/train_status`, `/batch_start`,
`/batch_status`, `/batch_stop`, `/batch_move`, `/batch_export`."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from siamese.objective import LOSS_KEYS
from siamese.sampling import MAX_CONTROL_SCALE, MAX_SEED, SCHEDULERS

from .batch import batch_tab
from .generate import DEFAULTS
from .job import LOSS_COLORS, status_text
from .masks import CANVAS, editor_value
from .models import autoguidance_slider
from .settings import CHECKPOINTS_DIR, RUNS_DIR, Settings
from .state import Studio
from .training import BASE_MODELS, POLL_SECONDS

INTRO = """# Siamese-Diffusion Studio
Draw a lesion mask (or upload one), generate matching medical images, keep the good pairs and export them
as a segmentation dataset. Based on *Siamese-Diffusion* (CVPR 2025). Synthetic images are for research
(data augmentation), not for diagnosis."""

CSS = """
#mask-editor {min-height: 420px}
.compact-gallery {min-height: 0}
"""


def model_help(settings: Settings) -> str:
    """The model selector's help: what this server lets a visitor load."""
    typed = (["models/NAME (a folder of the server's models folder)"] if settings.models_root else []) + (
        ["a Hugging Face hub id (owner/name)"] if settings.allow_hub else [])
    return "The default model, the bundled ones and the runs trained here" + (
        "; or type " + " or ".join(typed) if typed else "")


def build_demo(model_path: str | None = None, *, checkpoints_dir: str | Path | None = None,
               runs_dir: str | Path | None = None, settings: Settings | None = None) -> gr.Blocks:
    """The app. `model_path`: the default model (else $SIAMESE_MODEL, else the bundled one); `settings`: what
    visitors may reach (else read from the environment, see studio.settings)."""
    studio = Studio(model_path, Path(checkpoints_dir or CHECKPOINTS_DIR), Path(runs_dir or RUNS_DIR),
                    settings=settings)
    recommended = studio.default_config()  # the mask and autoguidance sliders' presets (they follow the model)
    with gr.Blocks(title="Siamese-Diffusion Studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        demo.studio = studio  # for tests and scripts
        results = gr.State([])
        collection = gr.State([])
        results_sel = gr.State(None)
        coll_sel = gr.State(None)
        train_seen = gr.State(-1)
        batch_key = gr.BrowserState("")  # the session's batch key, kept by the browser: a reload finds the batch

        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(studio.model_choices(), value=studio.catalog.default_id, label="Model",
                                allow_custom_value=True, info=model_help(studio.settings), scale=4)
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
                            mask_file = gr.File(label="Mask file (PNG/JPEG/TIFF...; white = lesion: above 127 in "
                                                      "8 bits, 1 in a 0/1 label mask)",
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
                        guidance = gr.Slider(0.0, 15.0, value=DEFAULTS["guidance_scale"], step=0.5,
                                             label="Guidance scale")
                        with gr.Row():
                            control = gr.Slider(0.0, MAX_CONTROL_SCALE, value=recommended.control_scale,
                                                step=0.25, label="Mask strength (control scale)",
                                                info="1: as trained; preset per model")
                            control_end = gr.Slider(0.05, 1.0, value=recommended.control_end, step=0.05,
                                                    label="Mask steps (share of the steps)",
                                                    info="the mask acts in the first steps, which set the "
                                                         "layout; preset per model")
                            autoguidance = autoguidance_slider(recommended.autoguidance, studio.default_guided())
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
                                                 placeholder="e.g. data/kvasir-seg, in the server's data folder "
                                                             "(images/ + masks/, or prompt.json)")
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
                        train_md = gr.Markdown(status_text(studio.job.snapshot()), elem_id="train-status",
                                               label="Status")
                        loss_plot = gr.LinePlot(None, x="step", y="value", color="term", label="Losses",
                                                y_title="loss", color_map=dict(zip(LOSS_KEYS, LOSS_COLORS)),
                                                colors_in_legend=list(LOSS_KEYS))
                        preview = gr.Image(label="Preview (top: samples, bottom: their training masks)",
                                           interactive=False, format="png")
                timer = gr.Timer(POLL_SECONDS, active=False)  # on only while a run is active (train_poll)

            batch_tab(demo, studio, model, batch_key)  # studio.batch: the Batch tab and its wiring

            with gr.Tab("API", id="api"):
                gr.Markdown(API_HELP)

        # -- wiring: models
        model_outputs = [model_md, control, control_end, autoguidance]
        demo.load(studio.model_info, model, model_outputs, api_visibility="private")
        model.change(studio.model_info, model, model_outputs, api_visibility="private")
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
                              results, control, control_end, autoguidance],
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

        # -- wiring: training (polled with a timer, never a blocking generator). The timer is on only while a run is
        # active: each poll (on load, after Start and Stop, on each tick) switches it on or off.
        status_outputs = [train_md, loss_plot, preview, model, train_seen, timer]
        poll = dict(fn=studio.train_poll, inputs=train_seen, outputs=status_outputs, api_visibility="private",
                    show_progress="hidden", concurrency_limit=None)
        demo.load(**poll)
        start_btn.click(studio.train_start, [data_folder, data_zip, base_model, base_path, max_steps, batch_size, lr,
                                             resolution, checkpoint_every, preview_every, name, model, base_steps],
                        train_md, api_name="train_start").success(**poll)
        stop_btn.click(studio.train_stop, None, train_md, api_name="train_stop").then(**poll)
        timer.tick(**poll)
        gr.api(studio.train_status, api_name="train_status", concurrency_limit=None)
        use_btn.click(studio.use_trained, None, model, api_visibility="private")
    return demo


API_HELP = """### Scripting with gradio_client
```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/")
gallery, status = client.predict(mask=handle_file("mask.png"), prompt="", num_images=4, steps=16,
                                 guidance_scale=9.0, seed=0, scheduler="dpm++", api_name="/generate")
# control_scale=3.0 sets the mask strength, control_end=0.5 the share of the steps it acts in (from the first),
# autoguidance=2.0 pushes the images away from the model's guide, a weaker version of it (1: off; only a model
# with a guide takes more); default: the default model's recommended values
client.predict(api_name="/keep_all")                            # keep every result of this session
zip_path = client.predict(nnunet=True, label="polyp", api_name="/export")
client.predict(data_folder="data/kvasir-seg", max_steps=200, api_name="/train_start")  # in the data folder
status = client.predict(api_name="/train_status")  # dict: state, step, max_steps, it_per_s, eta_s, losses...
client.predict(api_name="/train_stop")
status, key = client.predict(mask_files=[handle_file("masks.zip")], num_images=2, min_fidelity=0.8,
                             api_name="/batch_start")                  # runs in the background
client.predict(batch_key=key, api_name="/batch_status")  # dict: state, done, total, accepted, rejected, pairs...
zip_path = client.predict(batch_key=key, nnunet=True, api_name="/batch_export")  # the accepted pairs
```
`seed` below 0 means random; image *i* gets seed + *i*. Each generated PNG carries its parameters in the
PNG text `parameters` (Stable Diffusion convention) and the full record in `siamese`."""


def launch_options(settings: Settings | None = None) -> dict:
    """What `demo.launch` gets here and in the tests (host and port come from the environment)."""
    max_upload = (settings or Settings.from_env()).max_upload
    return dict(max_file_size=max_upload, show_error=True, css=CSS, theme=gr.themes.Default(primary_hue="teal"),
                footer_links=["api", "settings"])

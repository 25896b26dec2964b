"""The Batch tab: many masks -> N pairs each, scored and sorted into accepted and rejected, curated, exported.

Masks come from uploaded files (mask images, or zips of them) or a dataset folder in the server's data folder;
the library's `siamese.batch.run_batch` makes and scores the pairs in a background job of the session
(`studio.jobs.batch`), so the batch survives a page reload and other visitors' Generate goes first
(`studio.jobs.base.Turns`). The page polls only while the batch runs, as the Train tab does. Scripts:
`/batch_start` (run without Gradio's preprocessing: the handler checks every value), `/batch_status`,
`/batch_stop`, `/batch_move`, `/batch_export`, each with the `batch_key` /batch_start returned.

With frames (uploaded images or zips of them, or a frames folder of the server's data folder: images with an
optional masks/ of the same names, or a dataset folder), each mask is painted into real frames instead
(`siamese.inpaint`; `run_batch`'s `frames`): the pairs are the frames with the new lesions, their masks the union
with each frame's own lesion where its mask is known.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import gradio as gr
import numpy as np

from siamese import DataError, ModelLoadError
from siamese.batch import frame_choices, run_batch
from siamese.data import resize_pair
from siamese.inpaint import DEFAULT_MARGIN

from .. import inputs
from ..catalog import ModelCatalog, ModelStore
from ..datasets import DISK_RESERVE_BYTES, dataset_folder, extract_zip, human_size, mask_sources
from ..frames import batch_frames
from ..jobs.base import ACTIVE_STATES, POLL_SECONDS, STATE_ICONS, Turns, duration
from ..jobs.batch import BatchJob, BatchPair, BatchRegistry
from ..masks import MAX_MASK_FILE_BYTES, read_mask_upload
from ..replies import Redactor, md_escape, refusal
from ..scratch import Scratch
from ..settings import Settings
from . import sampling

logger = logging.getLogger(__name__)

STEP_IMAGES = 4  # images made per turn of the models: a waiting Generate waits for at most this many
GALLERY_MAX = 100  # pairs shown per gallery: the ones nearest the threshold (all count, all are exported)
DEFAULT_MIN_FIDELITY = 0.8  # the model card's measured best (versions 2 and 6: filtered beat unfiltered most at 0.8)


def read_masks(sources: list[tuple[str, Path]], shown: str, resolution: int,
               keep_aspect: bool = False) -> list[tuple[str, np.ndarray]]:
    """Mask files -> (name, (R, R) {0, 1} at the model resolution), refusing unreadable, empty and all-white
    masks and masks whose lesion vanishes at the model resolution, each named in the message. With `keep_aspect`
    (masks painted into frames, which must have their aspect) a mask keeps its aspect: its shorter side R."""
    masks = []
    for name, path in sources:
        try:
            mask = read_mask_upload(path)  # the library's one mask rule, the upload's size limit
        except DataError as e:
            raise DataError(f"{shown}: {str(e).replace(str(path), path.name)}") from None
        _, small = resize_pair(None, mask, resolution)
        if not small.any():
            raise DataError(f"{shown}: {path.name}: the lesion vanishes at the model's {resolution}x{resolution} "
                            "pixels (too small): leave this mask out")
        if keep_aspect:
            h, w = mask.shape
            scale = resolution / min(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = mask if scale >= 1 else cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        masks.append((name, small))
    return masks


def batch_status_text(snap: dict) -> str:
    """The progress readout: pairs done, accepted and rejected of the total, a bar, speed and ETA."""
    text = STATE_ICONS[snap["state"]] + snap["message"]
    if snap["state"] == "idle":
        return text
    done, total = snap["done"], snap["total"]
    threshold = (f" (min fidelity {snap['min_fidelity']:.2f})" if snap["scored"] and snap["min_fidelity"] is not None
                 else " (unscored: this model has no fidelity scorer)" if not snap["scored"] else "")
    text += (f"\n\n**{done} / {total}** pairs · ✓ **{snap['accepted']}** accepted · ✗ **{snap['rejected']}** "
             f"rejected{threshold}")
    filled = round(20 * done / total) if total else 0
    text += f"\n\n`{'█' * filled}{'░' * (20 - filled)}` {100 * done / max(total, 1):.0f}%"
    if snap["state"] in ACTIVE_STATES and snap["s_per_pair"]:
        text += f" · {snap['s_per_pair']:.1f} s per pair · ETA {duration(snap['eta_s'])}"
    return text + (f"\n\n{snap['describe']}" if snap["describe"] else "")


def _caption(p: BatchPair) -> str:
    score = "unscored" if p.fidelity is None else f"{p.fidelity:.2f}"
    return f"#{p.id} · {score} · {p.name}" + (" · moved" if p.moved else "")


def pair_galleries(snap: dict) -> tuple[gr.Gallery, gr.Gallery]:
    """The accepted and rejected galleries, nearest the threshold first (the pairs worth a second look)."""
    pairs = snap["pairs"]
    accepted = sorted((p for p in pairs if p.accepted), key=lambda p: (p.fidelity is None, p.fidelity or 0, p.id))
    rejected = sorted((p for p in pairs if not p.accepted), key=lambda p: (-(p.fidelity or 0), p.id))

    def gallery(items: list[BatchPair], what: str, other: str) -> gr.Gallery:
        shown = f" (the {GALLERY_MAX} nearest the threshold shown)" if len(items) > GALLERY_MAX else ""
        return gr.Gallery(value=[(p.image, _caption(p)) for p in items[:GALLERY_MAX]], selected_index=None,
                          label=f"{what}: {len(items)}{shown}. Click a pair to move it to {other}")

    return gallery(accepted, "Accepted", "Rejected"), gallery(rejected, "Rejected", "Accepted")


class BatchTab:
    """The Batch tab's handlers."""

    def __init__(self, settings: Settings, catalog: ModelCatalog, models: ModelStore, scratch: Scratch,
                 redact: Redactor, batches: BatchRegistry, turns: Turns) -> None:
        self.settings, self.catalog, self.models, self.scratch = settings, catalog, models, scratch
        self.redact, self.batches, self.turns = redact, batches, turns

    def _batch_masks(self, mask_files, data_folder: str | None, resolution: int, tmp: Path,
                     keep_aspect: bool = False) -> tuple[list, str]:
        """The batch's masks at the model resolution, and how messages name where they came from."""
        uploaded = [(path, inputs.shown_name(value)) for value in
                    (mask_files if isinstance(mask_files, (list, tuple)) else [mask_files])
                    if (path := inputs.upload(value, "mask file")) is not None]
        sources, names = [], []
        budget = self.settings.max_unpacked_bytes  # for all the zips together
        limit = self.settings.batch_max_masks
        if uploaded:
            for k, (path, name) in enumerate(uploaded):
                stem = Path(name).stem
                if path.suffix.lower() == ".zip":
                    # counts and sizes from the zip's directory, before anything is unpacked
                    root = extract_zip(path, tmp / str(k), max_bytes=budget, max_files=2 * limit + 100,
                                       max_file_bytes=MAX_MASK_FILE_BYTES, max_masks=limit, shown=name)
                    budget -= sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
                    found = mask_sources(root, name)
                    sources.append((name, [(f"{stem}/{n}" if len(uploaded) > 1 else n, p) for n, p in found]))
                else:
                    sources.append(("the uploaded masks", [(stem, path)]))
                names.append(name)
            shown = f"{len(uploaded)} uploaded files" if len(uploaded) > 1 else f"the uploaded {names[0]}"
        elif data_folder:
            folder = dataset_folder(data_folder, self.settings.data_root)
            shown = f"`{self.redact(str(folder))}`"
            sources.append((self.redact(str(folder)), mask_sources(folder, self.redact(str(folder)))))
        else:
            raise DataError("no masks: upload mask images or a zip of them, or type a dataset folder of the "
                            "server's data folder")
        count = sum(len(found) for _, found in sources)
        if count > limit:
            raise DataError(f"{shown} holds {count:,} masks; a batch takes at most {limit:,} "
                            "(SIAMESE_BATCH_MAX_MASKS): split them")
        masks = [m for where, found in sources for m in read_masks(found, where, resolution, keep_aspect)]
        taken = set()
        for name, _ in masks:
            if name in taken:
                raise DataError(f"two masks are named {name}: rename one (pairs are named by their mask)")
            taken.add(name)
        return masks, shown

    def batch_start(self, mask_files: list[str] | str | None = None, data_folder: str | None = None,
                    augment: bool = False, num_images: int = 2, min_fidelity: float | None = DEFAULT_MIN_FIDELITY,
                    prompt: str | None = None, steps: int = sampling.DEFAULTS["steps"],
                    guidance_scale: float = sampling.DEFAULTS["guidance_scale"], seed: int | None = None,
                    scheduler: str = sampling.DEFAULTS["scheduler"], control_scale: float | None = None,
                    control_end: float | None = None, model: str | None = None, batch_key: str | None = None,
                    randomize: bool = False, autoguidance: float | None = None, cache_interval: int = 1,
                    precision: str = "float32", frame_files: list[str] | str | None = None,
                    frames_folder: str | None = None, margin: int = DEFAULT_MARGIN,
                    clear_frame_lesions: bool = False):
        """Start a batch in the background: `num_images` pairs per mask (uploaded mask images or zips of them,
        else the masks of `data_folder` in the server's data folder), optionally augmented (flips, scaling,
        shift-scale-rotate), each scored by the model's fidelity scorer and accepted when it scores at least
        `min_fidelity` (None: no threshold, every pair accepted with its score). Returns the status and the
        session's `batch_key` (pass it to the other /batch_* calls). `seed` None or negative: random;
        `control_scale`, `control_end`, `autoguidance`, `cache_interval` and `precision` as for /generate (None for the
        first three: the model's recommended values); a new batch replaces the session's previous one.

        With frames (`frame_files`: frame images, or zips of a folder of frames with an optional masks/ of the
        same names or of a dataset folder; else `frames_folder` in the server's data folder), each image is the
        mask painted into a frame its seed chooses among those the mask fits (same aspect, on the picture), as in
        /generate: `margin` pixels around the lesion may change, the masks are the union with the frame's own
        lesion where its mask is known, or the new lesion alone with `clear_frame_lesions` (the frame's lesion
        painted away first). The fidelity then scores the new lesion's region."""
        if self.settings.batch_disabled:
            raise gr.Error(self.settings.batch_disabled, title="Batches disabled")
        tmp = self.scratch.folder("batch-masks-")
        try:
            count = inputs.number(num_images, "images per mask", whole=True)
            if not 1 <= count <= self.settings.batch_max_images:
                raise ValueError(f"images per mask must be between 1 and {self.settings.batch_max_images} "
                                 f"(SIAMESE_BATCH_MAX_IMAGES), got {count}")
            threshold = inputs.number(min_fidelity, "min fidelity", optional=True)
            if threshold is not None and not 0.0 <= threshold <= 1.0:
                raise ValueError(f"min fidelity must be between 0 and 1 (a Dice score), got {threshold:g}")
            params = sampling.read_params(prompt, steps, guidance_scale, scheduler, control_scale, control_end,
                                          autoguidance, cache_interval, precision)
            seed = inputs.seed(seed, inputs.flag(randomize, "randomise seed"))
            augment = inputs.flag(augment, "augment")
            self.batches.check(batch_key)  # before the masks are read; the job is made when all is checked
            model = inputs.text(model, "model") or self.catalog.default
            m = self.models.get(model)
            off = sampling.fit_autoguidance(params, m)
            weight = params.autoguidance_for(m)
            res = m.config.resolution
            margin = inputs.number(margin, "margin", whole=True, low=0, high=res // 4)
            clear = inputs.flag(clear_frame_lesions, "clear the frames' own lesions")
            frames = batch_frames(frame_files, inputs.text(frames_folder, "frames folder"), self.settings,
                                  self.redact, res, tmp)
            masks, shown = self._batch_masks(mask_files, inputs.text(data_folder, "dataset folder"), res, tmp,
                                             keep_aspect=frames is not None)
            if frames is not None:  # a mask that fits none of the frames is refused now, not when its turn comes
                frame_choices(frames, masks, count, seed, res, augment=augment)
            unknown = sum(f.mask is None for f in frames or [])
            if unknown:
                gr.Warning(f"{unknown} of {len(frames)} frames have no mask: the frame's own lesions are not "
                           "labelled in their pairs (a masks/ folder of the same names beside the frames gives "
                           "them)", title="Frames without masks")
            total = len(masks) * count
            need = total * 4 * res * res  # an upper bound of the PNGs: RGB image + mask, uncompressed
            if need + DISK_RESERVE_BYTES > shutil.disk_usage(self.scratch.path).free:
                raise DataError(f"{total:,} pairs need up to {human_size(need)}, more than the server's free disk "
                                "space allows: fewer masks or fewer images per mask")
            scorer = self.models.scorer(model)
            if scorer is None and threshold:
                gr.Warning("This model has no fidelity scorer (segmenter/), so the min fidelity cannot apply: every "
                           "pair is accepted, unscored. Add one with `python -m siamese train-scorer`.",
                           title="No fidelity scorer")
            threshold = threshold if scorer is not None else None
            describe = (f"{len(masks)} masks from {shown}{' (augmented)' if augment else ''} × {count} images · "
                        f"seeds from {seed} · model `{self.catalog.resolve(model).public}`"
                        f"{sampling.describe_autoguidance(weight)}{sampling.describe_speed(params)}{off}")
            if frames is not None:
                describe += (f" · painted into {len(frames)} frames (margin {margin} px"
                             f"{'; their own lesions painted away first' if clear else ''})")
                if unknown:
                    describe += (f" · ⚠️ {unknown} frames without masks: the frame's own lesions are not labelled "
                                 "in their pairs")
            paint = {} if frames is None else dict(frames=frames, margin=margin, clear_frame_lesions=clear)

            def make_pairs(stop):
                return run_batch(m, masks, count, seed, params, augment=augment, scorer=scorer,
                                 min_fidelity=threshold, stop=stop, batch_size=STEP_IMAGES, **paint)

            job = self.batches.job_for(batch_key)
            job.start(make_pairs, total, threshold, scorer is not None, md_escape(describe).replace("\\`", "`"),
                      self.turns)
        except Exception as e:
            raise refusal(e, self.redact, "the batch") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return batch_status_text(job.snapshot()), job.key

    def _job(self, batch_key: str | None) -> BatchJob | None:
        return self.batches.get(batch_key) if batch_key else None

    def batch_stop(self, batch_key: str | None = None) -> str:
        """Stop the session's batch after the images in progress; every pair made is kept."""
        job = self._job(batch_key)
        if job is None or not job.stop():
            gr.Warning("No batch is running in this session.")
        return batch_status_text(job.snapshot()) if job else gr.skip()

    def batch_status(self, batch_key: str | None = None) -> dict:
        """The session's batch as JSON: state (idle, running, stopping, finished, stopped, failed), done, total,
        accepted, rejected, s_per_pair, eta_s, min_fidelity, scored, error, message (Markdown) and pairs (id, mask
        name, seed, fidelity, accepted, moved)."""
        job = self._job(batch_key)
        if job is None:
            return {"state": "idle", "done": 0, "total": 0, "accepted": 0, "rejected": 0, "pairs": [],
                    "message": "No batch in this session."}
        snap = job.snapshot()
        keys = ("state", "done", "total", "accepted", "rejected", "s_per_pair", "eta_s", "min_fidelity", "scored",
                "error")
        pairs = [dict(id=p.id, name=p.name, seed=p.seed, fidelity=p.fidelity, accepted=p.accepted, moved=p.moved)
                 for p in snap["pairs"]]
        return {**{k: snap[k] for k in keys}, "message": batch_status_text(snap), "pairs": pairs}

    def batch_move(self, batch_key: str | None = None, pair: int = 0) -> str:
        """Move pair #`pair` to the other set (accepted <-> rejected); returns the status."""
        job = self._job(batch_key)
        try:
            if job is None:
                raise ValueError("no batch in this session: start one first")
            job.move(inputs.number(pair, "pair", whole=True))
        except Exception as e:
            raise refusal(e, self.redact, "the move") from None
        return batch_status_text(job.snapshot())

    def batch_pick(self, batch_key: str | None, evt: gr.SelectData) -> None:
        """A click in either gallery: move that pair (named by its caption, "#ID · ...") to the other set."""
        caption = (evt.value or {}).get("caption") if isinstance(evt.value, dict) else None
        match = re.match(r"#(\d+) ", caption or "")
        if match:
            self.batch_move(batch_key, int(match[1]))

    def batch_poll(self, batch_key: str | None = None, seen: int = -1):
        """For the page (on load, after Start and Stop, after a move, each tick): status, the two galleries, the
        version shown, the timer (active only while the batch runs) and the download button (reset when the
        pairs changed). Parts that did not change since version `seen` are skipped."""
        job = self._job(batch_key)
        snap = job.snapshot() if job else None
        timer = gr.Timer(POLL_SECONDS, active=bool(snap) and snap["state"] in ACTIVE_STATES)
        if snap is None or snap["version"] == seen:
            return gr.skip(), gr.skip(), gr.skip(), seen, timer, gr.skip()
        if snap["state"] == "failed" and seen >= 0:
            gr.Warning(snap["error"], title="Batch failed")
        return (batch_status_text(snap), *pair_galleries(snap), snap["version"], timer,
                gr.DownloadButton(value=None, label="Download zip (prepare it first)", interactive=False))

    def batch_export(self, batch_key: str | None = None, nnunet: bool = False, label: str = "lesion") -> str:
        """A zip of the batch's accepted pairs (images/, masks/, metadata.jsonl with each pair's fidelity, the
        threshold and how it was curated, README.txt; nnU-Net v2 layout as an option), as Keep's export."""
        job = self._job(batch_key)
        accepted = [p for p in (job.snapshot()["pairs"] if job else []) if p.accepted]
        if not accepted:
            raise gr.Error("nothing to export: no accepted pairs in this session's batch", title="Nothing accepted")
        try:
            return self.scratch.export([p.generated() for p in accepted], "siamese-batch", bool(nnunet), label)
        except Exception as e:
            raise refusal(e, self.redact, "the export") from None

    def batch_download_ready(self, batch_key: str | None = None):
        job = self._job(batch_key)
        n = job.snapshot()["accepted"] if job else 0
        return gr.DownloadButton(label=f"Download {n} accepted pair{'s' if n != 1 else ''} (.zip)", interactive=True)

    def batch_control(self, model: str | None):
        """The batch's mask strength, mask steps and autoguidance sliders follow the selected model's
        recommendations (as Generate's do; autoguidance 1 and locked without a guide)."""
        try:
            m = self.models.get(model)
        except ModelLoadError:
            return gr.skip(), gr.skip(), gr.skip()  # Generate's model box says why
        return sampling.preset(m)

    def batch_speed(self, model: str | None, speed: str | None):
        """The Speed choice or the model changed: the batch's steps, scheduler, guidance, feature reuse and
        precision at the selected model's preset (left alone when the model does not load)."""
        try:
            return sampling.speed_values(self.models.get(inputs.text(model, "model") or self.catalog.default),
                                         sampling.read_speed(speed))
        except Exception as e:  # noqa: BLE001 - a model that does not load is reported by Generate's model box
            logger.info("speed preset not applied: %s", e)
            return (gr.skip(),) * 5


@dataclass
class BatchWidgets:
    files: gr.File
    folder: gr.Textbox
    augment: gr.Checkbox
    count: gr.Slider
    threshold: gr.Slider
    prompt: gr.Textbox
    steps: gr.Slider
    guidance: gr.Slider
    control: gr.Slider
    control_end: gr.Slider
    autoguidance: gr.Slider
    scheduler: gr.Dropdown
    seed: gr.Number
    randomize: gr.Checkbox
    start: gr.Button
    stop: gr.Button
    status: gr.Markdown
    accepted: gr.Gallery
    rejected: gr.Gallery
    nnunet: gr.Checkbox
    label: gr.Textbox
    export: gr.Button
    download: gr.DownloadButton
    seen: gr.State  # the version the page shows
    timer: gr.Timer
    speed: gr.Radio
    cache_interval: gr.Slider
    precision: gr.Dropdown
    frame_files: gr.File
    frames_folder: gr.Textbox
    margin: gr.Slider
    clear_frame: gr.Checkbox


def build(settings: Settings, recommended, guided: bool) -> BatchWidgets:
    """The tab's content (inside the page's gr.Tab): `recommended` is the default model's config, which presets
    the mask and autoguidance sliders (they follow the selected model), `guided` whether it has a guide."""
    if settings.batch_disabled:
        gr.Markdown(f"⚠️ {settings.batch_disabled}")
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(label="Masks: mask images, or a zip of them (white = lesion)", file_count="multiple",
                            file_types=[".zip", "image"], type="filepath", elem_id="batch-files")
            folder = gr.Textbox(label="...or the masks of a dataset folder on the server",
                                placeholder="e.g. data/kvasir-seg, in the server's data folder (its masks/)")
            augment = gr.Checkbox(False, label="Augment each mask (flips, scaling, shift-scale-rotate)")
            with gr.Accordion("Frames: paint the masks into real images (optional)", open=True):
                frame_files = gr.File(label="Frames: images, or a zip of them (with masks/ of the same names for "
                                            "their own lesions)", file_count="multiple", file_types=[".zip", "image"],
                                      type="filepath", elem_id="batch-frames")
                frames_folder = gr.Textbox(label="...or a frames folder on the server",
                                           placeholder="e.g. data/kvasir-seg (images/ + masks/), in the server's data "
                                                       "folder", elem_id="batch-frames-folder")
                with gr.Row():
                    margin = gr.Slider(0, 32, value=DEFAULT_MARGIN, step=1, label="Margin (px)",
                                       info="how far around each lesion the frame may change")
                    clear_frame = gr.Checkbox(False, label="Clear the frames' own lesions first",
                                              info="paint them away (needs their masks): the masks hold the new "
                                                   "lesion only")
            with gr.Row():
                count = gr.Slider(1, settings.batch_max_images, value=min(2, settings.batch_max_images), step=1,
                                  label="Images per mask")
                threshold = gr.Slider(0.0, 1.0, value=DEFAULT_MIN_FIDELITY, step=0.05, label="Min fidelity",
                                      info="the scorer's Dice between its segmentation of the image and the mask")
            with gr.Accordion("Sampling (as in Generate)", open=False):
                prompt = gr.Textbox(label="Prompt", placeholder="empty: the model's default prompt", lines=1)
                preset = sampling.default_speed(recommended)
                speed = sampling.speed_radio(elem_id="batch-speed")
                with gr.Row():
                    steps = sampling.steps_slider(preset["steps"], elem_id="batch-steps")
                    guidance = sampling.guidance_slider(preset["guidance_scale"])
                with gr.Row():
                    control = sampling.control_slider(recommended.control_scale, "preset per model")
                    control_end = sampling.control_end_slider(recommended.control_end, "preset per model")
                    autoguidance = sampling.autoguidance_slider(recommended.autoguidance, guided)
                with gr.Row():
                    cache_interval, precision = sampling.speed_widgets(preset)
                scheduler, seed, randomize = sampling.seed_row(preset["scheduler"])
            gr.Markdown(f"At most {settings.batch_max_masks:,} masks and {settings.batch_max_images} images per "
                        "mask. The batch runs on the server: it goes on when this page closes and shows again "
                        "when it reopens. Starting a new batch replaces this one.")
            with gr.Row():
                start = gr.Button("Start batch", variant="primary", interactive=not settings.batch_disabled,
                                  elem_id="batch-start")
                stop = gr.Button("Stop", variant="stop", elem_id="batch-stop")
        with gr.Column(scale=1):
            status = gr.Markdown("", elem_id="batch-status", label="Status")
            accepted = gr.Gallery(label="Accepted", columns=5, height=300, format="png", object_fit="contain",
                                  allow_preview=False, interactive=False, fit_columns=False, elem_id="batch-accepted")
            rejected = gr.Gallery(label="Rejected", columns=5, height=200, format="png", object_fit="contain",
                                  allow_preview=False, interactive=False, fit_columns=False, elem_id="batch-rejected")
            with gr.Row():
                nnunet = gr.Checkbox(False, label="Also the nnU-Net v2 layout")
                label = gr.Textbox("lesion", label="Label name (nnU-Net)", max_lines=1)
                export = gr.Button("Prepare zip of the accepted pairs", variant="primary", elem_id="batch-export")
                download = gr.DownloadButton("Download zip (prepare it first)", interactive=False,
                                             elem_id="batch-download")
    seen = gr.State(-1)
    timer = gr.Timer(POLL_SECONDS, active=False)  # on only while the batch runs (batch_poll)
    return BatchWidgets(files, folder, augment, count, threshold, prompt, steps, guidance, control, control_end,
                        autoguidance, scheduler, seed, randomize, start, stop, status, accepted, rejected, nnunet,
                        label, export, download, seen, timer, speed, cache_interval, precision, frame_files,
                        frames_folder, margin, clear_frame)


def wire(demo: gr.Blocks, tab: BatchTab, w: BatchWidgets, tab_block: gr.Tab, model: gr.Dropdown,
         key: gr.BrowserState) -> None:
    """Called inside the tab (gr.api adds a block). `model`: the page's model selector; `key`: the session's batch
    key, a gr.BrowserState outside the tabs so that it is read when the page loads. Polled as the Train tab is: on
    load, when the tab opens, after Start, Stop and a move, and on each tick of a timer that is on only while the
    batch runs."""
    poll = dict(fn=tab.batch_poll, inputs=[key, w.seen],
                outputs=[w.status, w.accepted, w.rejected, w.seen, w.timer, w.download], api_visibility="private",
                show_progress="hidden", concurrency_limit=None)
    demo.load(**poll)
    tab_block.select(**poll)  # the tab's content mounts when it opens: show it and start its timer then
    model.change(tab.batch_control, model, [w.control, w.control_end, w.autoguidance], api_visibility="private")
    speed_outputs = [w.steps, w.scheduler, w.guidance, w.cache_interval, w.precision]
    for trigger in (w.speed, model):  # the Speed choice sets them from the selected model's presets
        trigger.change(tab.batch_speed, [model, w.speed], speed_outputs, api_visibility="private")
    w.start.click(tab.batch_start, [w.files, w.folder, w.augment, w.count, w.threshold, w.prompt, w.steps,
                                    w.guidance, w.seed, w.scheduler, w.control, w.control_end, model, key,
                                    w.randomize, w.autoguidance, w.cache_interval, w.precision, w.frame_files,
                                    w.frames_folder, w.margin, w.clear_frame],
                  [w.status, key], api_name="batch_start", preprocess=False).success(**poll)
    w.stop.click(tab.batch_stop, key, w.status, api_name="batch_stop").then(**poll)
    for gallery in (w.accepted, w.rejected):
        gallery.select(tab.batch_pick, key, None, api_visibility="private").then(**poll)
    w.export.click(tab.batch_export, [key, w.nnunet, w.label], w.download, api_name="batch_export").success(
        tab.batch_download_ready, key, w.download, api_visibility="private")
    w.timer.tick(**poll)
    gr.api(tab.batch_status, api_name="batch_status", concurrency_limit=None)
    gr.api(tab.batch_move, api_name="batch_move")

"""The app's handlers, called directly (no server): masks, generation, curation, export, training helpers.

The tiny 64 px model comes from conftest.py (`tiny_model_dir`): random, seeded, nothing downloaded.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app
from conftest import write_dataset
from siamese import DataError, ModelLoadError, read_mask
from siamese.objective import LOSS_KEYS
from studio import datasets, masks
from studio.catalog import ModelCatalog, ModelNotOffered
from studio.settings import Settings, training_disabled_reason
from studio.tabs.train import BASE_MODELS
from studio.server import Studio


@pytest.fixture()
def studio(tiny_model_dir, tmp_path) -> Studio:
    return Studio(str(tiny_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                  settings=Settings(data_root=tmp_path))


def layer_with_disk(size=masks.CANVAS, center=(200, 240), radius=60) -> np.ndarray:
    layer = np.zeros((size, size, 4), np.uint8)
    cv2.circle(layer, center, radius, (255, 255, 255, 255), -1)
    return layer


def editor(layers, background=None) -> dict:
    return {"background": background, "layers": layers, "composite": None}


# -- masks ----------------------------------------------------------------------------------------
def test_mask_from_editor_uses_painted_layer_pixels_only():
    bg = np.full((masks.CANVAS, masks.CANVAS, 4), 255, np.uint8)  # a white reference image is not the mask
    faint = np.zeros((masks.CANVAS, masks.CANVAS, 4), np.uint8)
    faint[:50, :50] = (255, 255, 255, 60)  # nearly transparent: not painted
    mask = masks.mask_from_editor(editor([layer_with_disk(), faint], bg))
    assert mask.shape == (masks.CANVAS, masks.CANVAS) and set(np.unique(mask)) == {0, 1}
    assert mask[240, 200] == 1 and mask[10, 10] == 0 and mask[500, 500] == 0
    assert abs(mask.sum() - np.pi * 60**2) < 0.05 * np.pi * 60**2


@pytest.mark.parametrize("value", [None, editor([]), editor([np.zeros((64, 64, 4), np.uint8)])])
def test_mask_from_editor_refuses_an_empty_canvas(value):
    with pytest.raises(DataError, match="empty"):
        masks.mask_from_editor(value)


def test_editor_value_round_trips_a_mask_over_a_reference():
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 20:44] = 1
    reference = np.full((100, 150, 3), 90, np.uint8)
    value = masks.editor_value(mask, reference)
    assert value["background"].shape == (masks.CANVAS, masks.CANVAS, 3) and value["background"].max() == 90
    assert len(value["layers"]) == 1 and value["layers"][0].shape == (masks.CANVAS, masks.CANVAS, 4)
    back = cv2.resize(masks.mask_from_editor(value), (64, 64), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(back, mask)
    assert masks.editor_value(None)["layers"] == [] and masks.editor_value(None)["background"].max() == 0


def test_example_and_procedural_masks_are_binary_lesions(tmp_path):
    paths = masks.draw_example_masks(tmp_path)
    assert len(paths) >= 5
    for p in paths:
        m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(m)) == {0, 255} and 0.005 < (m > 0).mean() < 0.5
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = masks.procedural_mask(rng)
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1} and 0.005 < m.mean() < 0.6
    assert masks.example_masks(), "the repository ships example masks in assets/masks"


def test_read_mask_upload_binarises_and_refuses_bad_files(tmp_path):
    good = tmp_path / "m.png"
    arr = np.zeros((80, 80), np.uint8)
    arr[20:50, 20:50] = 200
    arr[60:70, 60:70] = 100  # below the threshold
    cv2.imwrite(str(good), arr)
    m = masks.read_mask_upload(good)
    assert m.sum() == 30 * 30 and set(np.unique(m)) == {0, 1}

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError, match="not a readable image"):
        masks.read_mask_upload(text)
    white = tmp_path / "white.png"
    cv2.imwrite(str(white), np.full((8, 8), 255, np.uint8))
    with pytest.raises(DataError, match="all white"):
        masks.read_mask_upload(white)
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="empty"):
        masks.read_mask_upload(black)
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(masks.MAX_MASK_FILE_BYTES + 1)
    with pytest.raises(DataError, match="at most"):
        masks.read_mask_upload(huge)


def test_outline_draws_on_the_mask_border_only():
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    out = masks.outline(image, mask)
    green = out[..., 1] > 0
    assert green[20, 30] and green[39, 30] and not green[30, 30] and not green[5, 5]
    assert image.max() == 0, "the original image is not changed"


# -- models ---------------------------------------------------------------------------------------
def test_model_choices_are_the_default_checkpoints_and_runs_by_public_id(tiny_model_dir, tmp_path):
    ckpt, runs, root = tmp_path / "checkpoints", tmp_path / "runs", tmp_path / "models"
    for folder in (ckpt / "a", runs / "b", root / "c"):
        (folder / "unet").mkdir(parents=True)
        (folder / "text_encoder").mkdir()
    (ckpt / "not-a-model").mkdir()
    choices = ModelCatalog(str(tiny_model_dir), ckpt, runs).choices()
    values = [v for _, v in choices]
    assert values == ["tiny", "checkpoints/a", "runs/app/b"]  # ids, never server paths
    assert "default" in choices[0][0] and "checkpoints" in choices[1][0] and "trained here" in choices[2][0]
    assert "not available" in ModelCatalog(str(tmp_path / "missing"), ckpt, runs).choices()[0][0]
    assert [v for _, v in ModelCatalog(str(tiny_model_dir), ckpt, runs, models_root=root).choices()][-1] == "models/c"


def test_model_info_describes_the_model_or_says_why_not(studio, tiny_model_dir, tmp_path):
    text, slider, steps, autoguidance = studio.selector.model_info(str(tiny_model_dir))
    assert "64×64" in text and "a test image" in text and slider.value == 1.0  # the model's recommended scale
    assert steps.value == 1.0 and "mask strength 1 in every step" in text and "autoguidance" not in text
    assert autoguidance.value == 1.0 and autoguidance.interactive is False  # no guide: off, and locked
    text, slider, steps, autoguidance = studio.selector.model_info(str(tmp_path / "nowhere"))
    assert text.startswith("⚠️") and "nowhere" in text


@pytest.fixture()
def guided_studio(guided_model_dir, tmp_path) -> Studio:
    """A studio whose default model has a guide and recommends autoguidance 2 (conftest's `guided_model_dir`)."""
    return Studio(str(guided_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                  settings=Settings(data_root=tmp_path))


def test_the_autoguidance_slider_follows_a_model_with_a_guide(guided_studio):
    assert guided_studio.catalog.default_guided()
    text, _, _, autoguidance = guided_studio.selector.model_info(guided_studio.catalog.default_id)
    assert autoguidance.value == 2.0 and autoguidance.interactive is True  # the model's recommended weight
    assert "recommended autoguidance 2" in text


def test_generate_with_autoguidance_records_it_and_changes_the_images(guided_studio):
    mask, _ = guided_studio.generate.prepare(editor([layer_with_disk()]), 0, False)
    args = (mask, "", 1, 2, 3.0, 11, "ddim", None, False, [])
    _, guided, status = guided_studio.generate.generate(*args, autoguidance=2.0)
    _, plain, plain_status = guided_studio.generate.generate(*args, autoguidance=1.0)
    _, preset, _ = guided_studio.generate.generate(*args)  # None: the model's recommended 2
    assert guided[0].item.params["autoguidance"] == 2.0 and plain[0].item.params["autoguidance"] == 1.0
    assert json.loads(Image.open(guided[0].png).text["siamese"])["autoguidance"] == 2.0
    assert "autoguidance 2" in status and "autoguidance" not in plain_status
    assert not np.array_equal(guided[0].item.image, plain[0].item.image)  # same seed, pushed from the guide
    np.testing.assert_array_equal(preset[0].item.image, guided[0].item.image)


# -- generation -----------------------------------------------------------------------------------
def test_prepare_turns_the_canvas_into_a_binary_mask_and_a_seed(studio, tmp_path):
    """The drawn mask leaves the canvas as a bool array, shown (and sent) as a 1-bit PNG that reads back as it."""
    shown, seed = studio.generate.prepare(editor([layer_with_disk()]), 7, False)
    mask = np.asarray(shown)
    assert shown.mode == "1" and mask.dtype == bool and set(np.unique(mask)) == {False, True} and seed == 7
    shown.save(tmp_path / "sent.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "sent.png"), mask)
    _, s1 = studio.generate.prepare(editor([layer_with_disk()]), 7, True)
    _, s2 = studio.generate.prepare(editor([layer_with_disk()]), 7, True)
    assert s1 != s2
    with pytest.raises(gr.Error, match="empty"):
        studio.generate.prepare(editor([]), 0, False)


def test_generate_writes_pngs_with_parameters_and_records_seeds(studio):
    mask, _ = studio.generate.prepare(editor([layer_with_disk()]), 0, False)
    gallery, results, status = studio.generate.generate(mask, "", 2, 2, 3.0, 11, "dpm++", None, False, [])
    assert len(gallery) == 2 and len(results) == 2 and "2 images" in status
    assert [s.item.seed for s in results] == [11, 12]
    path, caption = gallery[0]
    assert caption == "seed 11"
    png = Image.open(path)
    assert png.format == "PNG" and png.size == (64, 64)
    assert "Seed: 11" in png.text["parameters"] and "Steps: 2" in png.text["parameters"]
    assert png.text["parameters"].startswith("a test image")  # empty prompt: the model's default
    assert json.loads(png.text["siamese"])["scheduler"] == "dpm++"
    assert json.loads(png.text["siamese"])["model"]["source"] == "tiny"  # the model's id, not its server folder
    assert str(studio.catalog.default) not in png.text["siamese"] and str(studio.catalog.default) not in status
    item = results[0].item
    assert item.mask.shape == item.image.shape[:2] and set(np.unique(item.mask)) == {0, 255}
    # the outline view changes the shown files, not the kept pairs
    outlined = studio.generate.render(results, True)
    assert outlined[0][0] != path and not np.array_equal(np.asarray(Image.open(outlined[0][0])), item.image)
    again = studio.generate.generate(mask, "", 1, 2, 3.0, 11, "dpm++", None, False, [])[1][0].item
    np.testing.assert_array_equal(again.image, item.image)  # reproducible from the seed


def test_autoguidance_asked_of_a_model_without_a_guide_is_off_and_said(studio):
    """The tiny model has no guide: its slider is locked at 1, and a script sending the default model's weight gets
    images at autoguidance 1 and a status that says so (not an error)."""
    mask = studio.generate.prepare(editor([layer_with_disk()]), 0, False)[0]
    _, shots, status = studio.generate.generate(mask, "", 1, 2, 3.0, 0, "ddim", None, False, [], autoguidance=2)
    assert shots[0].item.params["autoguidance"] == 1.0 and "autoguidance off: this model has no guide" in status


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask=np.zeros((64, 64), np.uint8)), "empty"),
    (dict(mask=np.full((64, 64), 255, np.uint8)), "all white"),
    (dict(scheduler="euler"), "scheduler"),
    (dict(steps=0), "steps"),
    (dict(control_scale=12), "control scale"),
    (dict(control_end=0), "control end must be a fraction"),
    (dict(autoguidance=0.5), "autoguidance must be between 1"),
    (dict(autoguidance="strong"), "autoguidance must be a number"),
    (dict(model="/no/such/model"), "not a model this server offers"),
    (dict(mask=None), "no mask"),
])
def test_generate_bad_input_is_a_clear_error(studio, kwargs, message):
    args = dict(mask=studio.generate.prepare(editor([layer_with_disk()]), 0, False)[0], prompt="", num_images=1,
                steps=2, guidance_scale=3.0, seed=0, scheduler="ddim", model=None)
    args.update(kwargs)
    with pytest.raises(gr.Error, match=message):
        studio.generate.generate(**args)


# -- curation and export --------------------------------------------------------------------------
@pytest.fixture()
def shots(studio):
    mask, _ = studio.generate.prepare(editor([layer_with_disk()]), 0, False)
    return studio.generate.generate(mask, "", 3, 2, 3.0, 100, "ddim", None, False, [])[1]


def test_keep_discard_remove_and_the_collection_grows(studio, shots):
    gallery, results, collection, sel, *_ = studio.collection.keep(shots, [], 1)
    assert [s.item.seed for s in collection] == [101] and [s.item.seed for s in results] == [100, 102]
    assert len(gallery.value) == 2 and sel == 1 == gallery.selected_index  # the next image is selected
    # nothing selected with several results: a warning, nothing moves
    _, results2, collection2, *_ = studio.collection.keep(results, collection, None)
    assert len(results2) == 2 and len(collection2) == 1
    gallery, results, sel = studio.collection.discard(results, 0)
    assert [s.item.seed for s in results] == [102] and sel == 0
    *_, collection, _, view, count, download = studio.collection.keep(results, collection, None)  # single result: kept
    assert [s.item.seed for s in collection] == [101, 102] and "**2** pairs" in count
    _, results, collection, *_ = studio.collection.keep_all(shots, collection)  # a later run adds to the collection
    assert results == [] and len(collection) == 5
    collection, sel, *_ = studio.collection.remove(collection, 0)
    assert len(collection) == 4 and [s.item.seed for s in collection][0] == 102


def test_export_zip_has_pairs_metadata_and_nnunet(studio, shots, tmp_path):
    path = Path(studio.collection.export(shots, True, "polyp"))
    assert path.suffix == ".zip" and studio.collection.download_ready(shots).label == "Download 3 pairs (.zip)"
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        images = sorted(n for n in names if n.startswith("images/"))
        assert len(images) == 3 and {"metadata.jsonl", "README.txt", "nnunet/dataset.json"} <= names
        for name in images:
            image = Image.open(io.BytesIO(zf.read(name)))
            mask = np.asarray(Image.open(io.BytesIO(zf.read(name.replace("images/", "masks/")))))
            assert mask.shape == image.size[::-1] and set(np.unique(mask)) <= {0, 255}
            assert "parameters" in image.text
        meta = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        assert [m["seed"] for m in meta] == [100, 101, 102] and all(m["model"]["fingerprint"] for m in meta)
        assert json.loads(zf.read("nnunet/dataset.json"))["labels"] == {"background": 0, "polyp": 1}
    with pytest.raises(gr.Error, match="nothing to export"):
        studio.collection.export([], False, "lesion")


def test_an_error_never_touches_the_collection(studio, shots):
    collection = list(shots)
    with pytest.raises(gr.Error):
        studio.generate.generate(np.zeros((64, 64), np.uint8), "", 1, 2, 3.0, 0, "ddim", None, False, [])
    with pytest.raises(gr.Error):
        studio.collection.export([], False, "x")
    assert len(collection) == 3 and studio.collection.remove(collection, 99)[0] == collection


# -- training -------------------------------------------------------------------------------------
def write_zip(path: Path, entries: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_safe_extract_zip_finds_the_dataset_and_refuses_unsafe_archives(tmp_path):
    png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
    ok = write_zip(tmp_path / "ok.zip", {"kvasir/images/a.png": png, "kvasir/masks/a.png": png,
                                         "__MACOSX/kvasir/._a.png": b"x"})
    root = datasets.safe_extract_zip(ok, tmp_path / "out")
    assert root.name == "kvasir" and (root / "masks" / "a.png").is_file()
    assert not (tmp_path / "out" / "__MACOSX").exists()
    for i, (entries, link) in enumerate([({"../evil.png": png}, None), ({"/abs/evil.png": png}, None),
                                         ({"images/a.png": png}, "masks/a.png")]):
        with pytest.raises(DataError, match="unsafe"):
            datasets.safe_extract_zip(write_zip(tmp_path / f"bad{i}.zip", entries, link), tmp_path / f"bad{i}")
    with pytest.raises(DataError, match="at most"):
        datasets.safe_extract_zip(ok, tmp_path / "small", max_bytes=10)
    with pytest.raises(DataError, match="no dataset"):
        datasets.safe_extract_zip(write_zip(tmp_path / "empty.zip", {"readme.txt": b"hi"}), tmp_path / "e")
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        datasets.safe_extract_zip(tmp_path / "fake.zip", tmp_path / "f")


def test_train_start_refuses_bad_datasets_and_when_disabled(studio, tmp_path, monkeypatch):
    (tmp_path / "nomasks" / "images").mkdir(parents=True)
    with pytest.raises(gr.Error, match="no masks/ folder"):
        studio.train.train_start(data_folder=str(tmp_path / "nomasks"))
    with pytest.raises(gr.Error, match="no dataset"):
        studio.train.train_start()
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert "ZeroGPU" in training_disabled_reason()
    monkeypatch.delenv("SPACES_ZERO_GPU")
    monkeypatch.setenv("SIAMESE_DISABLE_TRAINING", "1")
    disabled = Studio(studio.default, runs_dir=tmp_path / "r")
    with pytest.raises(gr.Error, match="disabled"):
        disabled.train.train_start(data_folder=str(tmp_path))
    assert not studio.job.running


def test_training_events_become_status_curves_and_a_model_in_the_selector(studio):
    job = studio.job
    text, frame, *_, timer = studio.train.train_poll(-1)
    assert "No training run yet" in text and frame is None  # None, not an empty frame (see train_status)
    assert not timer.active and studio.train.train_poll(0)[-1].active is False  # idle: no polling, changed or not
    job._on_event({"type": "start", "stage": "siamese", "step": 0, "max_steps": 10, "output": "runs/app/x"})
    for step in (1, 2):
        job._on_event({"type": "log", "step": step, "loss_mask": 1.0 / step, "loss_image": 0.5, "loss_consistency":
                       0.1, "loss_regularization": 0.01, "loss": 2.0, "lr": 1e-4, "it_per_s": 2.0, "eta_s": 4.0})
    text, frame, preview, dropdown, version, timer = studio.train.train_poll(-1)
    assert timer.active, "the page polls while a run is active"
    assert "2 / 10" in text and "2.00 it/s" in text and "loss_mask 0.5" in text
    assert len(frame) == 10 and set(frame["term"]) == set(LOSS_KEYS) and frame["value"].dtype == float
    assert studio.train.train_poll(version)[0] == gr.skip()  # nothing new: nothing re-sent
    job._on_event({"type": "end", "step": 2, "stopped": True, "output": "runs/app/x"})
    text, *_, timer = studio.train.train_poll(version)
    assert text.startswith("⏹️ Stopped at step 2") and "model selector" in text
    assert not timer.active, "the page stops polling when the run ends"
    status = studio.train.train_status()
    assert status["state"] == "stopped" and status["step"] == 2 and len(status["losses"]) == 2
    assert status["losses"][1]["loss_mask"] == 0.5
    job._fail("boom")
    assert "Training failed: boom" in studio.train.train_poll(-1)[0] and studio.train.train_status()["error"] == "boom"


def test_from_scratch_runs_count_both_stages(studio):
    """A tiny-from-scratch run pre-trains the UNet first: its steps come first in the status and curves."""
    job = studio.job
    job._base_steps, job.max_steps = 3, 5
    job._on_event({"type": "start", "stage": "base", "step": 0, "max_steps": 3, "output": "runs/app/x/base"})
    assert "Stage 1 of 2" in studio.train.train_status()["message"]
    job._on_event({"type": "log", "step": 3, "loss": 0.9, "lr": 1e-4, "it_per_s": 2.0, "eta_s": 0.0})
    job._on_event({"type": "end", "step": 3, "stopped": False, "output": "runs/app/x/base"})
    assert studio.train.train_status()["state"] == "running"  # stage 2 follows
    job._on_event({"type": "start", "stage": "siamese", "step": 0, "max_steps": 2, "output": "runs/app/x"})
    job._on_event({"type": "log", "step": 1, "loss_mask": 0.5, "loss": 1.0, "lr": 1e-4, "it_per_s": 2.0, "eta_s": 0.5})
    status = studio.train.train_status()
    assert status["step"] == 4 and status["max_steps"] == 5
    assert [r["step"] for r in status["losses"]] == [3, 4]
    job._on_event({"type": "end", "step": 2, "stopped": False, "output": "runs/app/x"})
    assert studio.train.train_status()["message"].startswith("✅ Finished at step 5")


def test_build_demo_exposes_the_stable_api(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((model_dir / "siamese_config.json").read_text())
    (model_dir / "siamese_config.json").write_text(json.dumps({**config, "control_scale": 2.5, "control_end": 0.6}))
    demo = app.build_demo(str(model_dir), runs_dir=tmp_path / "runs", checkpoints_dir=tmp_path)
    api = demo.get_api_info()["named_endpoints"]
    params = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert params[:7] == ["mask", "prompt", "num_images", "steps", "guidance_scale", "seed", "scheduler"]
    assert {"/export", "/keep_all", "/train_start", "/train_stop", "/train_status"} <= set(api)
    defaults = {p["parameter_name"]: p["parameter_default"] for p in api["/generate"]["parameters"]}
    assert defaults["scheduler"] == "dpm++" and defaults["steps"] == 16 and defaults["guidance_scale"] == 9.0
    assert defaults["num_images"] == 4 and defaults["control_scale"] == 2.5  # the model's recommendation
    assert defaults["control_end"] == 0.6
    assert params[11] == "autoguidance" and defaults["autoguidance"] == 1.0  # after the older ones: positional
    assert params[12:14] == ["cache_interval", "precision"]  # callers unchanged (speed settings: tests/test_app_speed.py)
    # painting into a frame (issue 24): appended last, so positional callers are unchanged
    assert params[14:] == ["frame", "frame_mask", "paint_into_frame", "margin", "clear_frame_lesions"]
    assert defaults["frame"] is None and defaults["paint_into_frame"] is True and defaults["margin"] == 12
    assert defaults["model"] == "checkpoints/model" and str(tmp_path) not in json.dumps(api)  # ids, no paths
    timers = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
    assert timers and not any(t.active for t in timers), "an idle page must not poll the server"


# -- what visitors may reach ----------------------------------------------------------------------
def test_only_models_the_server_offers_load(studio, tiny_model_dir, tmp_path):
    """/generate and the Train tab load the default model, checkpoints/, runs/app/ and the models root only;
    anything else is refused with one message, whether it exists or not, that shows no server path."""
    mask = studio.generate.prepare(editor([layer_with_disk()]), 0, False)[0]
    outside = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "model")  # a real model, not offered

    def refusal(value) -> str:
        with pytest.raises(gr.Error, match="not a model this server offers") as info:
            studio.generate.generate(mask, "", 1, 1, 3.0, 0, "ddim", value, False, [])
        assert str(tmp_path) not in str(info.value) and "hub ids are not allowed" in str(info.value)
        return str(info.value)

    there, absent = refusal(str(outside)), refusal(str(tmp_path / "nowhere" / "model"))
    assert there.replace("elsewhere", "X") == absent.replace("nowhere", "X"), "no hint whether the folder exists"
    for value in ("/etc", "../elsewhere/model", "runs/app/../elsewhere/model", "someone/model", "runs/app/x/../.."):
        refusal(value)
    write_dataset(tmp_path / "data")
    with pytest.raises(gr.Error, match="not a model this server offers"):  # the Train tab's "current model"
        studio.train.train_start(data_folder="data", base_model=BASE_MODELS[1], model=str(outside))
    with pytest.raises(gr.Error, match="not a model this server offers"):  # ...and its base model folder
        studio.train.train_start(data_folder="data", base_model=BASE_MODELS[2], base_path=str(outside))
    assert not studio.job.running

    run = shutil.copytree(tiny_model_dir, tmp_path / "runs" / "b")  # a run trained here: offered
    for value in ("runs/app/b", str(run), "tiny", str(tiny_model_dir), None):
        assert len(studio.generate.generate(mask, "", 1, 1, 3.0, 0, "ddim", value, False, [])[1]) == 1, value
    root = tmp_path / "models-root"
    shutil.copytree(tiny_model_dir, root / "sd" / "m")
    with_root = Studio(str(tiny_model_dir), tmp_path / "checkpoints", tmp_path / "runs",
                       settings=Settings(data_root=tmp_path, models_root=root))
    assert with_root.models.get("models/sd/m").source == "models/sd/m"
    assert with_root.models.get(str(root / "sd" / "m")).source == "models/sd/m"
    with pytest.raises(ModelLoadError, match="No model folder at 'models/sd/none'"):  # a missing one: no paths
        with_root.models.get("models/sd/none")


def test_hub_ids_only_when_allowed_and_never_a_server_folder(tiny_model_dir, tmp_path, monkeypatch):
    catalog = ModelCatalog(str(tiny_model_dir), tmp_path / "c", tmp_path / "r")
    with pytest.raises(ModelNotOffered, match="hub ids are not allowed"):
        catalog.resolve("someone/model")
    allowed = ModelCatalog(str(tiny_model_dir), tmp_path / "c", tmp_path / "r", allow_hub=True)
    assert allowed.resolve("someone/model").hub and allowed.resolve("someone/model").public == "someone/model"
    assert ModelCatalog("owner/default", tmp_path / "c", tmp_path / "r").resolve("owner/default").hub  # the default
    # a hub id that is also a relative server folder is fetched from the hub (here: offline, not cached)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "someone" / "model")
    studio = Studio(str(tiny_model_dir), tmp_path / "c", tmp_path / "r",
                    settings=Settings(data_root=tmp_path, allow_hub=True))
    with pytest.raises(ModelLoadError, match="not in the server's cache"):
        studio.models.get("someone/model")


@pytest.fixture()
def no_training(studio, monkeypatch) -> list:
    """train_start up to the start of the run: the job records its config instead of training."""
    started = []

    def start(config, tmp=None, prepare=None):
        started.append(config)
        if tmp is not None:
            shutil.rmtree(tmp)
    monkeypatch.setattr(studio.job, "start", start)
    return started


def test_dataset_folders_stay_inside_the_data_root(tiny_model_dir, tmp_path, monkeypatch):
    root, outside = tmp_path / "data-root", tmp_path / "outside"
    write_dataset(root / "kvasir")
    write_dataset(outside)
    (root / "link").symlink_to(outside, target_is_directory=True)
    studio = Studio(str(tiny_model_dir), runs_dir=tmp_path / "runs", settings=Settings(data_root=root))
    started = []
    monkeypatch.setattr(studio.job, "start", lambda config, tmp=None, prepare=None: started.append(config))
    messages = set()
    for typed in (str(outside), "../outside", "link", "/etc", "/no/such/folder", "kvasir/../../outside", "/"):
        with pytest.raises(gr.Error, match="must be inside the server's data folder") as info:
            studio.train.train_start(data_folder=typed)
        messages.add(str(info.value))
    assert len(messages) == 1 and str(tmp_path) not in messages.pop()  # the same, whatever exists
    assert not started
    for typed in ("kvasir", str(root / "kvasir"), " kvasir/ "):
        reply = studio.train.train_start(data_folder=typed)
        assert "6 image-mask pairs from `kvasir`" in reply and str(tmp_path) not in reply
    assert [c.data for c in started] == [str(root / "kvasir")] * 3
    with pytest.raises(gr.Error, match="missing: no such folder") as info:  # inside the root: said plainly
        studio.train.train_start(data_folder="missing")
    assert str(root) not in str(info.value)


def png_zip(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A deflated dataset zip with one pair, plus `extra` entries."""
    png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {"d/images/a.png": png, "d/masks/a.png": png, **(extra or {})}.items():
            zf.writestr(name, data)
    return path


def test_an_uploaded_zip_is_unpacked_in_a_server_folder_and_never_shown(studio, no_training, tmp_path):
    reply = studio.train.train_start(data_zip=str(png_zip(tmp_path / "upload.zip")))
    assert "1 image-mask pairs from the uploaded upload.zip" in reply
    assert tempfile.gettempdir() not in reply and str(tmp_path) not in reply
    assert no_training and Path(no_training[0].data).name == "d"


def test_zip_bombs_and_full_disks_are_refused(tiny_model_dir, tmp_path, monkeypatch):
    """A dataset zip may unpack to 4x the upload limit, and only if the disk keeps room to spare."""
    assert Settings(data_root=tmp_path).max_unpacked_bytes == 4 * 500 * 2**20
    monkeypatch.setenv("SIAMESE_MAX_UPLOAD", "1mb")
    settings = Settings.from_env()
    assert settings.max_unpacked_bytes == 4 * 2**20 and app.launch_options(settings)["max_file_size"] == "1mb"
    studio = Studio(str(tiny_model_dir), runs_dir=tmp_path / "runs", settings=replace(settings, data_root=tmp_path))
    monkeypatch.setattr(studio.job, "start", lambda config, tmp=None, prepare=None: shutil.rmtree(tmp))
    bomb = png_zip(tmp_path / "bomb.zip", {"d/images/b.png": bytes(8 * 2**20)})  # 8 MB of zeros
    assert bomb.stat().st_size < 2**20
    with pytest.raises(gr.Error, match="unpacks to 8 MB; at most 4 MB"):
        studio.train.train_start(data_zip=str(bomb))
    studio.train.train_start(data_zip=str(png_zip(tmp_path / "small.zip")))  # a small one passes
    monkeypatch.setattr(datasets.shutil, "disk_usage", lambda p: SimpleNamespace(total=2**40, used=2**40, free=2**20))
    with pytest.raises(gr.Error, match="free disk space"):
        studio.train.train_start(data_zip=str(png_zip(tmp_path / "small.zip")))
    with pytest.raises(ValueError, match="SIAMESE_MAX_UPLOAD"):
        Settings.from_env({"SIAMESE_MAX_UPLOAD": "lots"})


def test_server_paths_are_redacted_from_messages(studio, tmp_path):
    redact = studio.redact
    assert redact(f"{tmp_path}/runs/x: failed") == "runs/app/x: failed"
    assert redact(f"{tmp_path}/data/a.png: not a readable image") == "data/a.png: not a readable image"
    assert redact("Error no file named model.safetensors in /root/.cache/hub/x/unet.") == \
        "Error no file named model.safetensors in …/unet."
    assert redact("see https://huggingface.co/a/b and images/X.jpg / masks/X.png") == \
        "see https://huggingface.co/a/b and images/X.jpg / masks/X.png"


# -- faults ---------------------------------------------------------------------------------------
def test_live_progress_keeps_the_curve_to_the_metrics_rows_and_the_latest_point(studio):
    """Live log events (step 1, then every few seconds) show at once, and each replaces the previous live one:
    the curve holds the metrics rows plus the newest point, however long the run."""
    job = studio.job
    job._on_event({"type": "start", "stage": "siamese", "step": 0, "max_steps": 100_000, "output": "runs/app/x"})
    for step, row in ((1, False), (2, False), (3, False), (4, True), (5, False), (6, False)):
        job._on_event({"type": "log", "step": step, "loss": 1.0 / step, "lr": 1e-4, "it_per_s": 1.0, "eta_s": 9.0,
                       "row": row})
        assert studio.train.train_status()["step"] == step
    assert [r["step"] for r in studio.train.train_status()["losses"]] == [4, 6]


def test_train_stop_without_a_run_warns(studio, monkeypatch):
    warned = []
    monkeypatch.setattr(gr, "Warning", lambda message, *args, **kwargs: warned.append(message))
    assert "No training run yet" in studio.train.train_stop()
    assert warned == ["No training run is in progress."]


def test_uploaded_masks_follow_the_library_rule(tmp_path):
    """The app reads a mask file as the CLI does: a 16-bit 0/1 label mask and a float TIFF are masks."""
    lesion = np.zeros((32, 32), np.uint8)
    lesion[8:20, 10:24] = 1
    cv2.imwrite(str(tmp_path / "label16.png"), lesion.astype(np.uint16))
    cv2.imwrite(str(tmp_path / "float.tiff"), lesion.astype(np.float32))
    for name in ("label16.png", "float.tiff"):
        np.testing.assert_array_equal(masks.read_mask_upload(tmp_path / name), lesion)
        np.testing.assert_array_equal(masks.read_mask_upload(tmp_path / name), read_mask(tmp_path / name))


# -- hostile inputs: one redacted line for every error a visitor can cause ----------------------------
@pytest.fixture()
def uploads(tmp_path, monkeypatch) -> Path:
    """Gradio's upload folder for the test: files in it arrive as FileData, as the server passes them."""
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def file_data(path: Path, name: str | None = None) -> dict:
    return {"path": str(path), "orig_name": name or path.name, "meta": {"_type": "gradio.FileData"}}


def one_clean_line(message: str, tmp_path: Path) -> None:
    """A reply a visitor may see: one line, no server path, no temporary path, no bare OS or library message."""
    assert "\n" not in message and str(tmp_path) not in message and tempfile.gettempdir() not in message
    assert "Errno" not in message and "Traceback" not in message and str(Path.cwd()) not in message


def huge_png(path: Path, side: int = 9000) -> Path:
    """A 1-bit PNG of side x side pixels (81 million: more than siamese.data.MAX_PIXELS): about 10 KB on disk."""
    Image.new("1", (side, side)).save(path)
    return path


def poison_decoders(monkeypatch) -> None:
    """Any decode of an image fails the test: a refusal must come from the header."""
    def fail(*args, **kwargs):
        raise AssertionError("an image was decoded")
    monkeypatch.setattr(cv2, "imdecode", fail)
    monkeypatch.setattr(cv2, "imread", fail)
    monkeypatch.setattr(Image.Image, "load", fail)


def test_generate_reads_a_mask_file_by_the_one_mask_rule(studio, uploads):
    """/generate reads a mask file as the CLI does (siamese.read_mask): a 16-bit mask is read at its own depth (0/30000
    is empty, 0/65535 a lesion), an RGBA mask by its alpha, and the file arrives from Gradio's upload folder only."""
    lesion = np.zeros((64, 64), np.uint16)
    lesion[16:40, 20:44] = 30000
    cv2.imwrite(str(uploads / "dim16.png"), lesion)
    with pytest.raises(gr.Error, match="dim16.png: the mask is empty"):
        studio.generate.generate(file_data(uploads / "dim16.png"), "", 1, 1, 3.0, 0, "ddim")
    cv2.imwrite(str(uploads / "full16.png"), (lesion > 0).astype(np.uint16) * 65535)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255  # all white: only the alpha channel marks the lesion
    rgba[16:40, 20:44, 3] = 255
    cv2.imwrite(str(uploads / "alpha.png"), rgba)
    for name in ("full16.png", "alpha.png"):
        shots = studio.generate.generate(file_data(uploads / name), "", 1, 1, 3.0, 0, "ddim")[1]
        expected = cv2.resize((lesion > 0).astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST) * 255
        np.testing.assert_array_equal(shots[0].item.mask, expected)


def test_generate_refuses_a_huge_mask_from_its_header(studio, uploads, monkeypatch, tmp_path):
    """A mask whose header says more than MAX_PIXELS is refused before anything decodes it (a 13000 x 13000 upload
    took the server from 0.8 to 1.95 GB when the component decoded it)."""
    path = huge_png(uploads / "huge.png")
    assert path.stat().st_size < 100_000
    poison_decoders(monkeypatch)
    with pytest.raises(gr.Error, match="huge.png: the image is 9000x9000 pixels, too large") as info:
        studio.generate.generate(file_data(path), "", 1, 1, 3.0, 0, "ddim")
    one_clean_line(info.value.message, tmp_path)
    with pytest.raises(gr.Error, match="too large"):  # the reference image and the canvas take the same check
        studio.generate.set_reference(file_data(path), None)
    with pytest.raises(gr.Error, match="too large"):
        studio.generate.prepare({"background": None, "layers": [file_data(path)]}, 0, False)


def test_a_file_that_was_not_uploaded_is_refused(studio, uploads, tmp_path):
    """A FileData naming a server file (not in Gradio's upload folder) is never read: a meta-less {"path": ...}
    reached the image component's decoder, which read any image on the server."""
    server_file = shutil.copy(next(iter(studio.generate.examples)), tmp_path / "server-mask.png")
    for value in ({"path": str(server_file)}, file_data(Path(server_file)), {"path": "file:///etc/passwd"},
                  {"path": str(uploads / ".." / "server-mask.png")}):
        with pytest.raises(gr.Error, match="was not uploaded to this server") as info:
            studio.generate.generate(value, "", 1, 1, 3.0, 0, "ddim")
        one_clean_line(info.value.message, tmp_path)


@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_an_undecodable_mask_is_one_clear_line(studio, uploads, tmp_path, content):
    (uploads / "mask.png").write_bytes(content)
    with pytest.raises(gr.Error, match="mask.png: not a readable image") as info:
        studio.generate.generate(file_data(uploads / "mask.png"), "", 1, 1, 3.0, 0, "ddim")
    one_clean_line(info.value.message, tmp_path)


def test_a_cancelled_generate_stops_between_steps(studio):
    """/generate asks between denoising steps whether its request was cancelled or its client left: it stops there
    (16 images x 100 steps kept the model busy for minutes when the client had gone)."""
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) >= 3
    studio.generate.cancelled = cancelled
    mask = np.asarray(studio.generate.prepare(editor([layer_with_disk()]), 0, False)[0])
    with pytest.raises(gr.Error, match="cancelled"):
        studio.generate.generate(mask, "", 16, 100, 3.0, 0, "ddim")
    assert len(asked) == 3, "it stopped at the first step after the cancellation, not after 1600"
    studio.generate.cancelled = lambda: False
    assert len(studio.generate.generate(mask, "", 1, 1, 3.0, 0, "ddim")[1]) == 1  # the models are free again


def test_a_cancelled_request_stops_waiting_for_the_models():
    from studio.jobs.base import Cancelled, Turns

    turns, gone, outcome = Turns(), threading.Event(), []

    def request():
        try:
            with turns.interactive(gone.is_set):
                outcome.append("ran")
        except Cancelled:
            outcome.append("gave up")

    with turns.batch():  # a batch step holds the models
        waiter = threading.Thread(target=request)
        waiter.start()
        time.sleep(0.3)
        gone.set()  # the client leaves while its request waits
        waiter.join(5)
        assert not waiter.is_alive() and outcome == ["gave up"]
    with turns.batch():  # and the batches are not held up by it
        pass


def test_the_next_generate_goes_before_a_waiting_batch_step():
    """After a Generate the batches wait a moment (Turns.grace_s), so that the next Generate in the server's queue
    (started a few milliseconds later) goes first too, not after one more image-batch."""
    from studio.jobs.base import Turns

    turns, order = Turns(grace_s=0.5), []

    def step():
        with turns.batch():
            order.append("batch")

    with turns.interactive():
        batch = threading.Thread(target=step)
        batch.start()
        time.sleep(0.1)
    time.sleep(0.05)  # the next queued request arrives just after the first ended
    with turns.interactive():
        order.append("generate")
    batch.join(5)
    assert order == ["generate", "batch"]


def _os_error(*args, **kwargs):
    raise OSError(28, "No space left on device", "/srv/secret/folder/file")


def _internal_error(*args, **kwargs):
    raise KeyError("boom at /srv/secret/folder")


HOSTILE = {
    "model name of 300 characters": (lambda s, p: s.generate.generate(_mask(s), model="checkpoints/" + "a" * 300),
                                     "is not a model this server offers"),
    "model name of 5000 characters": (lambda s, p: s.generate.generate(_mask(s), model="x" * 5000),
                                      "must be at most 2,000 characters|not a model this server offers"),
    "train folder of 5000 characters": (lambda s, p: s.train.train_start(data_folder="x" * 5000),
                                        "dataset folder must be at most 2,000 characters"),
    "train folder with a name of 300 characters": (lambda s, p: s.train.train_start(data_folder="d/" + "x" * 300),
                                                   "the dataset folder's name is too long"),
    "train run name of 5000 characters": (lambda s, p: (write_dataset(p / "data"),
                                                        s.train.train_start(data_folder="data", name="n" * 5000)),
                                          "run name must be at most"),
    "train zip entry of 300 characters": (lambda s, p: s.train.train_start(data_zip=str(write_zip(
        p / "long.zip", {"d/images/" + "b" * 300 + ".png": b"x", "d/masks/a.png": b"x"}))),
                                          "long.zip: the entry name '.*' is too long"),
    "train zip with a file and a folder of one name": (lambda s, p: s.train.train_start(data_zip=str(write_zip(
        p / "clash.zip", {"d/images/a.png": b"x", "d/masks/a.png": b"x", "d/masks/a.png/b.png": b"x"}))),
        "clash.zip: 'd/masks/a.png' is both a file and a folder"),
    "train zip with a bad CRC": (lambda s, p: s.train.train_start(data_zip=str(_bad_crc_zip(p))),
                                 "bad.zip: the entry 'd/masks/a.png' is damaged"),
    "generate meets an OSError": (lambda s, p: (setattr(s.models, "get", _os_error), s.generate.generate(_mask(s))),
                                  "generation: no space left on device"),
    "generate meets an internal error": (lambda s, p: (setattr(s.models, "get", _internal_error),
                                                       s.generate.generate(_mask(s))),
                                         "generation failed on the server \\(KeyError\\)"),
    "train meets an OSError": (lambda s, p: (write_dataset(p / "data"), setattr(s.job, "start", _os_error),
                                             s.train.train_start(data_folder="data")),
                               "the training run: no space left on device"),
    "export meets an OSError": (lambda s, p: (setattr(s.scratch, "folder", _os_error),
                                              s.collection.export(s.generate.generate(_mask(s), num_images=1,
                                                                                      steps=1)[1])),
                                "the export: no space left on device"),
}


def _mask(s: Studio) -> np.ndarray:
    return np.asarray(s.generate.prepare(editor([layer_with_disk()]), 0, False)[0])


def _bad_crc_zip(p: Path) -> Path:
    png = cv2.imencode(".png", np.full((8, 8), 255, np.uint8))[1].tobytes()
    path = write_zip(p / "bad.zip", {"d/images/a.png": png, "d/masks/a.png": png})
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"IHDR")  # in the second entry (stored, not compressed): its data no longer matches its CRC
    raw[at + 8] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_inputs_get_one_redacted_line(case, studio, tmp_path):
    call, message = HOSTILE[case]
    with pytest.raises(gr.Error, match=message) as info:
        call(studio, tmp_path)
    one_clean_line(info.value.message, tmp_path)
    assert "/srv/secret" not in info.value.message
    assert not studio.job.running


# -- painting into a frame (issue 24) ---------------------------------------------------------------
def bright_frame(h: int = 64, w: int = 96, seed: int = 3) -> np.ndarray:
    """A frame with no black border (all of it is picture): a smooth gradient with some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 60 * xx / w, 90 + 40 * yy / h, 80 + 30 * (xx + yy) / (h + w)], -1)
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def corner_lesion(h: int = 64, w: int = 96) -> np.ndarray:
    """The frame's own lesion: a small disk near its top-left corner, 0/255."""
    own = np.zeros((h, w), np.uint8)
    cv2.circle(own, (w // 6, h // 5), max(3, h // 12), 255, -1)
    return own


def painted(studio, frame, **kwargs):
    """The page's two steps: the disk drawn over the frame's square backdrop, sent at the frame's shape."""
    mask, _ = studio.generate.prepare(editor([layer_with_disk(center=(330, 330), radius=90)]), 5, False, frame, True)
    args = dict(prompt="", num_images=2, steps=2, guidance_scale=3.0, seed=5, scheduler="ddim", frame=frame,
                paint_into_frame=True, margin=4)
    args.update(kwargs)
    return np.asarray(mask), studio.generate.generate(mask, **args)


def test_a_frame_and_its_mask_give_the_frame_with_a_new_lesion_and_keep_stores_the_union(studio):
    from siamese.carried.pipeline_siamese import resize_alpha
    from siamese.data import binarize_mask, resize_pair
    from siamese.inpaint import full_size_mask, lesion_region, prepare_frame

    frame, own = bright_frame(), corner_lesion()
    mask, (gallery, shots, status) = painted(studio, frame, frame_mask=own)
    assert mask.shape == frame.shape[:2], "the mask drawn over the square backdrop is sent at the frame's shape"
    assert len(shots) == 2 and "painted into the frame (margin 4 px; masks: the new lesion and the frame's own)" \
        in status and "not labelled" not in status
    new = resize_pair(None, binarize_mask(mask), 64)[1]
    region = resize_alpha(lesion_region(new, 4)[1], frame.shape[:2]) > 0  # at the frame's own size
    small = prepare_frame(frame, 64, own)
    union = np.maximum(full_size_mask(mask, frame.shape[:2]), full_size_mask(own, frame.shape[:2])) * 255
    for shot in shots:
        item = shot.item
        np.testing.assert_array_equal(item.image[~region], frame[~region])  # the frame's, exactly, at its size
        assert not np.array_equal(item.image[region], frame[region])  # a lesion was painted in the region
        np.testing.assert_array_equal(item.mask, union)
        assert item.params["frame_mask"] == "known" and item.params["margin"] == 4
    assert 0 < small.mask.sum() and not (small.mask & new).any(), "the two lesions apart: the union is both"
    *_, collection, _, _, _, _ = studio.collection.keep(shots, [], 0)
    np.testing.assert_array_equal(collection[0].item.mask, union)  # Keep stores the union, not the drawn mask
    with zipfile.ZipFile(studio.collection.export(collection, False, "polyp")) as zf:
        name = next(n for n in zf.namelist() if n.startswith("masks/"))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(zf.read(name)))), union)


def test_a_frame_without_its_mask_is_accepted_with_a_warning(studio):
    frame = bright_frame()
    mask, (_, shots, status) = painted(studio, frame, num_images=1)
    assert "the frame's own lesions are not labelled" in status and "masks: the new lesion only" in status
    item = shots[0].item
    assert item.params["frame_mask"] == "unknown"
    from siamese.inpaint import full_size_mask
    np.testing.assert_array_equal(item.mask, full_size_mask(mask, frame.shape[:2]) * 255)
    # cleared: the frame's own lesion painted away, the masks hold the new lesion alone
    _, (_, cleared, status) = painted(studio, frame, num_images=1, frame_mask=corner_lesion(),
                                      clear_frame_lesions=True)
    assert "own lesion painted away first" in status and "not labelled" not in status
    np.testing.assert_array_equal(cleared[0].item.mask, item.mask)
    # unchecked "Paint into this frame": whole-image synthesis, the frame ignored
    _, (_, plain, status) = painted(studio, frame, num_images=1, paint_into_frame=False)
    assert "frame" not in plain[0].item.params and "painted into" not in status


def test_bad_frames_are_one_clear_line(studio, uploads, tmp_path):
    square = np.asarray(studio.generate.prepare(editor([layer_with_disk()]), 0, False)[0])
    args = dict(prompt="", num_images=1, steps=1, guidance_scale=3.0, seed=0, scheduler="ddim")
    (uploads / "frame.png").write_bytes(b"not an image")
    cases = [(dict(frame=bright_frame(64, 160)), "differ in aspect"),  # a square mask into a wide frame
             (dict(frame=file_data(uploads / "frame.png")), "the frame: frame.png: not a readable image"),
             (dict(frame=bright_frame(64, 64), frame_mask=corner_lesion(64, 160)), "the frame's mask .* differ in "
                                                                                    "aspect"),
             (dict(frame=bright_frame(64, 64), frame_mask=np.full((64, 64), 255, np.uint8)), "all white"),
             (dict(frame=np.zeros((64, 64, 3), np.uint8)), "the mask lies outside the frame"),  # all black border
             (dict(frame=bright_frame(64, 64), margin=40), "margin must be between 0 and 32"),
             (dict(frame=bright_frame(64, 64), margin=20), "margin must be a whole number of pixels from 0 to 16")]
    for kwargs, message in cases:
        with pytest.raises(gr.Error, match=message) as info:
            studio.generate.generate(square, **args, **kwargs)
        one_clean_line(info.value.message, tmp_path)


def test_example_frames_ship_with_their_masks_and_load_on_a_click(studio):
    frames = studio.generate.frames
    assert len(frames) == 4 and all(m is not None for _, m in frames)
    for image, own in frames:
        assert image.suffix == ".jpg" and image.stat().st_size < 40_000 and own.parent.name == "masks"
    assert (frames[0][0].parent / "README.md").read_text().count("Kvasir-SEG") >= 1
    shown = studio.generate.frame_gallery()
    assert len(shown) == 4 and shown[0][0].shape == (256, 256, 3)
    image, own, paint = studio.generate.use_frame(SimpleNamespace(index=2))
    assert image.shape == (256, 256, 3) and set(np.unique(own)) == {0, 255} and 0 < (own > 0).mean() < 0.3
    assert paint.value is True
    value = studio.generate.set_reference(image, None)
    assert value["background"].shape == (masks.CANVAS, masks.CANVAS, 3) and value["layers"] == []
    with pytest.raises(gr.Error, match="example frame must be between 0 and 3"):
        studio.generate.use_frame(SimpleNamespace(index=9))

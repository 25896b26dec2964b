"""The app's handlers, called directly (no server): masks, models, generation, curation and export.

The tiny 64 px model comes from conftest.py (`tiny_model_dir`, and `studio` over it): random, seeded, nothing
downloaded. `layer_with_disk` and `editor` (a drawn canvas) are imported by the other test_app_* modules.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from siamese import DataError, read_mask
from studio import masks
from studio.catalog import ModelCatalog
from studio.settings import Settings
from studio.server import Studio


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


def test_uploaded_masks_follow_the_library_rule(tmp_path):
    """The app reads a mask file as the CLI does: a 16-bit 0/1 label mask and a float TIFF are masks."""
    lesion = np.zeros((32, 32), np.uint8)
    lesion[8:20, 10:24] = 1
    cv2.imwrite(str(tmp_path / "label16.png"), lesion.astype(np.uint16))
    cv2.imwrite(str(tmp_path / "float.tiff"), lesion.astype(np.float32))
    for name in ("label16.png", "float.tiff"):
        np.testing.assert_array_equal(masks.read_mask_upload(tmp_path / name), lesion)
        np.testing.assert_array_equal(masks.read_mask_upload(tmp_path / name), read_mask(tmp_path / name))


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

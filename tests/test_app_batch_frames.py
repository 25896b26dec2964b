"""The Batch tab painting its masks into frames (issue 24): from a zip and from a dataset folder, and bad frames
as one clear line."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

from conftest import write_dataset
from batch_helpers import FAST, finished, mask_png, masks_zip


def frame_png(size: tuple[int, int] = (80, 80), seed: int = 0) -> bytes:
    """A bright frame (all of it picture, no black border), PNG."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal([150, 90, 80], 15, (*size, 3)), 0, 255).astype(np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def test_masks_painted_into_frames_from_a_zip_and_from_a_data_folder(batch_studio, tmp_path):
    """Frames beside the masks (issue 24): each pair is a frame with the new lesion, every pixel outside its
    region the frame's; a frame's own mask (masks/ in the zip) goes into the pair's mask, a frame without one is
    warned about; a dataset folder of the data folder serves as frames too."""
    from siamese.data import binarize_mask, resize_pair
    from siamese.fidelity import load_scorer
    from siamese.carried.pipeline_siamese import resize_alpha
    from siamese.inpaint import full_size_mask, lesion_region, prepare_frame

    batch_studio.models.load_scorer = load_scorer  # the tiny model has no scorer: every pair accepted, unscored
    own = np.zeros((80, 80), np.uint8)
    own[60:70, 5:15] = 255
    frames = {"f0": frame_png(seed=0), "f1": frame_png(seed=1)}
    with zipfile.ZipFile(tmp_path / "frames.zip", "w") as zf:
        for stem, data in frames.items():
            zf.writestr(f"frames/{stem}.png", data)
        zf.writestr("frames/masks/f0.png", cv2.imencode(".png", own)[1].tobytes())
    warnings, original = [], gr.Warning
    gr.Warning = lambda message, **kw: warnings.append(message)
    try:
        _, key = batch_studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=2)], num_images=2,
                                          min_fidelity=None, frame_files=[str(tmp_path / "frames.zip")], margin=4,
                                          **FAST)
    finally:
        gr.Warning = original
    assert len(warnings) == 1 and "1 of 2 frames have no mask" in warnings[0]
    st = finished(batch_studio, key)
    assert (st["state"], st["done"], st["accepted"]) == ("finished", 4, 4)
    assert "painted into 2 frames (margin 4 px)" in st["message"] and "not labelled" in st["message"]
    job = batch_studio.batches.get(key)
    for p in job.snapshot()["pairs"]:
        item = p.generated()
        name = item.params["frame"]
        stem = name.removesuffix(".png")
        full = cv2.imdecode(np.frombuffer(frames[stem], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        drawn = cv2.imdecode(np.frombuffer(mask_png(int(p.name[1])), np.uint8), cv2.IMREAD_GRAYSCALE)
        new = resize_pair(None, binarize_mask(drawn), 64)[1]
        region = resize_alpha(lesion_region(new, 4)[1], full.shape[:2]) > 0  # pairs at the frame's own size
        np.testing.assert_array_equal(item.image[~region], full[~region])
        h, w = drawn.shape  # the batch keeps a mask's aspect at its shorter side 64 (studio.tabs.batch)
        shrunk = drawn if min(h, w) <= 64 else cv2.resize(drawn, (round(w * 64 / min(h, w)), round(h * 64 / min(h, w))),
                                                          interpolation=cv2.INTER_NEAREST)
        new = full_size_mask(shrunk, full.shape[:2])
        expected = np.maximum(new, full_size_mask(own, full.shape[:2])) if stem == "f0" else new
        np.testing.assert_array_equal(item.mask > 0, expected > 0)
        assert item.params["frame_mask"] == ("known" if stem == "f0" else "unknown")
    # the masks and the frames of a dataset folder in the data root (their own lesions known)
    write_dataset(tmp_path / "data", n=2)
    _, key = batch_studio.batch.batch_start(data_folder="data", frames_folder="data", num_images=1, min_fidelity=None,
                                      clear_frame_lesions=True, **FAST)
    st = finished(batch_studio, key)
    assert (st["state"], st["done"]) == ("finished", 2) and "their own lesions painted away first" in st["message"]
    assert all(p.generated().params["frame_mask"] == "known" for p in batch_studio.batches.get(key).snapshot()["pairs"])
    assert str(tmp_path) not in st["message"]


@pytest.mark.parametrize("frames, message", [
    (lambda p: [_write(p / "broken.png", b"not an image")], "the uploaded broken.png: broken.png: not a readable image"),
    (lambda p: [_write(p / "wide.png", frame_png((80, 200)))], "m0: the mask fits none of the 1 frames"),
    (lambda p: [_write(p / "empty.zip", _zip_bytes({"README.txt": b"x"}))], "empty.zip: no frame images in this folder"),
    (lambda p: [_write(p / "f.zip", _zip_bytes({"f/a.png": frame_png(), "f/masks/a.png": mask_png(0, 40)[:20]}))],
     "f.zip: masks/a.png: not a readable image"),
])
def test_bad_frames_are_one_clear_line(frames, message, batch_studio, tmp_path):
    with pytest.raises(gr.Error, match=message) as info:
        batch_studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=1)], num_images=1,
                                 frame_files=frames(tmp_path), **FAST)
    assert "\n" not in info.value.message and str(tmp_path) not in info.value.message
    assert tempfile.gettempdir() not in info.value.message and batch_studio.batches.active() == 0
    with pytest.raises(gr.Error, match="must be inside the server's data folder"):
        batch_studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=1)], frames_folder="/etc", **FAST)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()

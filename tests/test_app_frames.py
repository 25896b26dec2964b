"""Painting into a frame (issue 24): the frame with a new lesion and the union of masks, a frame without its mask,
bad frames, and the example frames."""

from __future__ import annotations

import io
import zipfile
from types import SimpleNamespace

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from conftest import file_data, one_clean_line
from studio import masks
from test_app import editor, layer_with_disk


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

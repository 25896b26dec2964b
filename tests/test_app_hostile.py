"""Hostile inputs: one redacted line for every error a visitor can cause (mask files read by the one mask rule,
huge or undecodable images, files not uploaded, long names, damaged zips, the server's own errors)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from conftest import file_data, one_clean_line, write_dataset, write_zip
from studio.server import Studio
from test_app import editor, layer_with_disk


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

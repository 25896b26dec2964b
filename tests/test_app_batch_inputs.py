"""The Batch tab's bad inputs: each one a message of one line, with no server path, and no batch started; zips
checked from their directory before anything is unpacked."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

from studio.settings import Settings
from studio.server import Studio
from batch_helpers import FAST, FakeScorer, fake_loader, mask_png, masks_zip


def _text_zip(p: Path) -> str:
    with zipfile.ZipFile(p / "notes.zip", "w") as zf:
        zf.writestr("a.txt", "not a mask")
        zf.writestr("b.csv", "1,2")
    return str(p / "notes.zip")


def _fake_png_zip(p: Path) -> str:
    return masks_zip(p / "fake.zip", n=1, extra={"masks/broken.png": b"hello, not a PNG"})


def _empty_mask_zip(p: Path) -> str:
    blank = cv2.imencode(".png", np.zeros((40, 40), np.uint8))[1].tobytes()
    return masks_zip(p / "empty.zip", n=1, extra={"masks/blank.png": blank})


def _not_zip(p: Path) -> str:
    (p / "masks.zip").write_text("not a zip")
    return str(p / "masks.zip")


def _bomb(p: Path) -> str:
    with zipfile.ZipFile(p / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("masks/m.png", b"\0" * 3_000_000)
    return str(p / "bomb.zip")


def _escape(p: Path) -> str:
    with zipfile.ZipFile(p / "escape.zip", "w") as zf:
        zf.writestr("../m.png", mask_png(0))
    return str(p / "escape.zip")


def _long_entry(p: Path) -> str:
    return masks_zip(p / "long.zip", n=1, extra={"masks/" + "b" * 300 + ".png": mask_png(1)})


def _file_and_folder(p: Path) -> str:
    return masks_zip(p / "clash.zip", n=1, extra={"masks/m0.png/b.png": mask_png(1)})


def _bad_crc(p: Path) -> str:
    path = Path(masks_zip(p / "crc.zip", n=1))  # stored entries: flip a byte of the first mask's data
    raw = bytearray(path.read_bytes())
    at = raw.find(b"IHDR")
    raw[at + 8] ^= 0xFF
    path.write_bytes(bytes(raw))
    return str(path)


def _big_entry(p: Path) -> str:
    with zipfile.ZipFile(p / "big.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("masks/m.png", b"\0" * (21 * 2**20))  # 21 MB of zeros: about 20 KB in the zip
    return str(p / "big.zip")


def _many_files(p: Path) -> str:
    with zipfile.ZipFile(p / "many-files.zip", "w") as zf:
        for k in range(10_000):
            zf.writestr(f"notes/{k}.txt", b"")
    return str(p / "many-files.zip")


BAD = {
    "no masks": (dict(), "no masks: upload mask images"),
    "a file not uploaded": (dict(mask_files={"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}),
                            "mask file was not uploaded to this server"),
    "dataset folder of 5000 characters": (dict(data_folder="x" * 5000),
                                          "dataset folder must be at most 2,000 characters"),
    "dataset folder with a name of 300 characters": (dict(data_folder="x" * 300),
                                                     "the dataset folder's name is too long"),
    "zip entry of 300 characters": (dict(mask_files=_long_entry), "long.zip: the entry name '.*' is too long"),
    "zip with a file and a folder of one name": (dict(mask_files=_file_and_folder),
                                                 "clash.zip: 'masks/m0.png' is both a file and a folder"),
    "zip entry with a bad CRC": (dict(mask_files=_bad_crc), "crc.zip: the entry 'masks/m0.png' is damaged"),
    "zip entry of 21 MB": (dict(mask_files=_big_entry), "big.zip: masks/m.png is 21 MB; a file in it may be at "
                                                        "most 20 MB"),
    "zip of 10,000 files": (dict(mask_files=_many_files), "many-files.zip holds 10,000 files; at most 108"),
    "zip of text files": (dict(mask_files=_text_zip), "notes.zip: no mask images in it"),
    "a text file named .png": (dict(mask_files=_fake_png_zip), "fake.zip: broken.png: not a readable image"),
    "an empty mask": (dict(mask_files=_empty_mask_zip), "empty.zip: blank.png: the mask is empty"),
    "not a zip": (dict(mask_files=_not_zip), "masks.zip is not a readable zip file"),
    "zip bomb": (dict(mask_files=_bomb), "bomb.zip unpacks to 3 MB; at most 2 MB"),
    "zip entry outside": (dict(mask_files=_escape), "refusing the unsafe entry"),
    "threshold 1.5": (dict(min_fidelity=1.5), "min fidelity must be between 0 and 1"),
    "threshold text": (dict(min_fidelity="high"), "min fidelity must be a number, got 'high'"),
    "0 images per mask": (dict(num_images=0), "images per mask must be between 1 and 4"),
    "9 images per mask": (dict(num_images=9), "images per mask must be between 1 and 4"),
    "steps text": (dict(steps="many"), "steps must be a number, got 'many'"),
    "scheduler unknown": (dict(scheduler="euler"), "scheduler must be one of"),
    "control end 2": (dict(control_end=2), "control end must be a fraction of the steps"),
    "autoguidance 0.5": (dict(autoguidance=0.5), "autoguidance must be between 1"),
    "dataset outside the root": (dict(data_folder="/etc"), "must be inside the server's data folder"),
    "dataset ..": (dict(data_folder="../.."), "must be inside the server's data folder"),
    "dataset missing": (dict(data_folder="nowhere"), "nowhere: no such folder"),
    "model not offered": (dict(model="/etc"), "not a model this server offers"),
    "too many masks": (dict(mask_files=lambda p: masks_zip(p / "many.zip", n=5)),
                       "holds 5 masks; a batch takes at most 4 \\(SIAMESE_BATCH_MAX_MASKS\\)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_batch_inputs_are_clear_messages(case, tiny_model_dir, tmp_path):
    kwargs, message = BAD[case]
    batch_studio = Studio(str(tiny_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path, max_upload="512kb", batch_max_masks=4))
    batch_studio.models.load_scorer = fake_loader(FakeScorer())
    kwargs = {k: v(tmp_path) if callable(v) else v for k, v in kwargs.items()}
    if "mask_files" in kwargs:
        kwargs["mask_files"] = [kwargs["mask_files"]]
    if case != "no masks" and "mask_files" not in kwargs and "data_folder" not in kwargs:
        kwargs["mask_files"] = [masks_zip(tmp_path / "ok.zip")]
    with pytest.raises(gr.Error, match=message) as info:
        batch_studio.batch.batch_start(**{**FAST, **kwargs})
    assert "\n" not in info.value.message and str(tmp_path) not in info.value.message
    assert tempfile.gettempdir() not in info.value.message and "Errno" not in info.value.message
    assert batch_studio.batches.active() == 0 and not list(batch_studio.scratch.path.rglob("*.png"))
    assert batch_studio.batches.get(None) is None and not batch_studio.batches._jobs  # no job (nor key) for a refused batch


@pytest.mark.parametrize("make, message", [(_big_entry, "is 21 MB"), (_many_files, "holds 10,000 files"),
                                           (lambda p: masks_zip(p / "many.zip", n=5), "holds 5 masks")])
def test_zips_are_checked_from_their_directory_before_anything_is_unpacked(make, message, batch_studio, tmp_path,
                                                                           monkeypatch):
    """Entry sizes, the number of files and the number of masks are read from the zip's directory: a 1 MB zip of
    one 1 GB entry, or of 10,000 files, was unpacked whole before the per-mask limits refused it."""
    batch_studio.batch.settings = Settings(data_root=tmp_path, batch_max_masks=4)
    zipped, opened = make(tmp_path), []
    original = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or original(self, *a, **k))
    with pytest.raises(gr.Error, match=message):
        batch_studio.batch.batch_start(mask_files=[zipped], **FAST)
    assert opened == [], "an entry was unpacked before the refusal"

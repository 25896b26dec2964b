"""The Batch tab: masks from a zip or a dataset folder -> scored pairs, accepted and rejected, moved, stopped,
exported; bad inputs as messages; the batch in the background (another session's Generate answers meanwhile, a
reload finds it). Handlers directly, then the launched app through gradio_client, then one browser run.

The tiny model (conftest) has no fidelity scorer; most tests give it a fake one (`FakeScorer`: 0.9, 0.2, 0.9,
... in call order), so the accepted and rejected sets are known.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

import app
from conftest import write_dataset
from studio.tabs.batch import GALLERY_MAX, batch_status_text
from studio.settings import Settings
from studio.server import Studio
from studio.jobs.base import Turns


class FakeScorer:
    """Scores 0.9, 0.2, 0.9, 0.2, ... in the order pairs are scored; `gate` (when set) holds the second call
    until it is opened, so a test can act while a batch runs."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls, self.gate = 0, gate

    def score(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        assert images.ndim == 4 and images.dtype == np.uint8 and masks.shape == images.shape[:3]
        self.calls += 1
        if self.gate is not None and self.calls > 1:
            self.gate.wait(60)
        start = getattr(self, "n", 0)
        self.n = start + len(images)
        return np.array([0.9 if (start + i) % 2 == 0 else 0.2 for i in range(len(images))])


def fake_loader(scorer):
    return lambda folder, device="cpu": scorer


def mask_png(k: int, size: int = 80) -> bytes:
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (20 + 7 * k % 40, size // 2), (14, 12), 0, 0, 360, 255, -1)
    return cv2.imencode(".png", mask)[1].tobytes()


def masks_zip(path: Path, n: int = 3, extra: dict[str, bytes] | None = None) -> str:
    """n small masks in masks/, and a README the batch skips."""
    with zipfile.ZipFile(path, "w") as zf:
        for k in range(n):
            zf.writestr(f"masks/m{k}.png", mask_png(k))
        zf.writestr("README.txt", "masks for a batch")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return str(path)


@pytest.fixture()
def studio(tiny_model_dir, tmp_path) -> Studio:
    s = Studio(str(tiny_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
               settings=Settings(data_root=tmp_path))
    s.models.load_scorer = fake_loader(FakeScorer())
    yield s
    s.batches.stop_all(60)


FAST = dict(steps=2, scheduler="ddim", guidance_scale=3.0, seed=5)


def finished(studio: Studio, key: str, timeout: float = 120) -> dict:
    studio.batches.get(key).wait(timeout)
    return studio.batch.batch_status(key)


# -- handlers ---------------------------------------------------------------------------------------
def test_a_zip_of_masks_becomes_scored_pairs_sorted_moved_and_exported(studio, tmp_path):
    status, key = studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip")], num_images=2,
                                     min_fidelity=0.5, **FAST)
    assert "0 / 6" in status and "3 masks from the uploaded masks.zip" in status and len(key) >= 20
    st = finished(studio, key)
    assert (st["state"], st["done"], st["total"], st["accepted"], st["rejected"]) == ("finished", 6, 6, 3, 3)
    assert [p["fidelity"] for p in st["pairs"]] == [0.9, 0.2] * 3 and [p["seed"] for p in st["pairs"]][:2] == [5, 6]
    assert [p["name"] for p in st["pairs"]] == ["m0_00", "m0_01", "m1_00", "m1_01", "m2_00", "m2_01"]
    assert "**6 / 6** pairs · ✓ **3** accepted · ✗ **3** rejected (min fidelity 0.50)" in st["message"]

    # the page: status, both galleries (scores in the captions, the nearest the threshold first), timer off
    text, acc, rej, seen, timer, _ = studio.batch.batch_poll(key, -1)
    assert "Finished: 6 of 6" in text and seen >= 0 and timer.active is False
    assert [g["caption"] for g in acc.value] == ["#0 · 0.90 · m0_00", "#2 · 0.90 · m1_00", "#4 · 0.90 · m2_00"]
    assert [g["caption"] for g in rej.value] == ["#1 · 0.20 · m0_01", "#3 · 0.20 · m1_01", "#5 · 0.20 · m2_01"]
    assert acc.label.startswith("Accepted: 3") and rej.label.startswith("Rejected: 3")
    assert studio.batch.batch_poll(key, seen)[:3] == (gr.skip(), gr.skip(), gr.skip())  # nothing new: nothing sent

    # a click on a rejected pair moves it (the caption names it), and back again
    studio.batch.batch_pick(key, gr.SelectData(None, {"index": 0, "value": {"image": {}, "caption": "#3 · 0.20 · m1_01"}}))
    assert studio.batch.batch_status(key)["accepted"] == 4
    studio.batch.batch_move(key, 3)
    studio.batch.batch_move(key, 3)
    studio.batch.batch_move(key, 0)  # an accepted one out
    st = studio.batch.batch_status(key)
    assert (st["accepted"], st["rejected"]) == (3, 3) and [p["moved"] for p in st["pairs"]][:4] == [1, 0, 0, 1]

    path = studio.batch.batch_export(key, nnunet=True, label="polyp")
    made = {p.seed: p for p in studio.batches.get(key).snapshot()["pairs"]}
    with zipfile.ZipFile(path) as zf:
        meta = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        names = zf.namelist()
        for m in meta:  # the pixels made, the mask they were made from (0/255 at the model's 64 px)
            image = cv2.imdecode(np.frombuffer(zf.read(m["image"]), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            mask = cv2.imdecode(np.frombuffer(zf.read(m["mask"]), np.uint8), cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(image, cv2.imread(made[m["seed"]].image)[..., ::-1])
            assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    by_seed = {m["seed"]: m for m in meta}
    assert sorted(by_seed) == [7, 8, 9]  # pairs #2, #3 (moved in), #4; #0 moved out
    assert by_seed[8]["curation"] == "moved by hand" and by_seed[8]["fidelity"] == 0.2
    assert by_seed[7]["curation"] == "threshold" and by_seed[7]["fidelity"] == 0.9
    assert all(m["min_fidelity"] == 0.5 and m["source_mask"] in ("m1", "m2") for m in meta)
    assert len([n for n in names if n.startswith("images/")]) == 3 and "nnunet/dataset.json" in names
    assert len([n for n in names if n.startswith("nnunet/labelsTr/")]) == 3


def test_stop_keeps_the_pairs_made(studio, tmp_path):
    gate = threading.Event()
    studio.models.load_scorer = fake_loader(FakeScorer(gate))
    _, key = studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=6)], num_images=2,
                                min_fidelity=0.5, **FAST)
    deadline = time.time() + 60
    while studio.batch.batch_status(key)["done"] == 0:  # the first image-batch is in; the second waits at the gate
        assert time.time() < deadline
        time.sleep(0.05)
    assert studio.batch.batch_status(key)["state"] == "running"
    assert studio.batch.batch_poll(key, -1)[4].active is True  # the page polls while the batch runs
    assert studio.batch.batch_stop(key).startswith("⏳ Stopping")
    gate.set()
    st = finished(studio, key)
    assert st["state"] == "stopped" and 0 < st["done"] < st["total"] == 12
    assert st["accepted"] + st["rejected"] == st["done"] == len(st["pairs"])
    assert st["message"].startswith(f"⏹️ Stopped: {st['done']} of 12 pairs made (those made are kept)")
    with zipfile.ZipFile(studio.batch.batch_export(key)) as zf:
        assert len([n for n in zf.namelist() if n.startswith("images/")]) == st["accepted"]


def test_a_dataset_folder_with_augmentation_and_a_model_without_scorer(studio, tmp_path):
    """The masks of a dataset folder in the data root; the tiny model has no segmenter/: all accepted, unscored,
    and the page says why the threshold does not apply."""
    from siamese.fidelity import load_scorer

    studio.models.load_scorer = load_scorer
    write_dataset(tmp_path / "data", n=4)
    warnings = []
    original = gr.Warning
    gr.Warning = lambda message, **kw: warnings.append(message)
    try:
        _, key = studio.batch.batch_start(data_folder="data", augment=True, num_images=1, min_fidelity=0.7, **FAST)
    finally:
        gr.Warning = original
    assert len(warnings) == 1 and "no fidelity scorer" in warnings[0] and "train-scorer" in warnings[0]
    st = finished(studio, key)
    assert (st["state"], st["done"], st["accepted"], st["scored"]) == ("finished", 4, 4, False)
    assert all(p["fidelity"] is None for p in st["pairs"]) and "unscored" in st["message"]
    assert "(augmented)" in st["message"] and "`data`" in st["message"] and str(tmp_path) not in st["message"]



def frame_png(size: tuple[int, int] = (80, 80), seed: int = 0) -> bytes:
    """A bright frame (all of it picture, no black border), PNG."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal([150, 90, 80], 15, (*size, 3)), 0, 255).astype(np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def test_masks_painted_into_frames_from_a_zip_and_from_a_data_folder(studio, tmp_path):
    """Frames beside the masks (issue 24): each pair is a frame with the new lesion, every pixel outside its
    region the frame's; a frame's own mask (masks/ in the zip) goes into the pair's mask, a frame without one is
    warned about; a dataset folder of the data folder serves as frames too."""
    from siamese.data import binarize_mask, resize_pair
    from siamese.fidelity import load_scorer
    from siamese.carried.pipeline_siamese import resize_alpha
    from siamese.inpaint import full_size_mask, lesion_region, prepare_frame

    studio.models.load_scorer = load_scorer  # the tiny model has no scorer: every pair accepted, unscored
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
        _, key = studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=2)], num_images=2,
                                          min_fidelity=None, frame_files=[str(tmp_path / "frames.zip")], margin=4,
                                          **FAST)
    finally:
        gr.Warning = original
    assert len(warnings) == 1 and "1 of 2 frames have no mask" in warnings[0]
    st = finished(studio, key)
    assert (st["state"], st["done"], st["accepted"]) == ("finished", 4, 4)
    assert "painted into 2 frames (margin 4 px)" in st["message"] and "not labelled" in st["message"]
    job = studio.batches.get(key)
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
    _, key = studio.batch.batch_start(data_folder="data", frames_folder="data", num_images=1, min_fidelity=None,
                                      clear_frame_lesions=True, **FAST)
    st = finished(studio, key)
    assert (st["state"], st["done"]) == ("finished", 2) and "their own lesions painted away first" in st["message"]
    assert all(p.generated().params["frame_mask"] == "known" for p in studio.batches.get(key).snapshot()["pairs"])
    assert str(tmp_path) not in st["message"]


@pytest.mark.parametrize("frames, message", [
    (lambda p: [_write(p / "broken.png", b"not an image")], "the uploaded broken.png: broken.png: not a readable image"),
    (lambda p: [_write(p / "wide.png", frame_png((80, 200)))], "m0: the mask fits none of the 1 frames"),
    (lambda p: [_write(p / "empty.zip", _zip_bytes({"README.txt": b"x"}))], "empty.zip: no frame images in this folder"),
    (lambda p: [_write(p / "f.zip", _zip_bytes({"f/a.png": frame_png(), "f/masks/a.png": mask_png(0, 40)[:20]}))],
     "f.zip: masks/a.png: not a readable image"),
])
def test_bad_frames_are_one_clear_line(frames, message, studio, tmp_path):
    with pytest.raises(gr.Error, match=message) as info:
        studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=1)], num_images=1,
                                 frame_files=frames(tmp_path), **FAST)
    assert "\n" not in info.value.message and str(tmp_path) not in info.value.message
    assert tempfile.gettempdir() not in info.value.message and studio.batches.active() == 0
    with pytest.raises(gr.Error, match="must be inside the server's data folder"):
        studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=1)], frames_folder="/etc", **FAST)


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


def test_the_models_own_scorer_scores_the_pairs_and_a_damaged_one_is_named(tiny_model_dir, tmp_path):
    """The real path: a (tiny, barely trained) segmenter/ saved in the model folder scores every pair."""
    import shutil

    from siamese.fidelity import ScorerConfig, save_scorer, train_scorer

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    masks = (rng.random((4, 32, 32)) > 0.5).astype(np.uint8)
    save_scorer(train_scorer(images, masks, ScorerConfig(resolution=32, channels=(4, 8), steps=2, batch_size=2)),
                model)
    studio = Studio(str(model), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path))
    _, key = studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=2)], num_images=2,
                                      min_fidelity=0.0,
                                **FAST)
    st = finished(studio, key)
    assert (st["state"], st["done"], st["accepted"], st["scored"]) == ("finished", 4, 4, True)
    assert all(0.0 <= p["fidelity"] <= 1.0 for p in st["pairs"]) and "(min fidelity 0.00)" in st["message"]

    (model / "segmenter" / "config.json").write_text("{not json")
    studio = Studio(str(model), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path))
    damaged = "fidelity scorer \\(segmenter/\\) cannot be loaded: model/segmenter/config.json: not valid JSON"
    with pytest.raises(gr.Error, match=damaged) as info:
        studio.batch.batch_start(mask_files=[str(tmp_path / "masks.zip")], **FAST)
    assert studio.batches.active() == 0 and str(tmp_path) not in info.value.message


def test_a_new_batch_replaces_the_sessions_last_and_sessions_are_apart(studio, tmp_path):
    zipped = masks_zip(tmp_path / "masks.zip")
    _, key = studio.batch.batch_start(mask_files=[zipped], num_images=1, **FAST)
    finished(studio, key)
    _, other = studio.batch.batch_start(mask_files=[zipped], num_images=2, **FAST)  # another session (no key)
    _, again = studio.batch.batch_start(mask_files=[zipped], num_images=2, batch_key=key, **FAST)
    assert again == key and other != key
    assert finished(studio, key)["done"] == 6 and finished(studio, other)["done"] == 6
    assert studio.batch.batch_status("not-a-key")["state"] == "idle" and studio.batch.batch_status(None)["pairs"] == []
    assert studio.batch.batch_poll("not-a-key", -1)[4].active is False  # an unknown key: nothing to poll


def test_the_gallery_shows_the_pairs_nearest_the_threshold(tmp_path):
    from studio.tabs.batch import pair_galleries
    from studio.jobs.batch import BatchPair

    png = tmp_path / "x.png"
    png.write_bytes(mask_png(0))
    pairs = [BatchPair(i, "m", i, str(png), str(png), {}, i / 300, i / 300 >= 0.5) for i in range(300)]
    acc, rej = pair_galleries({"pairs": pairs})
    assert len(acc.value) == len(rej.value) == GALLERY_MAX
    assert acc.value[0]["caption"].startswith("#150 · 0.50") and rej.value[0]["caption"].startswith("#149 · 0.50")
    assert "the 100 nearest the threshold shown" in acc.label


def test_the_registry_keeps_each_sessions_batch_until_it_expires_and_refuses_when_full(tmp_path):
    """Another session never evicts a batch: when the registry is full, a new session is refused (one line, when to
    try again) until a batch no page has asked for in MAX_IDLE_S since it ended expires with its files."""
    from studio.jobs.batch import MAX_IDLE_S, BatchRegistry
    from studio.replies import Busy

    registry = BatchRegistry(tmp_path, max_active=1, max_kept=2)
    first, second = registry.job_for(None), registry.job_for(None)
    for job in (first, second):
        job.folder.mkdir()
    with pytest.raises(Busy, match="keeps the batches of 2 sessions \\(its limit\\).*try again in") as info:
        registry.job_for(None)
    assert "\n" not in str(info.value)
    assert registry.get(first.key) is first and registry.get(second.key) is second  # none evicted
    assert first.folder.is_dir() and second.folder.is_dir()
    assert registry.job_for(first.key) is first  # a session may always start again: its own batch is replaced
    first.seen -= MAX_IDLE_S + 1  # no page asked for it for longer than the limit since it ended
    first.ended -= MAX_IDLE_S + 1
    third = registry.job_for(None)
    assert registry.get(first.key) is None and not first.folder.exists()
    assert registry.get(second.key) is second and registry.get(third.key) is third


def test_a_full_registry_refuses_a_new_sessions_batch_and_keeps_the_others(studio, tmp_path):
    """16 finished batches of other sessions stay whole: the 17th session is refused, not served by evicting one."""
    studio.batches.max_kept = 2
    zipped = masks_zip(tmp_path / "masks.zip", n=1)
    keys = [studio.batch.batch_start(mask_files=[zipped], num_images=1, min_fidelity=None, **FAST)[1]
            for _ in range(2)]
    for key in keys:
        finished(studio, key)
    with pytest.raises(gr.Error, match="keeps the batches of 2 sessions") as info:
        studio.batch.batch_start(mask_files=[zipped], num_images=1, **FAST)
    assert "\n" not in info.value.message
    for key in keys:  # both still there, their pairs and export too
        st = studio.batch.batch_status(key)
        assert (st["state"], st["done"]) == ("finished", 1)
        with zipfile.ZipFile(studio.batch.batch_export(key)) as zf:
            assert len([n for n in zf.namelist() if n.startswith("images/")]) == st["accepted"] == 1


def test_generate_goes_before_the_next_batch_step():
    turns, order = Turns(), []

    def generate():
        with turns.interactive():
            order.append("generate")
            time.sleep(0.05)
            order.append("generate done")

    def next_batch_step():
        with turns.batch():
            order.append("batch")

    with turns.batch():  # a batch step in progress: a Generate, then the next batch step, wait for it
        asked, nxt = threading.Thread(target=generate), threading.Thread(target=next_batch_step)
        asked.start()
        time.sleep(0.05)
        nxt.start()
        time.sleep(0.05)
        assert order == []
    asked.join(5)
    nxt.join(5)
    assert order == ["generate", "generate done", "batch"]


# -- bad inputs: one line, no server path, no batch ---------------------------------------------------
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
    studio = Studio(str(tiny_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path, max_upload="512kb", batch_max_masks=4))
    studio.models.load_scorer = fake_loader(FakeScorer())
    kwargs = {k: v(tmp_path) if callable(v) else v for k, v in kwargs.items()}
    if "mask_files" in kwargs:
        kwargs["mask_files"] = [kwargs["mask_files"]]
    if case != "no masks" and "mask_files" not in kwargs and "data_folder" not in kwargs:
        kwargs["mask_files"] = [masks_zip(tmp_path / "ok.zip")]
    with pytest.raises(gr.Error, match=message) as info:
        studio.batch.batch_start(**{**FAST, **kwargs})
    assert "\n" not in info.value.message and str(tmp_path) not in info.value.message
    assert tempfile.gettempdir() not in info.value.message and "Errno" not in info.value.message
    assert studio.batches.active() == 0 and not list(studio.scratch.path.rglob("*.png"))
    assert studio.batches.get(None) is None and not studio.batches._jobs  # no job (nor key) for a refused batch


@pytest.mark.parametrize("make, message", [(_big_entry, "is 21 MB"), (_many_files, "holds 10,000 files"),
                                           (lambda p: masks_zip(p / "many.zip", n=5), "holds 5 masks")])
def test_zips_are_checked_from_their_directory_before_anything_is_unpacked(make, message, studio, tmp_path,
                                                                           monkeypatch):
    """Entry sizes, the number of files and the number of masks are read from the zip's directory: a 1 MB zip of
    one 1 GB entry, or of 10,000 files, was unpacked whole before the per-mask limits refused it."""
    studio.batch.settings = Settings(data_root=tmp_path, batch_max_masks=4)
    zipped, opened = make(tmp_path), []
    original = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or original(self, *a, **k))
    with pytest.raises(gr.Error, match=message):
        studio.batch.batch_start(mask_files=[zipped], **FAST)
    assert opened == [], "an entry was unpacked before the refusal"


def test_the_batch_sliders_follow_the_model(studio, tiny_model_dir, tmp_path):
    scale, steps, autoguidance = studio.batch.batch_control(str(tiny_model_dir))
    assert (scale.value, steps.value, autoguidance.value) == (1.0, 1.0, 1.0)  # the tiny model's recommendations
    assert autoguidance.interactive is False  # no guide: autoguidance off, and locked
    assert studio.batch.batch_control(str(tmp_path / "nowhere")) == (gr.skip(), gr.skip(), gr.skip())  # left alone


def test_a_batch_with_autoguidance_records_it(guided_model_dir, tmp_path):
    """A model with a guide: its slider is set to the recommended weight, and the pairs record the weight used."""
    studio = Studio(str(guided_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path))
    studio.models.load_scorer = fake_loader(FakeScorer())
    _, _, autoguidance = studio.batch.batch_control(studio.catalog.default_id)
    assert autoguidance.value == 2.0 and autoguidance.interactive is True
    status, key = studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=1)], num_images=1,
                                     autoguidance=1.5, **FAST)
    assert "autoguidance 1.5" in status
    finished(studio, key)
    assert [p.params["autoguidance"] for p in studio.batches.get(key).snapshot()["pairs"]] == [1.5]


def test_batch_limits_and_switch_come_from_the_environment(studio):
    s = Settings.from_env({"SIAMESE_BATCH_MAX_MASKS": "50", "SIAMESE_BATCH_MAX_IMAGES": "2",
                           "SIAMESE_BATCH_MAX_ACTIVE": "1"})
    assert (s.batch_max_masks, s.batch_max_images, s.batch_max_active, s.batch_disabled) == (50, 2, 1, None)
    with pytest.raises(ValueError, match="SIAMESE_BATCH_MAX_MASKS must be a whole number 1 or more, got 'lots'"):
        Settings.from_env({"SIAMESE_BATCH_MAX_MASKS": "lots"})
    assert "SIAMESE_DISABLE_BATCH=1" in Settings.from_env({"SIAMESE_DISABLE_BATCH": "1"}).batch_disabled
    assert "ZeroGPU" in Settings.from_env({"SPACES_ZERO_GPU": "1"}).batch_disabled
    studio.batch.settings = Settings(data_root=Path("."), batch_disabled="Batches are disabled here.")
    with pytest.raises(gr.Error, match="Batches are disabled here."):
        studio.batch.batch_start(mask_files=[], **FAST)


def test_the_server_runs_a_limited_number_of_batches(studio, tmp_path):
    gate = threading.Event()
    studio.models.load_scorer = fake_loader(FakeScorer(gate))
    studio.batches.max_active = 1
    zipped = masks_zip(tmp_path / "masks.zip")
    _, key = studio.batch.batch_start(mask_files=[zipped], num_images=2, **FAST)
    try:
        with pytest.raises(gr.Error, match="the server is running 1 batches"):
            studio.batch.batch_start(mask_files=[zipped], num_images=2, **FAST)
        with pytest.raises(gr.Error, match="a batch is already running in this session"):
            studio.batch.batch_start(mask_files=[zipped], num_images=2, batch_key=key, **FAST)
    finally:
        gate.set()
    assert finished(studio, key)["done"] == 6


def test_the_status_text_for_each_state():
    snap = dict(state="running", message="Running.", done=3, total=12, accepted=2, rejected=1, s_per_pair=1.5,
                eta_s=13.5, min_fidelity=0.6, scored=True, describe="3 masks")
    text = batch_status_text(snap)
    assert "**3 / 12** pairs · ✓ **2** accepted · ✗ **1** rejected (min fidelity 0.60)" in text
    assert "`█████░░░░░░░░░░░░░░░` 25%" in text and "1.5 s per pair" in text and text.endswith("3 masks")
    assert batch_status_text({**snap, "state": "idle", "message": "No batch."}) == "No batch."


# -- the launched app, through gradio_client ----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The app on a free port with the tiny model and a fake scorer, queued as `python app.py` queues it."""
    root = tmp_path_factory.mktemp("batch-server")
    demo = app.build_demo(str(tiny_model_dir), runs_dir=root / "runs", checkpoints_dir=root / "checkpoints",
                          settings=Settings(data_root=tmp_path_factory.getbasetemp()))
    demo.studio.models.load_scorer = fake_loader(FakeScorer())
    port = free_port()
    demo.queue(**app.QUEUE_OPTIONS).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                           quiet=True, **app.launch_options())
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.studio.batches.stop_all(60)
        demo.close()


def client(url: str, tmp_path: Path, name: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(tmp_path / name))


def wait_batch(c, key: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while (st := c.predict(batch_key=key, api_name="/batch_status"))["state"] in ("running", "stopping"):
        assert time.time() < deadline, st["message"]
        time.sleep(0.3)
    return st


@pytest.mark.slow
def test_a_batch_through_the_api_survives_a_reload(server, tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, demo = server
    a = client(url, tmp_path, "a")
    status, key = a.predict(mask_files=[handle_file(masks_zip(tmp_path / "masks.zip"))], num_images=2,
                            min_fidelity=0.5, steps=2, scheduler="ddim", seed=11, api_name="/batch_start")
    assert "0 / 6" in status and str(tmp_path) not in status
    st = wait_batch(a, key)
    assert (st["state"], st["done"], st["accepted"], st["rejected"]) == ("finished", 6, 3, 3)
    rejected = [p["id"] for p in st["pairs"] if not p["accepted"]]
    assert "4** accepted" in a.predict(batch_key=key, pair=rejected[0], api_name="/batch_move")
    with pytest.raises(AppError, match="pair #99 is not in this batch"):
        a.predict(batch_key=key, pair=99, api_name="/batch_move")

    # a reload: a new page (a new Gradio session) with the key the browser kept finds the batch as it was
    b = client(url, tmp_path, "b")
    again = b.predict(batch_key=key, api_name="/batch_status")
    assert (again["state"], again["accepted"], again["rejected"]) == ("finished", 4, 2)
    assert [p["moved"] for p in again["pairs"]] == [p["id"] == rejected[0] for p in st["pairs"]]
    path = b.predict(batch_key=key, nnunet=True, label="polyp", api_name="/batch_export")
    with zipfile.ZipFile(path) as zf:
        meta = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        assert len([n for n in zf.namelist() if n.startswith("images/")]) == 4 and "nnunet/dataset.json" in zf.namelist()
    assert sorted(m["fidelity"] for m in meta) == [0.2, 0.9, 0.9, 0.9]
    assert [m["curation"] for m in meta].count("moved by hand") == 1
    # another session without the key sees no batch, and cannot export one
    c = client(url, tmp_path, "c")
    assert c.predict(batch_key="", api_name="/batch_status")["state"] == "idle"
    with pytest.raises(AppError, match="nothing to export"):
        c.predict(batch_key="", api_name="/batch_export")
    with pytest.raises(AppError, match="min fidelity must be between 0 and 1"):  # the slider's range, for the API too
        c.predict(mask_files=[handle_file(str(tmp_path / "masks.zip"))], min_fidelity=2, api_name="/batch_start")
    with pytest.raises(AppError, match="must be inside the server's data folder"):
        c.predict(data_folder="/etc", api_name="/batch_start")


@pytest.mark.slow
def test_another_sessions_generate_answers_while_a_batch_runs(server, tmp_path):
    """A long batch (10 masks x 4 images x 40 steps) in one session; another session's /generate is answered
    within seconds, while the batch still runs (it waits for at most one image-batch: studio.jobs.base.Turns)."""
    pytest.importorskip("gradio_client")
    from gradio_client import handle_file

    url, demo = server
    a, b = client(url, tmp_path, "a"), client(url, tmp_path, "b")
    zipped = masks_zip(tmp_path / "masks.zip", n=10)
    _, key = a.predict(mask_files=[handle_file(zipped)], num_images=4, steps=40, scheduler="ddim", seed=1,
                       api_name="/batch_start")
    try:
        while a.predict(batch_key=key, api_name="/batch_status")["done"] < 4:  # the batch is under way
            time.sleep(0.2)
        mask = tmp_path / "mask.png"
        mask.write_bytes(mask_png(1))
        waits = []
        for seed in (1, 2):
            t0 = time.monotonic()
            gallery, status = b.predict(mask=handle_file(str(mask)), num_images=1, steps=2, seed=seed,
                                        scheduler="ddim", api_name="/generate")
            waits.append(time.monotonic() - t0)
            assert len(gallery) == 1 and "1 images" in status
        st = a.predict(batch_key=key, api_name="/batch_status")
        assert st["state"] == "running" and st["done"] < st["total"] == 40, "the batch ended before Generate answered"
        assert max(waits) < 10, waits
        print(f"\nGenerate answered in {', '.join(f'{w:.2f}' for w in waits)} s during a batch "
              f"({st['s_per_pair']:.2f} s per pair)")
    finally:
        a.predict(batch_key=key, api_name="/batch_stop")
    st = wait_batch(a, key)
    assert st["state"] == "stopped" and st["done"] == len(st["pairs"]) > 0


@pytest.mark.slow
def test_documented_batch_values_work_through_the_api(server, tmp_path):
    """`min_fidelity=None` means no threshold and a negative seed a random one, as the API page says (the components
    answered "Could not preprocess input component" and "Value -1 is less than minimum value 0")."""
    pytest.importorskip("gradio_client")
    from gradio_client import handle_file

    url, _ = server
    a = client(url, tmp_path, "a")
    status, key = a.predict(mask_files=[handle_file(masks_zip(tmp_path / "masks.zip", n=2))], num_images=2,
                            min_fidelity=None, seed=-1, steps=2, scheduler="ddim", api_name="/batch_start")
    st = wait_batch(a, key)
    assert (st["state"], st["done"], st["accepted"]) == ("finished", 4, 4), st["message"]
    assert st["min_fidelity"] is None and all(p["fidelity"] is not None for p in st["pairs"])  # scored, all kept
    assert "min fidelity" not in st["message"]


@pytest.mark.slow
def test_eight_sessions_generate_during_a_batch(server, tmp_path):
    """8 clients, each 3 x /generate (1 image, 2 steps), while another session's 40-pair batch runs: every Generate is
    answered before the batch ends (the interactive path first), and the median wait is printed for
    docs/RELIABILITY.md."""
    pytest.importorskip("gradio_client")
    from gradio_client import handle_file

    url, demo = server
    owner = client(url, tmp_path, "owner")
    _, key = owner.predict(mask_files=[handle_file(masks_zip(tmp_path / "masks.zip", n=10))], num_images=4,
                           steps=30, scheduler="ddim", seed=1, api_name="/batch_start")
    mask = tmp_path / "mask.png"
    mask.write_bytes(mask_png(3))
    waits: list[float] = []

    def session(k: int) -> None:
        c = client(url, tmp_path, f"s{k}")
        try:
            for r in range(3):
                t0 = time.monotonic()
                c.predict(mask=handle_file(str(mask)), num_images=1, steps=2, seed=100 * k + r, scheduler="ddim",
                          api_name="/generate")
                waits.append(time.monotonic() - t0)
        finally:
            c.close()

    try:
        while owner.predict(batch_key=key, api_name="/batch_status")["done"] < 4:  # the batch is under way
            time.sleep(0.2)
        t0 = time.monotonic()
        threads = [threading.Thread(target=session, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        took = time.monotonic() - t0
        st = owner.predict(batch_key=key, api_name="/batch_status")
    finally:
        owner.predict(batch_key=key, api_name="/batch_stop")
    waits.sort()
    print(f"\n{len(waits)} Generate requests from 8 clients during a 40-pair batch, in {took:.1f} s: wait median "
          f"{waits[len(waits) // 2]:.2f} s, longest {waits[-1]:.2f} s; the batch made {st['done']} pairs meanwhile "
          f"(grace {demo.studio.turns.grace_s:g} s)")
    assert len(waits) == 24
    assert st["state"] == "running" and st["done"] < st["total"] == 40, "the batch ended before the sessions"


# -- in a browser (Playwright + Debian's chromium, headless; skipped without them) ----------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)")
def test_the_batch_tab_runs_a_zip_and_a_reload_shows_it_again(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from test_app_browser import ARGS, queue_joins

    url, _ = server
    zipped = masks_zip(tmp_path / "masks.zip")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url, wait_until="load")
            page.get_by_role("tab", name="Batch").click()
            page.locator("#batch-files input[type=file]").set_input_files(zipped)
            page.wait_for_timeout(1000)
            page.get_by_role("button", name="Sampling (as in Generate)").click()
            page.locator("#batch-steps input[type=number]").fill("2")
            page.locator("#batch-start").click()
            page.wait_for_function("() => /Finished|failed/.test(document.querySelector('#batch-status').innerText)",
                                   timeout=120_000, polling=500)
            assert "6 / 6" in page.locator("#batch-status").inner_text()
            page.wait_for_function("() => document.querySelectorAll('#batch-rejected img').length === 3",
                                   timeout=10_000)
            assert page.locator("#batch-accepted img").count() == 3
            page.locator("#batch-rejected img").first.click()  # moves it over
            page.wait_for_function("() => document.querySelectorAll('#batch-accepted img').length === 4",
                                   timeout=10_000)
            page.wait_for_timeout(1000)
            joins = queue_joins(page)
            page.wait_for_timeout(3500)
            assert joins == [], f"the page polled after the batch ended: {joins}"

            page.reload(wait_until="load")  # the batch lives on the server; the page keeps its key
            page.get_by_role("tab", name="Batch").click()
            page.wait_for_function("() => /4\\*{0,2} accepted/.test(document.querySelector('#batch-status').innerText)",
                                   timeout=20_000, polling=500)
            assert page.locator("#batch-accepted img").count() == 4 and page.locator("#batch-rejected img").count() == 2
        finally:
            browser.close()

"""The Batch tab's handlers: masks from a zip or a dataset folder -> scored pairs, accepted and rejected, moved,
stopped, exported; the model's own scorer; each session's batch and the registry's limits; the sliders and the
status. Frames: test_app_batch_frames.py; bad inputs: test_app_batch_inputs.py; the launched app:
test_app_batch_server.py. The helpers are in batch_helpers.py, the `batch_studio` fixture in conftest.

The tiny model (conftest) has no fidelity scorer; most tests give it a fake one (`FakeScorer`: 0.9, 0.2, 0.9,
... in call order), so the accepted and rejected sets are known.
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

from batch_helpers import FAST, FakeScorer, fake_loader, finished, mask_png, masks_zip
from conftest import write_dataset
from studio.tabs.batch import GALLERY_MAX, batch_status_text
from studio.settings import Settings
from studio.server import Studio


def test_a_zip_of_masks_becomes_scored_pairs_sorted_moved_and_exported(batch_studio, tmp_path):
    status, key = batch_studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip")], num_images=2,
                                     min_fidelity=0.5, **FAST)
    assert "0 / 6" in status and "3 masks from the uploaded masks.zip" in status and len(key) >= 20
    st = finished(batch_studio, key)
    assert (st["state"], st["done"], st["total"], st["accepted"], st["rejected"]) == ("finished", 6, 6, 3, 3)
    assert [p["fidelity"] for p in st["pairs"]] == [0.9, 0.2] * 3 and [p["seed"] for p in st["pairs"]][:2] == [5, 6]
    assert [p["name"] for p in st["pairs"]] == ["m0_00", "m0_01", "m1_00", "m1_01", "m2_00", "m2_01"]
    assert "**6 / 6** pairs · ✓ **3** accepted · ✗ **3** rejected (min fidelity 0.50)" in st["message"]

    # the page: status, both galleries (scores in the captions, the nearest the threshold first), timer off
    text, acc, rej, seen, timer, _ = batch_studio.batch.batch_poll(key, -1)
    assert "Finished: 6 of 6" in text and seen >= 0 and timer.active is False
    assert [g["caption"] for g in acc.value] == ["#0 · 0.90 · m0_00", "#2 · 0.90 · m1_00", "#4 · 0.90 · m2_00"]
    assert [g["caption"] for g in rej.value] == ["#1 · 0.20 · m0_01", "#3 · 0.20 · m1_01", "#5 · 0.20 · m2_01"]
    assert acc.label.startswith("Accepted: 3") and rej.label.startswith("Rejected: 3")
    assert batch_studio.batch.batch_poll(key, seen)[:3] == (gr.skip(), gr.skip(), gr.skip())  # nothing new: nothing sent

    # a click on a rejected pair moves it (the caption names it), and back again
    batch_studio.batch.batch_pick(key, gr.SelectData(None, {"index": 0, "value": {"image": {}, "caption": "#3 · 0.20 · m1_01"}}))
    assert batch_studio.batch.batch_status(key)["accepted"] == 4
    batch_studio.batch.batch_move(key, 3)
    batch_studio.batch.batch_move(key, 3)
    batch_studio.batch.batch_move(key, 0)  # an accepted one out
    st = batch_studio.batch.batch_status(key)
    assert (st["accepted"], st["rejected"]) == (3, 3) and [p["moved"] for p in st["pairs"]][:4] == [1, 0, 0, 1]

    path = batch_studio.batch.batch_export(key, nnunet=True, label="polyp")
    made = {p.seed: p for p in batch_studio.batches.get(key).snapshot()["pairs"]}
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


def test_stop_keeps_the_pairs_made(batch_studio, tmp_path):
    gate = threading.Event()
    batch_studio.models.load_scorer = fake_loader(FakeScorer(gate))
    _, key = batch_studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=6)], num_images=2,
                                min_fidelity=0.5, **FAST)
    deadline = time.time() + 60
    while batch_studio.batch.batch_status(key)["done"] == 0:  # the first image-batch is in; the second waits at the gate
        assert time.time() < deadline
        time.sleep(0.05)
    assert batch_studio.batch.batch_status(key)["state"] == "running"
    assert batch_studio.batch.batch_poll(key, -1)[4].active is True  # the page polls while the batch runs
    assert batch_studio.batch.batch_stop(key).startswith("⏳ Stopping")
    gate.set()
    st = finished(batch_studio, key)
    assert st["state"] == "stopped" and 0 < st["done"] < st["total"] == 12
    assert st["accepted"] + st["rejected"] == st["done"] == len(st["pairs"])
    assert st["message"].startswith(f"⏹️ Stopped: {st['done']} of 12 pairs made (those made are kept)")
    with zipfile.ZipFile(batch_studio.batch.batch_export(key)) as zf:
        assert len([n for n in zf.namelist() if n.startswith("images/")]) == st["accepted"]


def test_a_dataset_folder_with_augmentation_and_a_model_without_scorer(batch_studio, tmp_path):
    """The masks of a dataset folder in the data root; the tiny model has no segmenter/: all accepted, unscored,
    and the page says why the threshold does not apply."""
    from siamese.fidelity import load_scorer

    batch_studio.models.load_scorer = load_scorer
    write_dataset(tmp_path / "data", n=4)
    warnings = []
    original = gr.Warning
    gr.Warning = lambda message, **kw: warnings.append(message)
    try:
        _, key = batch_studio.batch.batch_start(data_folder="data", augment=True, num_images=1, min_fidelity=0.7, **FAST)
    finally:
        gr.Warning = original
    assert len(warnings) == 1 and "no fidelity scorer" in warnings[0] and "train-scorer" in warnings[0]
    st = finished(batch_studio, key)
    assert (st["state"], st["done"], st["accepted"], st["scored"]) == ("finished", 4, 4, False)
    assert all(p["fidelity"] is None for p in st["pairs"]) and "unscored" in st["message"]
    assert "(augmented)" in st["message"] and "`data`" in st["message"] and str(tmp_path) not in st["message"]


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
    batch_studio = Studio(str(model), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path))
    _, key = batch_studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=2)], num_images=2,
                                      min_fidelity=0.0,
                                **FAST)
    st = finished(batch_studio, key)
    assert (st["state"], st["done"], st["accepted"], st["scored"]) == ("finished", 4, 4, True)
    assert all(0.0 <= p["fidelity"] <= 1.0 for p in st["pairs"]) and "(min fidelity 0.00)" in st["message"]

    (model / "segmenter" / "config.json").write_text("{not json")
    batch_studio = Studio(str(model), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path))
    damaged = "fidelity scorer \\(segmenter/\\) cannot be loaded: model/segmenter/config.json: not valid JSON"
    with pytest.raises(gr.Error, match=damaged) as info:
        batch_studio.batch.batch_start(mask_files=[str(tmp_path / "masks.zip")], **FAST)
    assert batch_studio.batches.active() == 0 and str(tmp_path) not in info.value.message


def test_a_new_batch_replaces_the_sessions_last_and_sessions_are_apart(batch_studio, tmp_path):
    zipped = masks_zip(tmp_path / "masks.zip")
    _, key = batch_studio.batch.batch_start(mask_files=[zipped], num_images=1, **FAST)
    finished(batch_studio, key)
    _, other = batch_studio.batch.batch_start(mask_files=[zipped], num_images=2, **FAST)  # another session (no key)
    _, again = batch_studio.batch.batch_start(mask_files=[zipped], num_images=2, batch_key=key, **FAST)
    assert again == key and other != key
    assert finished(batch_studio, key)["done"] == 6 and finished(batch_studio, other)["done"] == 6
    assert batch_studio.batch.batch_status("not-a-key")["state"] == "idle" and batch_studio.batch.batch_status(None)["pairs"] == []
    assert batch_studio.batch.batch_poll("not-a-key", -1)[4].active is False  # an unknown key: nothing to poll


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


def test_a_full_registry_refuses_a_new_sessions_batch_and_keeps_the_others(batch_studio, tmp_path):
    """16 finished batches of other sessions stay whole: the 17th session is refused, not served by evicting one."""
    batch_studio.batches.max_kept = 2
    zipped = masks_zip(tmp_path / "masks.zip", n=1)
    keys = [batch_studio.batch.batch_start(mask_files=[zipped], num_images=1, min_fidelity=None, **FAST)[1]
            for _ in range(2)]
    for key in keys:
        finished(batch_studio, key)
    with pytest.raises(gr.Error, match="keeps the batches of 2 sessions") as info:
        batch_studio.batch.batch_start(mask_files=[zipped], num_images=1, **FAST)
    assert "\n" not in info.value.message
    for key in keys:  # both still there, their pairs and export too
        st = batch_studio.batch.batch_status(key)
        assert (st["state"], st["done"]) == ("finished", 1)
        with zipfile.ZipFile(batch_studio.batch.batch_export(key)) as zf:
            assert len([n for n in zf.namelist() if n.startswith("images/")]) == st["accepted"] == 1


def test_the_batch_sliders_follow_the_model(batch_studio, tiny_model_dir, tmp_path):
    scale, steps, autoguidance = batch_studio.batch.batch_control(str(tiny_model_dir))
    assert (scale.value, steps.value, autoguidance.value) == (1.0, 1.0, 1.0)  # the tiny model's recommendations
    assert autoguidance.interactive is False  # no guide: autoguidance off, and locked
    assert batch_studio.batch.batch_control(str(tmp_path / "nowhere")) == (gr.skip(), gr.skip(), gr.skip())  # left alone


def test_a_batch_with_autoguidance_records_it(guided_model_dir, tmp_path):
    """A model with a guide: its slider is set to the recommended weight, and the pairs record the weight used."""
    batch_studio = Studio(str(guided_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path))
    batch_studio.models.load_scorer = fake_loader(FakeScorer())
    _, _, autoguidance = batch_studio.batch.batch_control(batch_studio.catalog.default_id)
    assert autoguidance.value == 2.0 and autoguidance.interactive is True
    status, key = batch_studio.batch.batch_start(mask_files=[masks_zip(tmp_path / "masks.zip", n=1)], num_images=1,
                                     autoguidance=1.5, **FAST)
    assert "autoguidance 1.5" in status
    finished(batch_studio, key)
    assert [p.params["autoguidance"] for p in batch_studio.batches.get(key).snapshot()["pairs"]] == [1.5]


def test_batch_limits_and_switch_come_from_the_environment(batch_studio):
    s = Settings.from_env({"SIAMESE_BATCH_MAX_MASKS": "50", "SIAMESE_BATCH_MAX_IMAGES": "2",
                           "SIAMESE_BATCH_MAX_ACTIVE": "1"})
    assert (s.batch_max_masks, s.batch_max_images, s.batch_max_active, s.batch_disabled) == (50, 2, 1, None)
    with pytest.raises(ValueError, match="SIAMESE_BATCH_MAX_MASKS must be a whole number 1 or more, got 'lots'"):
        Settings.from_env({"SIAMESE_BATCH_MAX_MASKS": "lots"})
    assert "SIAMESE_DISABLE_BATCH=1" in Settings.from_env({"SIAMESE_DISABLE_BATCH": "1"}).batch_disabled
    assert "ZeroGPU" in Settings.from_env({"SPACES_ZERO_GPU": "1"}).batch_disabled
    batch_studio.batch.settings = Settings(data_root=Path("."), batch_disabled="Batches are disabled here.")
    with pytest.raises(gr.Error, match="Batches are disabled here."):
        batch_studio.batch.batch_start(mask_files=[], **FAST)


def test_the_server_runs_a_limited_number_of_batches(batch_studio, tmp_path):
    gate = threading.Event()
    batch_studio.models.load_scorer = fake_loader(FakeScorer(gate))
    batch_studio.batches.max_active = 1
    zipped = masks_zip(tmp_path / "masks.zip")
    _, key = batch_studio.batch.batch_start(mask_files=[zipped], num_images=2, **FAST)
    try:
        with pytest.raises(gr.Error, match="the server is running 1 batches"):
            batch_studio.batch.batch_start(mask_files=[zipped], num_images=2, **FAST)
        with pytest.raises(gr.Error, match="a batch is already running in this session"):
            batch_studio.batch.batch_start(mask_files=[zipped], num_images=2, batch_key=key, **FAST)
    finally:
        gate.set()
    assert finished(batch_studio, key)["done"] == 6


def test_the_status_text_for_each_state():
    snap = dict(state="running", message="Running.", done=3, total=12, accepted=2, rejected=1, s_per_pair=1.5,
                eta_s=13.5, min_fidelity=0.6, scored=True, describe="3 masks")
    text = batch_status_text(snap)
    assert "**3 / 12** pairs · ✓ **2** accepted · ✗ **1** rejected (min fidelity 0.60)" in text
    assert "`█████░░░░░░░░░░░░░░░` 25%" in text and "1.5 s per pair" in text and text.endswith("3 masks")
    assert batch_status_text({**snap, "state": "idle", "message": "No batch."}) == "No batch."

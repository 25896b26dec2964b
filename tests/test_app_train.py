"""The Train tab's handlers: dataset folders and zips (unsafe, too large, outside the data root), refusals, and
the training status, curves and stop (events fed to the job directly: nothing trains)."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
import gradio as gr
import numpy as np
import pytest

import app
from conftest import write_dataset, write_zip
from siamese import DataError
from siamese.objective import LOSS_KEYS
from studio import datasets
from studio.settings import Settings, training_disabled_reason
from studio.server import Studio


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

"""The app and a model folder's own description (issue 25): the selector names a model by its label, the Generate
tab's example masks and prompt follow the selected model, and the Train tab runs the full build (`siamese.build`)
in the background: stage and ETA in the status, the curves across the stages, stopped and resumed, the finished
folder in the model selector. Handlers directly (a fake build for the fast tests), then one real tiny build."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

from conftest import write_dataset
from siamese import ModelLoadError, SiameseConfig, load_model, read_mask
from siamese.build import BUILD_FOLDER, BuildConfig, BuildStopped, plan_stages
from siamese.cli import build_parser
from siamese.data import EXAMPLE_MASKS, EXAMPLES_FOLDER, find_pairs, split_pairs, write_examples
from studio.catalog import ModelCatalog
from studio.jobs import training
from studio.server import Studio
from studio.settings import Settings
from studio.tabs.train import KINDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def studio(tiny_model_dir, tmp_path) -> Studio:
    return Studio(str(tiny_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                  settings=Settings(data_root=tmp_path))


def fake_model(folder: Path, **config) -> Path:
    """A folder the catalogue lists (unet/ and text_encoder/), with a siamese_config.json of `config`."""
    (folder / "unet").mkdir(parents=True)
    (folder / "text_encoder").mkdir()
    (folder / "siamese_config.json").write_text(json.dumps(config))
    return folder


def copy_model(tiny_model_dir: Path, folder: Path, masks: int = 0, **config) -> Path:
    """The tiny model in `folder` with `config` over its settings and `masks` example masks in examples/."""
    shutil.copytree(tiny_model_dir, folder)
    settings = json.loads((folder / "siamese_config.json").read_text())
    (folder / "siamese_config.json").write_text(json.dumps({**settings, **config}))
    for i in range(masks):
        mask = np.zeros((64, 64), np.uint8)
        cv2.rectangle(mask, (4 + 8 * i, 10), (20 + 8 * i, 30), 255, -1)
        (folder / EXAMPLES_FOLDER).mkdir(exist_ok=True)
        cv2.imwrite(str(folder / EXAMPLES_FOLDER / f"{i + 1}-case.png"), mask)
    return folder


# -- the label -----------------------------------------------------------------------------------
def test_a_label_is_checked_saved_and_loaded(tmp_path):
    SiameseConfig(label="skin lesions (dermoscopy)").save(tmp_path)
    assert SiameseConfig.load(tmp_path).label == "skin lesions (dermoscopy)"
    SiameseConfig().save(tmp_path)
    assert SiameseConfig.load(tmp_path).label is None  # no label: the name is shown
    for bad in (5, "", "two\nlines", "x" * 200):
        (tmp_path / "siamese_config.json").write_text(json.dumps({"label": bad}))
        with pytest.raises(ModelLoadError, match="'label' must be null or one line of text"):
            SiameseConfig.load(tmp_path)
    with pytest.raises(ValueError, match="label must be"):
        BuildConfig(data="d", output="o", label="a\tb" * 50).validate()


def test_the_bundled_polyp_model_says_what_it_makes():
    config = SiameseConfig.load(ROOT / "checkpoints" / "siamese-kvasir-tiny")
    assert config.label == "colon polyps (colonoscopy)"


def test_the_selector_shows_each_models_label(tmp_path):
    ckpt, runs = tmp_path / "checkpoints", tmp_path / "runs"
    default = fake_model(ckpt / "siamese-kvasir-tiny", label="colon polyps (colonoscopy)")
    fake_model(ckpt / "siamese-ph2-tiny", label="skin lesions (dermoscopy)")
    fake_model(runs / "plain")  # no label: its folder's name, as before
    fake_model(runs / "again", label="skin lesions (dermoscopy)")  # two of one label: the folder names tell them apart
    fake_model(runs / "broken", label=7)  # a config that does not load: its name (its error shows when selected)
    choices = ModelCatalog(str(default), ckpt, runs).choices()
    assert choices == [
        ("colon polyps (colonoscopy) (default)", "checkpoints/siamese-kvasir-tiny"),
        ("skin lesions (dermoscopy) · siamese-ph2-tiny (checkpoints)", "checkpoints/siamese-ph2-tiny"),
        ("skin lesions (dermoscopy) · again (trained here)", "runs/app/again"),
        ("broken (trained here)", "runs/app/broken"),
        ("plain (trained here)", "runs/app/plain")]


def test_build_takes_a_label_for_the_model_it_ships(dataset, tmp_path):
    args = build_parser().parse_args(["build", "--data", "d", "--output", "o", "--label", "skin lesions (dermoscopy)"])
    assert args.label == "skin lesions (dermoscopy)"
    assert build_parser().parse_args(["build", "--data", "d", "--output", "o"]).label is None
    # the label is not part of the build's plan: a build resumed with another label goes on
    config = BuildConfig(data=str(dataset), output=str(tmp_path / "o"), label="x")
    (tmp_path / "o" / BUILD_FOLDER).mkdir(parents=True)
    plan = {"config": {k: v for k, v in vars(config).items() if k != "label"}, "stages": plan_stages(config)}
    (tmp_path / "o" / BUILD_FOLDER / "plan.json").write_text(json.dumps(plan))
    from siamese.build import begun_build

    assert begun_build(tmp_path / "o") == BuildConfig(data=str(dataset), output=str(tmp_path / "o"))
    assert begun_build(tmp_path / "elsewhere") is None


def test_build_writes_held_out_example_masks_at_the_model_resolution(tmp_path):
    data = write_dataset(tmp_path / "data", n=40, size=80)
    paths = write_examples(data, 0.2, 64, tmp_path / "model")
    assert len(paths) == EXAMPLE_MASKS and all(p.parent == tmp_path / "model" / EXAMPLES_FOLDER for p in paths)
    _, held = split_pairs(find_pairs(data), 0.2, 0)
    held_stems = {p.mask.stem for p in held}
    areas = []
    for p in paths:
        raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert raw.shape == (64, 64) and set(np.unique(raw)) == {0, 255} and p.stat().st_size < 2000
        assert p.stem.split("-", 1)[1] in held_stems  # a held-out mask, never a training one
        areas.append(read_mask(p).mean())
    assert areas == sorted(areas) and areas[0] < areas[-1]  # from the smallest lesion to the largest
    (tmp_path / "model" / EXAMPLES_FOLDER / "stale.png").write_bytes(b"x")
    assert len(write_examples(data, 0.2, 64, tmp_path / "model")) == EXAMPLE_MASKS
    assert not (tmp_path / "model" / EXAMPLES_FOLDER / "stale.png").exists()  # what was there is replaced


# -- Generate follows the model ------------------------------------------------------------------
def test_example_masks_and_prompt_follow_the_selected_model(studio, tiny_model_dir, tmp_path):
    skin = copy_model(tiny_model_dir, tmp_path / "checkpoints" / "skin", masks=3, prompt="a dermoscopy image")
    plain = copy_model(tiny_model_dir, tmp_path / "checkpoints" / "plain", prompt="another image")
    app_examples = [caption for _, caption in studio.generate.example_gallery()]
    assert app_examples == [p.stem for p in studio.generate.examples]  # the default model has none: assets/masks
    gallery, prompt = studio.generate.model_defaults("checkpoints/skin")
    files = sorted((skin / EXAMPLES_FOLDER).glob("*.png"))
    shown = gallery.constructor_args["value"]
    assert [caption for _, caption in shown] == [p.stem for p in files] == ["1-case", "2-case", "3-case"]
    assert all(np.array_equal(image, read_mask(p) * 255) for (image, _), p in zip(shown, files))
    assert prompt.constructor_args["value"] == "a dermoscopy image"
    gallery, prompt = studio.generate.model_defaults("checkpoints/plain")
    assert len(gallery.constructor_args["value"]) == len(app_examples)
    assert prompt.constructor_args["value"] == "another image"
    assert plain.is_dir()
    # a click on the second example of the skin model's gallery: its mask on the canvas
    editor = studio.generate.use_example(None, gr.SelectData(None, {"index": 1, "value": None}), "checkpoints/skin")
    layer = editor["layers"][0]
    expected = read_mask(skin / EXAMPLES_FOLDER / "2-case.png")
    assert (cv2.resize(layer[..., 3], (64, 64), interpolation=cv2.INTER_NEAREST) > 127).mean() == \
        pytest.approx(expected.mean(), abs=0.02)
    with pytest.raises(gr.Error, match="example must be between 0 and 2"):
        studio.generate.use_example(None, gr.SelectData(None, {"index": 5, "value": None}), "checkpoints/skin")
    assert studio.generate.random_mask(None, "checkpoints/skin")["layers"]
    # a model that does not load: its examples fall back, the prompt box is left alone
    gallery, prompt = studio.generate.model_defaults("checkpoints/nowhere")
    assert len(gallery.constructor_args["value"]) == len(app_examples) and prompt == gr.skip()


# -- the Train tab's full build -----------------------------------------------------------------
class FakeBuild:
    """Stands in for siamese.build.build: emits a build's events, holds at `hold` (a stage) until released or
    stopped, and raises BuildStopped when stopped, as the real one does."""

    def __init__(self) -> None:
        self.configs: list[BuildConfig] = []
        self.at_hold, self.release = threading.Event(), threading.Event()

    def __call__(self, config, callback, stop, progress_bar=False):
        self.configs.append(config)
        emit = callback
        for index, stage in ((1, "1-base"), (2, "decoder"), (4, "2-siamese")):
            emit({"type": "stage", "stage": stage, "index": index, "total": 10, "eta_s": 600.0 - 100 * index,
                  "stage_s": 100.0})
            if stage == "decoder":
                continue
            emit({"type": "start", "stage": stage, "step": 0, "max_steps": 1000, "output": config.output + "/x"})
            for step in (5, 10):
                emit({"type": "log", "stage": stage, "step": step, "loss": 1.0 / step, "loss_mask": 0.5, "lr": 1e-4,
                      "it_per_s": 2.0, "eta_s": 1.0, "row": True})
            if stage == "2-siamese":
                self.at_hold.set()
                while not (self.release.is_set() or stop.is_set()):
                    time.sleep(0.01)
                if stop.is_set():
                    emit({"type": "end", "stage": stage, "step": 10, "stopped": True, "output": config.output})
                    raise BuildStopped("stopped in stage 2-siamese: run the same build again to resume")
            emit({"type": "end", "stage": stage, "step": 10, "stopped": False, "output": config.output})
        Path(config.output, "unet").mkdir(parents=True, exist_ok=True)
        Path(config.output, "text_encoder").mkdir(exist_ok=True)
        SiameseConfig(label=config.label).save(Path(config.output))
        emit({"type": "done", "output": config.output})
        return Path(config.output)


def test_the_train_tab_runs_a_full_build_with_its_stage_and_eta(studio, tmp_path, monkeypatch):
    fake = FakeBuild()
    monkeypatch.setattr(training, "build", fake)
    data = write_dataset(tmp_path / "data", n=6)
    text = studio.train.train_start(data_folder="data", kind=KINDS[1], budget_hours=0.5, resolution=64,
                                    batch_size=2, name="skin", label="skin lesions (dermoscopy)")
    # the reply is the job's status at that moment: still starting, or (the fake build is quick) in its first stage
    assert ("full build" in text or "stage 1/10: 1-base" in text) and "6 image-mask pairs" in text
    assert fake.at_hold.wait(30)
    [config] = fake.configs
    assert (config.data, config.budget_hours, config.resolution, config.batch_size, config.label) == \
        (str(data.resolve()), 0.5, 64, 2, "skin lesions (dermoscopy)")
    assert config.output == str(tmp_path / "runs" / "skin")
    status = studio.train.train_status()
    assert status["state"] == "running" and status["stage"]["name"] == "2-siamese"
    assert "stage 4/10: 2-siamese" in status["message"] and str(tmp_path) not in status["message"]
    planned = plan_stages(config)["2-siamese"]
    assert status["max_steps"] == (planned["stop_at"] or planned["max_steps"]) and status["step"] == 10
    # ETA: this stage's steps left at the measured speed, then the later stages as planned (600 - 400 - 100)
    assert status["eta_s"] == pytest.approx(100 + (status["max_steps"] - 10) / 2.0)
    assert "ETA" in status["message"] and "2.00 it/s" in status["message"]
    # the curves run on across the stages: 2-siamese starts where 1-base ended
    assert [(r["stage"], r["step"]) for r in status["losses"]] == [("1-base", 5), ("1-base", 10),
                                                                   ("2-siamese", 15), ("2-siamese", 20)]
    text, frame, *_ = studio.train.train_poll(-1)
    assert "stage 4/10" in text and sorted(set(frame["step"])) == [5, 10, 15, 20]
    fake.release.set()
    studio.job.wait(30)
    status = studio.train.train_status()
    assert status["state"] == "finished" and status["output"] == "runs/app/skin"
    assert "model selector" in status["message"] and "ETA" not in status["message"]
    *_, dropdown, _, timer = studio.train.train_poll(-1)
    assert ("skin lesions (dermoscopy) (trained here)", "runs/app/skin") in dropdown.constructor_args["choices"]
    assert not timer.active
    assert studio.train.use_trained().constructor_args["value"] == "runs/app/skin"


def test_a_stopped_build_resumes_with_the_same_run_name(studio, tmp_path, monkeypatch):
    fake = FakeBuild()
    monkeypatch.setattr(training, "build", fake)
    write_dataset(tmp_path / "data", n=6)
    studio.train.train_start(data_folder="data", kind="full", budget_hours=0.5, resolution=64, name="skin")
    assert fake.at_hold.wait(30)
    assert "Stopping stage 2-siamese" in studio.train.train_stop()
    studio.job.wait(30)
    status = studio.train.train_status()
    assert status["state"] == "stopped" and "stage 4/10: 2-siamese" in status["message"]
    assert "same run name (`skin`)" in status["message"] and status["output"] is None
    # the real build wrote its plan: the same run name resumes it with its own settings (not the form's)
    out = tmp_path / "runs" / "skin"
    first = fake.configs[0]
    (out / BUILD_FOLDER).mkdir(parents=True)
    (out / BUILD_FOLDER / "plan.json").write_text(json.dumps(
        {"config": {k: v for k, v in vars(first).items() if k != "label"}, "stages": plan_stages(first)}))
    fake.at_hold.clear()
    text = studio.train.train_start(data_folder="elsewhere", kind="full", budget_hours=3.0, resolution=256,
                                    name="skin", label="skin lesions")
    # the reply is the job's status at that moment: still resuming, or (the fake build is quick) in a stage
    assert text.startswith("⏳ Resuming the full build") or text.startswith("⏳ Building `runs/app/skin`: stage ")
    assert fake.at_hold.wait(30)
    fake.release.set()
    studio.job.wait(30)
    second = fake.configs[1]
    assert (second.output, second.data, second.budget_hours, second.resolution) == \
        (first.output, first.data, 0.5, 64) and second.label == "skin lesions"
    assert studio.train.train_status()["state"] == "finished"


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "everything"}, "kind of run must be one of"),
    ({"kind": "full", "budget_hours": 0}, "budget hours must be between"),
    ({"kind": "full", "label": "a\nb"}, "label must be null or one line"),
    ({"kind": "full", "resolution": 100}, "resolution must be a multiple of 64"),
    ({"kind": "full", "data_folder": "nowhere"}, "nowhere: no such folder"),
    ({"kind": "full"}, "no dataset"),
])
def test_bad_build_requests_are_one_clear_message(studio, tmp_path, monkeypatch, kwargs, message):
    fake = FakeBuild()
    monkeypatch.setattr(training, "build", fake)
    with pytest.raises(gr.Error, match=message):
        studio.train.train_start(**{"data_folder": None, **kwargs})
    assert not fake.configs and not studio.job.running
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_the_train_tab_builds_a_complete_model_that_the_selector_offers(studio, tmp_path):
    """A real full build from the Train tab's job on a tiny dataset (the sizes of tests/test_build.py): stopped in the
    Siamese stage and resumed with the same settings, every stage runs; the folder is a model with its card, label,
    examples and recommended settings, listed in the model selector, and it samples."""
    data = write_dataset(tmp_path / "data", n=12, size=80)
    config = BuildConfig(data=str(data), output=str(tmp_path / "runs" / "tiny-build"), budget_hours=0.0001,
                         resolution=64, batch_size=2, sweep_masks=4, eval_seeds=1, eval_seg_steps=50,
                         label="test lesions (synthetic)")
    job = studio.job
    job.start_build(config)
    deadline = time.time() + 300
    while not (job.snapshot()["stage"] or {}).get("name") == "2-siamese" or not job.snapshot()["rows"] or \
            job.snapshot()["rows"][-1]["stage"] != "2-siamese":
        assert job.running and time.time() < deadline, job.snapshot()["message"]
        time.sleep(0.05)
    assert job.stop()
    job.wait(120)
    status = studio.train.train_status()
    assert status["state"] == "stopped" and "2-siamese" in status["message"], status
    assert not (Path(config.output) / "unet").exists()
    job.start_build(config, resumed=True)
    seen = set()
    while job.running:
        assert time.time() < deadline, job.snapshot()["message"]
        seen.add((job.snapshot()["stage"] or {}).get("name"))
        time.sleep(0.05)
    status = studio.train.train_status()
    assert status["state"] == "finished", status["message"]
    assert {"2-siamese", "3-biased", "4-locked"} <= seen and "1-base" not in seen  # resumed, not begun again
    assert {r["stage"] for r in status["losses"]} >= {"2-siamese", "3-biased", "4-locked"}
    out = Path(config.output)
    assert (out / "README.md").is_file() and (out / "evaluation.json").is_file()
    assert len(list((out / EXAMPLES_FOLDER).glob("*.png"))) >= 1
    choices = studio.catalog.choices()
    assert ("test lesions (synthetic) (trained here)", "runs/app/tiny-build") in choices
    text, *_ = studio.selector.model_info("runs/app/tiny-build")
    assert "64×64" in text
    gallery, prompt = studio.generate.model_defaults("runs/app/tiny-build")
    assert [caption for _, caption in gallery.constructor_args["value"]] == \
        [p.stem for p in sorted((out / EXAMPLES_FOLDER).glob("*.png"))]
    assert prompt.constructor_args["value"] == load_model(out).config.prompt
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:40] = 255
    gallery, _, line = studio.generate.generate(mask, num_images=1, steps=2, seed=0, model="runs/app/tiny-build")
    assert len(gallery) == 1 and "1 images" in line


def test_the_overlay_checkbox_sets_both_kinds_of_run(studio, tmp_path, monkeypatch):
    """On by default (TrainConfig.overlay "auto"); unticked, a quick run and a full build train with overlay "off"."""
    fake, quick = FakeBuild(), []
    fake.release.set()
    monkeypatch.setattr(training, "build", fake)
    monkeypatch.setattr(studio.job, "start", lambda config, tmp=None, prepare=None: quick.append(config))
    write_dataset(tmp_path / "data", n=6)
    studio.train.train_start(data_folder="data")
    studio.train.train_start(data_folder="data", overlays_out=False)
    assert [c.overlay for c in quick] == ["auto", "off"]
    studio.train.train_start(data_folder="data", kind="full", resolution=64, name="a", overlays_out=False)
    studio.job.wait(30)
    assert fake.configs[-1].overlay == "off"
    with pytest.raises(gr.Error, match="leave overlays out must be true or false"):
        studio.train.train_start(data_folder="data", overlays_out="yes")


def test_train_start_takes_the_kind_budget_and_label_last(tiny_model_dir, tmp_path):
    """/train_start's new parameters come last: positional callers of the quick run are unchanged."""
    import app

    demo = app.build_demo(str(tiny_model_dir), runs_dir=tmp_path / "runs", checkpoints_dir=tmp_path)
    params = demo.get_api_info()["named_endpoints"]["/train_start"]["parameters"]
    names = [p["parameter_name"] for p in params]
    assert names[-5:] == ["base_steps", "kind", "budget_hours", "label", "overlays_out"]
    assert {p["parameter_name"]: p["parameter_default"] for p in params}["kind"] == KINDS[0]

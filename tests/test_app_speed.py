"""The Speed choice of Generate and Batch (issue 27): Default / Fast preview set the steps, scheduler, guidance,
feature reuse and precision from the selected model's presets, and the handlers pass the speed settings to the
library. Handlers called directly (no server), on the tiny model of conftest.py with recorded presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

import siamese.sampling
from studio.server import Studio
from studio.settings import Settings
from studio.tabs import sampling

PRESETS = {"default": {"scheduler": "unipc", "steps": 2, "guidance_scale": 4.0, "cache_interval": 1,
                       "precision": "float32"},
           "fast": {"scheduler": "ddim", "steps": 1, "guidance_scale": 3.0, "cache_interval": 2,
                    "precision": "bfloat16"}}


@pytest.fixture(scope="module")
def preset_dir(tiny_model_dir, tmp_path_factory) -> Path:
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("models") / "speedy")
    config = json.loads((folder / "siamese_config.json").read_text())
    (folder / "siamese_config.json").write_text(json.dumps({**config, "sampling_presets": PRESETS}))
    return folder


@pytest.fixture()
def studio(preset_dir, tmp_path) -> Studio:
    return Studio(str(preset_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                  settings=Settings(data_root=tmp_path))


@pytest.fixture()
def calls(monkeypatch) -> list[tuple]:
    """(steps, scheduler, cache_interval, precision) of each `sample` call; it still samples."""
    seen, real = [], siamese.sampling.sample

    def spy(*args):
        seen.append((args[4], args[6], args[12], args[13]))
        return real(*args)

    monkeypatch.setattr(siamese.sampling, "sample", spy)
    return seen


def _mask() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (30, 28), 12, 255, -1)
    return mask


def _values(updates) -> list:
    return [u.value for u in updates]


def test_the_speed_choice_sets_the_models_preset(studio, tiny_model):
    model = studio.catalog.default_id
    for speed in ("default", "fast"):
        expected = [PRESETS[speed][k] for k in ("steps", "scheduler", "guidance_scale", "cache_interval", "precision")]
        assert _values(studio.generate.speed_preset(model, speed)) == expected
        assert _values(studio.batch.batch_speed(model, speed)) == expected
    # a model without recorded presets gets the fallback ones; a model that does not load leaves them alone
    assert _values(sampling.speed_values(tiny_model, "default")) == [16, "dpm++", 9.0, 1, "float32"]
    assert studio.generate.speed_preset("/no/such/model", "fast") == (gr.skip(),) * 5
    assert studio.batch.batch_speed(model, "turbo") == (gr.skip(),) * 5


def test_generate_passes_the_speed_settings_to_the_sampler(studio, calls):
    fast = PRESETS["fast"]
    _, shots, status = studio.generate.generate(_mask(), "", 1, fast["steps"], fast["guidance_scale"], 3,
                                                fast["scheduler"], None, False, [], cache_interval=2,
                                                precision="bfloat16")
    assert calls == [(1, "ddim", 2, "bfloat16")]
    assert shots[0].item.params["cache_interval"] == 2 and shots[0].item.params["precision"] == "bfloat16"
    assert "features reused over 2 steps · bfloat16" in status
    studio.generate.generate(_mask(), "", 1, 2, 3.0, 3, "ddim", None, False, [])  # an API call without them
    assert calls[-1] == (2, "ddim", 1, "float32")


@pytest.mark.parametrize("kwargs, message", [
    (dict(cache_interval=0), "cache interval must be between 1 and 8"),
    (dict(cache_interval=1.5), "cache interval must be a whole number"),
    (dict(precision="float16"), "precision must be one of float32, bfloat16, got 'float16'"),
])
def test_bad_speed_settings_are_one_clear_error(studio, calls, kwargs, message):
    with pytest.raises(gr.Error, match=message):
        studio.generate.generate(_mask(), "", 1, 2, 3.0, 0, "ddim", None, False, [], **kwargs)
    with pytest.raises(gr.Error, match=message):
        studio.batch.batch_start(data_folder="data", num_images=1, steps=2, scheduler="ddim", **kwargs)
    assert calls == []


def test_the_page_starts_at_the_default_models_default_preset(preset_dir, tmp_path):
    import app

    demo = app.build_demo(str(preset_dir), runs_dir=tmp_path / "runs", checkpoints_dir=tmp_path)
    api = demo.get_api_info()["named_endpoints"]
    params = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert params[11:14] == ["autoguidance", "cache_interval", "precision"]  # appended: positional callers unchanged
    defaults = {p["parameter_name"]: p["parameter_default"] for p in api["/generate"]["parameters"]}
    assert (defaults["steps"], defaults["scheduler"], defaults["guidance_scale"], defaults["cache_interval"],
            defaults["precision"]) == (2, "unipc", 4.0, 1, "float32")
    batch = {p["parameter_name"]: p["parameter_default"] for p in api["/batch_start"]["parameters"]}
    assert (batch["steps"], batch["scheduler"], batch["cache_interval"]) == (2, "unipc", 1)

"""What a visitor may reach: the stable API `build_demo` exposes, only the models the server offers (hub ids when
allowed), and messages without server paths."""

from __future__ import annotations

import json
import shutil

import gradio as gr
import pytest

import app
from conftest import write_dataset
from siamese import ModelLoadError
from studio.catalog import ModelCatalog, ModelNotOffered
from studio.settings import Settings
from studio.tabs.train import BASE_MODELS
from studio.server import Studio
from test_app import editor, layer_with_disk


def test_build_demo_exposes_the_stable_api(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((model_dir / "siamese_config.json").read_text())
    (model_dir / "siamese_config.json").write_text(json.dumps({**config, "control_scale": 2.5, "control_end": 0.6}))
    demo = app.build_demo(str(model_dir), runs_dir=tmp_path / "runs", checkpoints_dir=tmp_path)
    api = demo.get_api_info()["named_endpoints"]
    params = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert params[:7] == ["mask", "prompt", "num_images", "steps", "guidance_scale", "seed", "scheduler"]
    assert {"/export", "/keep_all", "/train_start", "/train_stop", "/train_status"} <= set(api)
    defaults = {p["parameter_name"]: p["parameter_default"] for p in api["/generate"]["parameters"]}
    assert defaults["scheduler"] == "dpm++" and defaults["steps"] == 16 and defaults["guidance_scale"] == 9.0
    assert defaults["num_images"] == 4 and defaults["control_scale"] == 2.5  # the model's recommendation
    assert defaults["control_end"] == 0.6
    assert params[11] == "autoguidance" and defaults["autoguidance"] == 1.0  # after the older ones: positional
    assert params[12:14] == ["cache_interval", "precision"]  # callers unchanged (speed settings: tests/test_app_speed.py)
    # painting into a frame (issue 24): appended last, so positional callers are unchanged
    assert params[14:] == ["frame", "frame_mask", "paint_into_frame", "margin", "clear_frame_lesions"]
    assert defaults["frame"] is None and defaults["paint_into_frame"] is True and defaults["margin"] == 12
    assert defaults["model"] == "checkpoints/model" and str(tmp_path) not in json.dumps(api)  # ids, no paths
    timers = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
    assert timers and not any(t.active for t in timers), "an idle page must not poll the server"


def test_only_models_the_server_offers_load(studio, tiny_model_dir, tmp_path):
    """/generate and the Train tab load the default model, checkpoints/, runs/app/ and the models root only;
    anything else is refused with one message, whether it exists or not, that shows no server path."""
    mask = studio.generate.prepare(editor([layer_with_disk()]), 0, False)[0]
    outside = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "model")  # a real model, not offered

    def refusal(value) -> str:
        with pytest.raises(gr.Error, match="not a model this server offers") as info:
            studio.generate.generate(mask, "", 1, 1, 3.0, 0, "ddim", value, False, [])
        assert str(tmp_path) not in str(info.value) and "hub ids are not allowed" in str(info.value)
        return str(info.value)

    there, absent = refusal(str(outside)), refusal(str(tmp_path / "nowhere" / "model"))
    assert there.replace("elsewhere", "X") == absent.replace("nowhere", "X"), "no hint whether the folder exists"
    for value in ("/etc", "../elsewhere/model", "runs/app/../elsewhere/model", "someone/model", "runs/app/x/../.."):
        refusal(value)
    write_dataset(tmp_path / "data")
    with pytest.raises(gr.Error, match="not a model this server offers"):  # the Train tab's "current model"
        studio.train.train_start(data_folder="data", base_model=BASE_MODELS[1], model=str(outside))
    with pytest.raises(gr.Error, match="not a model this server offers"):  # ...and its base model folder
        studio.train.train_start(data_folder="data", base_model=BASE_MODELS[2], base_path=str(outside))
    assert not studio.job.running

    run = shutil.copytree(tiny_model_dir, tmp_path / "runs" / "b")  # a run trained here: offered
    for value in ("runs/app/b", str(run), "tiny", str(tiny_model_dir), None):
        assert len(studio.generate.generate(mask, "", 1, 1, 3.0, 0, "ddim", value, False, [])[1]) == 1, value
    root = tmp_path / "models-root"
    shutil.copytree(tiny_model_dir, root / "sd" / "m")
    with_root = Studio(str(tiny_model_dir), tmp_path / "checkpoints", tmp_path / "runs",
                       settings=Settings(data_root=tmp_path, models_root=root))
    assert with_root.models.get("models/sd/m").source == "models/sd/m"
    assert with_root.models.get(str(root / "sd" / "m")).source == "models/sd/m"
    with pytest.raises(ModelLoadError, match="No model folder at 'models/sd/none'"):  # a missing one: no paths
        with_root.models.get("models/sd/none")


def test_hub_ids_only_when_allowed_and_never_a_server_folder(tiny_model_dir, tmp_path, monkeypatch):
    catalog = ModelCatalog(str(tiny_model_dir), tmp_path / "c", tmp_path / "r")
    with pytest.raises(ModelNotOffered, match="hub ids are not allowed"):
        catalog.resolve("someone/model")
    allowed = ModelCatalog(str(tiny_model_dir), tmp_path / "c", tmp_path / "r", allow_hub=True)
    assert allowed.resolve("someone/model").hub and allowed.resolve("someone/model").public == "someone/model"
    assert ModelCatalog("owner/default", tmp_path / "c", tmp_path / "r").resolve("owner/default").hub  # the default
    # a hub id that is also a relative server folder is fetched from the hub (here: offline, not cached)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "someone" / "model")
    studio = Studio(str(tiny_model_dir), tmp_path / "c", tmp_path / "r",
                    settings=Settings(data_root=tmp_path, allow_hub=True))
    with pytest.raises(ModelLoadError, match="not in the server's cache"):
        studio.models.get("someone/model")


def test_server_paths_are_redacted_from_messages(studio, tmp_path):
    redact = studio.redact
    assert redact(f"{tmp_path}/runs/x: failed") == "runs/app/x: failed"
    assert redact(f"{tmp_path}/data/a.png: not a readable image") == "data/a.png: not a readable image"
    assert redact("Error no file named model.safetensors in /root/.cache/hub/x/unet.") == \
        "Error no file named model.safetensors in …/unet."
    assert redact("see https://huggingface.co/a/b and images/X.jpg / masks/X.png") == \
        "see https://huggingface.co/a/b and images/X.jpg / masks/X.png"

"""Sampling presets (issue 27): a model's "default" and "fast" settings, recorded in its siamese_config.json, reach
the sampler through `preset_params` and `python -m siamese sample --preset`; explicit options override them; bad
values are one line and exit 2 before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import siamese.sampling
from siamese.cli import main
from siamese.model import load_model
from siamese.model_config import SiameseConfig
from siamese.presets import (FALLBACK_PRESETS, PRESET_KEYS, PRESET_NAMES, config_presets, model_presets,
                             preset_params, presets_problem)

ROOT = Path(__file__).resolve().parents[1]
RECORDED = {"default": {"scheduler": "unipc", "steps": 2, "guidance_scale": 4.0, "cache_interval": 2,
                        "precision": "float32"},
            "fast": {"scheduler": "ddim", "steps": 1, "cache_interval": 3, "precision": "bfloat16"}}


@pytest.fixture(scope="module")
def preset_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with recorded presets (the fast one leaves guidance to the fallback)."""
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("models") / "presets")
    config = json.loads((folder / "siamese_config.json").read_text())
    (folder / "siamese_config.json").write_text(json.dumps({**config, "sampling_presets": RECORDED}))
    return folder


@pytest.fixture()
def calls(monkeypatch) -> list[dict]:
    """What `sample` was called with (its keyword settings), each call; it still samples."""
    seen, real = [], siamese.sampling.sample

    def spy(model, mask_hint, prompts, generators, steps, guidance_scale, scheduler, eta, callback, control_scale,
            control_end, autoguidance, cache_interval, precision):
        seen.append(dict(steps=steps, guidance_scale=guidance_scale, scheduler=scheduler,
                         cache_interval=cache_interval, precision=precision))
        return real(model, mask_hint, prompts, generators, steps, guidance_scale, scheduler, eta, callback,
                    control_scale, control_end, autoguidance, cache_interval, precision)

    monkeypatch.setattr(siamese.sampling, "sample", spy)
    return seen


def test_model_presets_are_recorded_over_the_fallback(preset_model_dir, tiny_model):
    model = load_model(preset_model_dir)
    presets = model_presets(model)
    assert presets["default"] == RECORDED["default"]
    assert presets["fast"] == {**RECORDED["fast"], "guidance_scale": FALLBACK_PRESETS["fast"]["guidance_scale"]}
    assert model_presets(tiny_model) == FALLBACK_PRESETS  # a folder without presets: the fallback
    params = preset_params(model, "fast", steps=5)
    assert (params.steps, params.scheduler, params.cache_interval, params.precision) == (5, "ddim", 3, "bfloat16")
    with pytest.raises(ValueError, match="preset must be one of default, fast, got 'turbo'"):
        preset_params(model, "turbo")


@pytest.mark.parametrize("value, message", [
    ({"quick": {}}, "keys are preset names"),
    ({"fast": {"eta": 0.5}}, "each an object of some of"),
    ({"fast": {"steps": 2.5}}, "whole number of steps"),
    ({"fast": {"cache_interval": 0}}, "cache interval must be a whole number"),
    ({"default": {"precision": "float16"}}, "precision must be one of"),
])
def test_bad_recorded_presets_are_named(value, message):
    assert message in presets_problem(value)


def test_sample_uses_the_models_default_preset(preset_model_dir, dataset, tmp_path, calls):
    out = tmp_path / "out"
    assert main(["sample", "--model", str(preset_model_dir), "--masks", str(dataset / "masks" / "case00.png"),
                 "--seed", "0", "--output", str(out)]) == 0
    assert calls == [RECORDED["default"]]
    meta = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    assert (meta["steps"], meta["scheduler"], meta["cache_interval"], meta["precision"]) == (2, "unipc", 2, "float32")


def test_sample_preset_fast_with_explicit_overrides(preset_model_dir, dataset, tmp_path, calls):
    mask = str(dataset / "masks" / "case00.png")
    assert main(["sample", "--model", str(preset_model_dir), "--masks", mask, "--seed", "0", "--preset", "fast",
                 "--output", str(tmp_path / "fast")]) == 0
    assert calls[-1] == {**RECORDED["fast"], "guidance_scale": FALLBACK_PRESETS["fast"]["guidance_scale"]}
    assert main(["sample", "--model", str(preset_model_dir), "--masks", mask, "--seed", "0", "--preset", "fast",
                 "--steps", "2", "--scheduler", "dpm++", "--guidance", "3", "--cache-interval", "1", "--precision",
                 "float32", "--output", str(tmp_path / "over")]) == 0
    assert calls[-1] == dict(steps=2, guidance_scale=3.0, scheduler="dpm++", cache_interval=1, precision="float32")


@pytest.mark.parametrize("args, message", [
    (["--cache-interval", "0"], "error: cache interval must be a whole number of steps from 1 (off) to 8, got 0"),
    (["--cache-interval", "9"], "error: cache interval must be a whole number of steps from 1 (off) to 8, got 9"),
    (["--preset", "fast", "--steps", "0"], "error: steps must be between 1 and 1000, got 0"),
])
def test_bad_speed_values_exit_2_with_one_line_before_anything(args, message, preset_model_dir, dataset, tmp_path,
                                                               capsys, calls):
    out = tmp_path / "out"
    code = main(["sample", "--model", str(preset_model_dir), "--masks", str(dataset / "masks"), "--output", str(out),
                 *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [message] and not out.exists() and calls == []


@pytest.mark.parametrize("args, message", [
    (["--preset", "turbo"], "argument --preset: invalid choice: 'turbo'"),
    (["--precision", "float16"], "argument --precision: invalid choice: 'float16'"),
    (["--cache-interval", "two"], "argument --cache-interval: invalid int value: 'two'"),
])
def test_bad_preset_options_exit_2_with_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--masks", "m.png", "--output", str(tmp_path / "o"), *args])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and last.startswith("error: " + message)


def test_the_bundled_model_records_both_presets():
    folder = ROOT / "checkpoints" / "siamese-kvasir-tiny"
    recorded = json.loads((folder / "siamese_config.json").read_text())["sampling_presets"]
    assert set(recorded) == set(PRESET_NAMES) and all(set(p) <= set(PRESET_KEYS) for p in recorded.values())
    assert presets_problem(recorded) is None
    presets = config_presets(SiameseConfig.load(folder))
    assert presets["fast"]["steps"] < presets["default"]["steps"]  # a preview: fewer steps than the default

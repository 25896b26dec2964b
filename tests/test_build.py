"""`python -m siamese build`: the plan follows the recipe and the budget, bad settings are refused before anything
is written, and a build killed in the middle of a training stage resumes to the same model as one never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from safetensors.numpy import load_file

from siamese import load_model
import siamese.sweep
from siamese.build import REFERENCE_HOURS, BuildConfig, BuildStopped, begun_build, build, plan_stages, \
    planned_stages, step_seconds
from siamese.cli import main
from siamese.data import PairDataset, mask_to_hint
from siamese.fidelity import load_scorer
from siamese.image_metrics import kid, standardiser
from siamese.sampling import SamplingParams, generate, sample
from siamese.sweep import Candidate, choose, choose_speed, measure_candidates, target_distance

from conftest import write_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--budget-hours", "0.0001", "--resolution", "64", "--batch-size", "2", "--sweep-masks", "4",
        "--eval-seeds", "1", "--eval-seg-steps", "50"]


def test_the_full_budget_plans_the_polyp_recipe():
    """At REFERENCE_HOURS, 256 px and batch 8 the plan is checkpoints/siamese-kvasir-tiny/recipe.sh's stages."""
    plan = plan_stages(BuildConfig(data="d", output="o", budget_hours=REFERENCE_HOURS))
    assert (plan["1-base"]["max_steps"], plan["1-base"]["stop_at"], plan["1-base"]["lr"]) == (3600, 0, 3e-4)
    assert (plan["2-siamese"]["max_steps"], plan["2-siamese"]["stop_at"]) == (2000, 0)
    assert (plan["3-biased"]["max_steps"], plan["3-biased"]["stop_at"]) == (1000, 700)
    assert (plan["4-locked"]["max_steps"], plan["4-locked"]["stop_at"]) == (2000, 1200)
    assert plan["4-locked"]["unlock_decoder"] is False and plan["3-biased"]["timestep_bias"] == "later"
    assert plan["decoder"]["steps"] == 4000 and plan["scorer"]["steps"] == 2000


@pytest.mark.slow
def test_a_build_stopped_in_the_sweep_keeps_the_measured_settings(one_thread, tmp_path, monkeypatch):
    """Stopped while the sweep measures its first setting: BuildStopped after that setting, which is saved
    (build/sweep-rows.json); the same build then measures only the others and ships the 13 rows. Stopped in the
    evaluation, it stops there (not after the stage) without a report, and the next run evaluates."""
    data = write_dataset(tmp_path / "data", n=12, size=80)
    config = BuildConfig(data=str(data), output=str(tmp_path / "model"), budget_hours=0.0001, resolution=64,
                         batch_size=2, sweep_masks=4, eval_seeds=1, eval_seg_steps=20)
    stop = threading.Event()
    with pytest.raises(BuildStopped, match="settings sweep"):
        build(config, lambda e: stop.set() if e["type"] == "sweep" else None, stop)
    saved = json.loads((tmp_path / "model" / "build" / "sweep-rows.json").read_text())
    assert len(saved) == 1 and saved[0]["control_scale"] == 1.5  # the grid's first setting
    calls = []
    real = siamese.sweep.measure_candidates
    monkeypatch.setattr(siamese.sweep, "measure_candidates", lambda *a, **k: calls.append(1) or real(*a, **k))
    stop.clear()
    with pytest.raises(BuildStopped, match="stage evaluate"):
        build(config, lambda e: stop.set() if e["type"] == "stage" and e["stage"] == "evaluate" else None, stop)
    rows = json.loads((tmp_path / "model" / "build.json").read_text())["sweep"]["rows"]
    assert len(rows) == 13 and rows[0] == saved[0] and len(calls) == 12
    assert "evaluate" not in json.loads((tmp_path / "model" / "build" / "done.json").read_text())
    assert not (tmp_path / "model" / "evaluation.json").exists()
    build(config)
    assert json.loads((tmp_path / "model" / "evaluation.json").read_text())["pairs"]["generated_test"] > 0


def test_the_budget_scales_every_stage_in_proportion():
    half = plan_stages(BuildConfig(data="d", output="o", budget_hours=REFERENCE_HOURS / 2))
    assert half["1-base"]["max_steps"] == 1800 and half["3-biased"]["stop_at"] == 350
    assert half["decoder"]["steps"] == 2000


def _planned_seconds(plan: dict, resolution: int, batch_size: int) -> float:
    training = sum((s["stop_at"] or s["max_steps"]) * step_seconds(s["objective"], resolution, batch_size)
                   for s in plan.values() if "objective" in s)
    return (training + plan["decoder"]["steps"] * step_seconds("decoder", resolution, batch_size)
            + plan["scorer"]["steps"] * step_seconds("scorer", resolution, batch_size))


@pytest.mark.parametrize("resolution, batch_size", [(128, 8), (256, 8), (512, 4), (384, 16), (64, 2)])
def test_a_budget_plans_steps_that_take_about_that_long(resolution, batch_size):
    """Whatever the resolution and batch, the planned steps add up to the budget on 2 idle cores (each step's
    measured cost scaled to its size); a larger image gets fewer steps, and the decoder and the scorer, which train
    at their own sizes, do not cost more per step at 512 px."""
    config = BuildConfig(data="d", output="o", budget_hours=1.0, resolution=resolution, batch_size=batch_size)
    assert _planned_seconds(plan_stages(config), resolution, batch_size) == pytest.approx(3600, rel=0.01)
    assert step_seconds("base", 512) > step_seconds("base", 256) > step_seconds("base", 128) > 0
    assert step_seconds("decoder", 512) == step_seconds("decoder", 256) > step_seconds("decoder", 64)
    assert step_seconds("siamese", 256, 16) > step_seconds("siamese", 256, 8)
    with pytest.raises(ValueError, match="kind of step must be one of base, siamese, decoder, scorer, got 'vae'"):
        step_seconds("vae")
    smaller = plan_stages(BuildConfig(data="d", output="o", budget_hours=1.0, resolution=128))
    bigger = plan_stages(BuildConfig(data="d", output="o", budget_hours=1.0, resolution=512))
    assert smaller["1-base"]["max_steps"] > plan_stages(BuildConfig(data="d", output="o", budget_hours=1.0))[
        "1-base"]["max_steps"] > bigger["1-base"]["max_steps"]


def test_a_build_resumes_with_the_steps_planned_at_its_first_run(dataset, tmp_path):
    """A build begun by a version that planned other steps for the same settings keeps its own: planned_stages
    (what the build and the Train tab run) reads them from OUTPUT/build/plan.json."""
    config = BuildConfig(data=str(dataset), output=str(tmp_path / "model"), budget_hours=1.0)
    assert planned_stages(config) == plan_stages(config)  # nothing begun
    stages = plan_stages(config)
    stages["1-base"]["max_steps"] += 7
    (tmp_path / "model" / "build").mkdir(parents=True)
    (tmp_path / "model" / "build" / "plan.json").write_text(
        json.dumps({"config": {k: v for k, v in vars(config).items() if k != "label"}, "stages": stages}))
    assert planned_stages(config) == stages
    with pytest.raises(ValueError, match="begun with other settings"):
        planned_stages(BuildConfig(**{**vars(config), "budget_hours": 2.0}))


@pytest.mark.parametrize("change, message", [
    ({"budget_hours": 0}, "budget hours"), ({"holdout": 0.0}, "holdout"), ({"resolution": 100}, "resolution"),
    ({"sweep_masks": 2}, "sweep masks"), ({"sweep_seeds": 0}, "sweep seeds"), ({"eval_seeds": -1}, "eval seeds"),
    ({"batch_size": 0}, "batch size"),
])
def test_bad_settings_are_refused_before_anything_is_written(dataset, tmp_path, change, message):
    out = tmp_path / "model"
    with pytest.raises(ValueError, match=message):
        build(BuildConfig(data=str(dataset), output=str(out), **change))
    assert not out.exists()


def test_a_second_build_into_the_same_folder_is_refused_while_one_runs(dataset, tmp_path, capsys):
    """Two builds writing one folder would mix their stages: the running one holds OUTPUT/build/lock."""
    out = tmp_path / "model"
    (out / "build").mkdir(parents=True)
    with FileLock(out / "build" / "lock"):  # as a running build holds it (another process's flock alike)
        assert main(["build", "--data", str(dataset), "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: another build is running in") and "another output folder" in err
    assert not (out / "build" / "plan.json").exists()


def test_cli_refuses_a_build_resumed_with_other_settings(dataset, tmp_path, capsys):
    out = tmp_path / "model"
    (out / "build").mkdir(parents=True)
    config = BuildConfig(data=str(dataset), output=str(out), budget_hours=1.0)
    (out / "build" / "plan.json").write_text(json.dumps({"config": vars(config), "stages": plan_stages(config)}))
    assert main(["build", "--data", str(dataset), "--output", str(out), "--budget-hours", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "budget_hours 1.0, now 2.0" in err and "same settings" in err


def test_a_build_begun_before_the_overlay_setting_resumes_as_it_ran(dataset, tmp_path):
    """A plan.json without `overlay` and `sweep_seeds` (written before the settings existed) ran without overlay
    detection and with one sweep image per mask: it resumes so, and a run asking for auto is told the settings
    differ."""
    out = tmp_path / "model"
    (out / "build").mkdir(parents=True)
    config = BuildConfig(data=str(dataset), output=str(out), budget_hours=1.0, overlay="off", sweep_seeds=1)
    old = {k: v for k, v in vars(config).items() if k not in ("overlay", "label", "sweep_seeds")}
    (out / "build" / "plan.json").write_text(json.dumps({"config": old, "stages": plan_stages(config)}))
    assert begun_build(out) == config  # what the Train tab resumes with
    with pytest.raises(ValueError, match=r"other settings \(begun with overlay 'off', now 'auto'\)"):
        build(BuildConfig(**{**vars(config), "overlay": "auto"}))


def test_choose_takes_the_faithful_setting_nearest_the_realism_targets():
    rows = [{"fidelity": 0.50, "kid": 1.0, "feature_kid": 0.1}, {"fidelity": 0.80, "kid": 5.0, "feature_kid": 0.5},
            {"fidelity": 0.78, "kid": 3.0, "feature_kid": 0.5}, {"fidelity": 0.60, "kid": 2.0, "feature_kid": 0.1}]
    assert choose(rows, ceiling=0.8)["kid"] == 3.0  # 0.78 >= 0.95 x 0.8; the 0.5 and 0.6 rows are not faithful
    assert choose(rows, ceiling=None)["kid"] == 3.0  # within 0.02 of the best
    assert choose(rows, ceiling=0.99)["kid"] == 3.0  # none reaches the ceiling's share: within 0.02 of the best
    # faithful on the lower end: 0.78 - 0.03 < 0.95 x 0.8, so only the 0.80 row (its standard error 0.01) is left
    rows[2]["fidelity_se"], rows[1]["fidelity_se"] = 0.03, 0.01
    assert choose(rows, ceiling=0.8)["kid"] == 5.0
    # the feature KID counts against its own target (1): 1.7 / 1 is further than 4 / 5, whatever the colour KID
    rows = [{"fidelity": 0.9, "kid": 1.6, "feature_kid": 1.7}, {"fidelity": 0.9, "kid": 4.0, "feature_kid": 0.9}]
    assert choose(rows, ceiling=0.9)["kid"] == 4.0
    assert target_distance(rows[0]) == pytest.approx(1.7) and target_distance(rows[1]) == pytest.approx(0.9)


def test_the_default_preset_is_the_fewest_steps_that_keep_the_chosen_quality():
    chosen = {"steps": 16, "fidelity": 0.80, "fidelity_se": 0.01, "kid": 2.0, "kid_std": 0.2, "feature_kid": 0.5,
              "feature_kid_std": 0.1}
    speed = [{"steps": 4, "fidelity": 0.70, "kid": 2.0, "feature_kid": 0.5},  # not faithful
             {"steps": 6, "fidelity": 0.80, "kid": 2.0, "feature_kid": 0.65},  # feature KID beyond the chosen's noise
             {"steps": 8, "fidelity": 0.79, "fidelity_se": 0.01, "kid": 2.1, "feature_kid": 0.55}]
    assert choose_speed(speed, 0.8, chosen)["steps"] == 8
    assert choose_speed(speed[:2], 0.8, chosen) is chosen  # none keeps it: the sweep's own sampler
    # a noisier reference lets 0.65 pass; one short of the ceiling's share: within 0.02 of its fidelity (0.70 is not)
    assert choose_speed(speed, 0.8, {**chosen, "feature_kid_std": 0.2})["steps"] == 6
    assert choose_speed(speed, 0.8, {**chosen, "fidelity": 0.75, "feature_kid_std": 0.2})["steps"] == 6
    assert choose_speed(speed, None, {**chosen, "fidelity": 0.71})["steps"] == 4  # no ceiling: within 0.02


def test_the_sweep_measures_fidelity_and_both_kids_as_evaluate_does(scored_model_dir, tmp_path):
    """One row per candidate; its KIDs are those of `kid` on standardised statistics and scorer features."""
    model, scorer = load_model(scored_model_dir), load_scorer(scored_model_dir)
    data = write_dataset(tmp_path / "d", n=8, size=64, seed=3)
    pairs = PairDataset(data, 64)
    masks, real, train = pairs.masks[:4], pairs.images[:4], pairs.images[4:]
    rows = measure_candidates(model, scorer, masks, real, train, [Candidate(1.0, 1.0, 3.0), Candidate(2.0, 1.0, 3.0)],
                              steps=2, batch_size=3)
    assert [r["control_scale"] for r in rows] == [1.0, 2.0] and all(0 <= r["fidelity"] <= 1 for r in rows)
    features = scorer.features(np.concatenate([real, train]))
    assert features.shape[0] == 8 and np.isfinite(features).all()
    mu, sd = standardiser(scorer.features(train))
    hints = torch.stack([mask_to_hint(m) for m in masks])
    out = sample(model, hints, [model.config.prompt] * 4, [torch.Generator().manual_seed(i) for i in range(4)], 2,
                 3.0, "dpm++", control_scale=1.0)
    images = (out.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    expected = kid((scorer.features(images) - mu) / sd, (scorer.features(real) - mu) / sd, subsets=100, subset_size=4)
    assert rows[0]["feature_kid"] == pytest.approx(round(expected[0], 4), abs=1e-4)
    assert rows[0]["feature_kid"] != rows[1]["feature_kid"] and "kid_std" in rows[0]
    # two images a mask: twice the images (seeds 0-7), fidelity and its standard error over the 4 masks
    counted = []
    two = measure_candidates(model, scorer, masks, real, train, [Candidate(1.0, 1.0, 3.0)], steps=2, batch_size=3,
                             images_per_mask=2, callback=lambda done, total: counted.append((done, total)))
    assert counted[-1] == (8, 8) and 0 < two[0]["fidelity_se"] < 1
    second = sample(model, hints, [model.config.prompt] * 4, [torch.Generator().manual_seed(4 + i) for i in range(4)],
                    2, 3.0, "dpm++", control_scale=1.0)
    both = np.concatenate([images, (second.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)])
    dice = scorer.score(both, np.concatenate([masks, masks])).reshape(2, 4).mean(0)
    assert two[0]["fidelity"] == pytest.approx(round(float(dice.mean()), 4), abs=1e-4)
    assert two[0]["fidelity_se"] == pytest.approx(round(float(dice.std(ddof=1) / 2), 4), abs=1e-4)


def _build(data: Path, out: Path, kill_at: str | None = None) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "siamese", "build", "--data", str(data), "--output", str(out), *TINY]
    if kill_at is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not (out / "build" / kill_at).exists():
        assert proc.poll() is None and time.time() < deadline, "the build ended before the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def _weights(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.rglob("*.safetensors")):
        if "build" not in path.relative_to(folder).parts:
            out.update({f"{path.relative_to(folder)}:{k}": v for k, v in load_file(str(path)).items()})
    return out


@pytest.mark.slow
def test_a_build_killed_in_a_stage_resumes_to_the_same_model(tmp_path):
    """Every stage on a tiny dataset, once straight through and once killed by SIGKILL inside the Siamese stage (after
    its first checkpoint) and run again: the same weights, sweep and recommended settings; the folder is complete."""
    data = write_dataset(tmp_path / "data", n=12, size=80)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _build(data, whole)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage 10/10: evaluate" in done.stderr and f"model built in {whole}" in done.stdout
    assert "settings sweep: 100%" in done.stderr  # one bar over both rounds of the sweep
    _build(data, killed, kill_at="2-siamese/checkpoints/step-0000005")
    assert not (killed / "build.json").exists()
    again = _build(data, killed)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stage 1/10" not in again.stderr  # finished stages are skipped

    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys() and any("decoder" in k for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    record_a, record_b = (json.loads((f / "build.json").read_text()) for f in (whole, killed))
    assert record_a["sweep"]["rows"] == record_b["sweep"]["rows"]
    chosen = record_a["sweep"]["chosen"]
    # the guide ships when the sweep chose autoguidance (on this tiny data the choice is a near tie either way)
    assert any(k.startswith("guide/") for k in a) == (chosen["autoguidance"] != 1)
    config = json.loads((whole / "siamese_config.json").read_text())
    assert (config["control_scale"], config["autoguidance"]) == (chosen["control_scale"], chosen["autoguidance"])
    # the presets: the sweep's samplers, measured at the chosen settings; the evaluation samples with "default"
    presets = record_a["sweep"]["presets"]
    assert config["sampling_presets"] == presets and presets["fast"]["steps"] == 4
    speed = [r for r in record_a["sweep"]["rows"] if r["scheduler"] == "unipc"]
    assert [r["steps"] for r in speed] == [4, 6, 8] and all(r["guidance_scale"] == chosen["guidance_scale"]
                                                         for r in speed)
    assert presets["default"]["steps"] in (4, 6, 8, 16)
    settings = json.loads((whole / "evaluation.json").read_text())["settings"]
    assert (settings["scheduler"], settings["steps"]) == (presets["default"]["scheduler"], presets["default"]["steps"])
    # a complete model: scorer, card with the evaluation and the copying check, every stage's losses
    assert load_scorer(whole) is not None
    evaluation = json.loads((whole / "evaluation.json").read_text())
    assert evaluation["memorisation"]["ratio"] > 0
    card = (whole / "README.md").read_text()
    assert "copying" in card and "Mask fidelity" in card
    assert f"{chosen['fidelity']:.3f} +- {chosen['fidelity_se']:.3f}" in card  # the sweep's rows, standard error too
    stages = {line.split(",")[0] for line in (whole / "metrics.csv").read_text().splitlines()[1:]}
    assert stages == {"1-base", "2-siamese", "3-biased", "4-locked"}
    model = load_model(whole)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:40] = 1
    [item] = generate(model, mask, 1, seed=0, params=SamplingParams(steps=2, scheduler="dpm++"))
    assert item.params["control_scale"] == chosen["control_scale"] and item.image.shape == (64, 64, 3)

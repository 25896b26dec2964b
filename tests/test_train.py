"""The trainer: a short run gives a loadable model, checkpoints resume exactly, stop flag, events,
and two processes under torchrun."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import siamese.train
from siamese.model import load_model
from siamese.schedule import batch_indices, param_groups, timestep_weights, trainable_parameters
from siamese.checkpoints import EMA, ema_decay_at, latest_checkpoint
from siamese.train import TrainConfig, TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[1]


def _config(data, out, **kw):
    base = dict(data=str(data), output=str(out), model="tiny", resolution=64, batch_size=2, max_steps=4,
                lr=1e-3, checkpoint_every=2, log_every=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_batch_indices_cover_every_pair_each_epoch():
    first = batch_indices(10, 0, 0, 10)
    assert sorted(first) == list(range(10))
    assert batch_indices(10, 0, 10, 10) != first  # a new permutation each epoch
    assert batch_indices(10, 0, 4, 3) == first[4:7]


@pytest.mark.slow
def test_short_run_gives_a_loadable_model_and_logs(dataset, tmp_path):
    events = []
    out = train(_config(dataset, tmp_path / "run", preview_every=2), callback=events.append)
    model = load_model(out)
    assert model.controlnet is not None and model.config.resolution == 64
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["loss"]) > 0 and float(r["loss_mask"]) > 0 for r in rows)
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["num_processes"] == 1 and saved["effective_batch_size"] == 2
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "preview" in kinds and "checkpoint" in kinds
    assert (out / "previews" / "step-0000002.png").is_file()
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay, zero_lr_scale", [(0.0, 1.0), (0.9, 10.0)])
def test_resume_continues_exactly(dataset, tmp_path, ema_decay, zero_lr_scale):
    """4 steps straight == 2 steps, interrupted, then resumed to 4: same losses, same weights (and the
    same weight average, which is what the model folder holds; and the zero layers' own learning rate)."""
    _config = functools.partial(globals()["_config"], zero_lr_scale=zero_lr_scale)
    straight = train(_config(dataset, tmp_path / "a", ema_decay=ema_decay))
    stop = threading.Event()

    def stop_at_two(event):
        if event["type"] == "log" and event["step"] == 2:
            stop.set()

    half = train(_config(dataset, tmp_path / "b", ema_decay=ema_decay), callback=stop_at_two, stop=stop)
    assert latest_checkpoint(half).name == "step-0000002"
    assert load_model(half).controlnet is not None  # a stopped run is usable at once
    with open(half / "metrics.csv", "a") as f:  # killed after logging step 3, before its checkpoint
        f.write("3,9,9,9,9,9,0.1,1,1\n")
    resumed = train(_config(dataset, tmp_path / "b", resume="latest", ema_decay=ema_decay))
    a, b = _rows(straight), _rows(resumed)
    assert [r["step"] for r in b] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    ma, mb = load_model(straight), load_model(resumed)
    for (n, p), (_, q) in zip(ma.controlnet.state_dict().items(), mb.controlnet.state_dict().items()):
        torch.testing.assert_close(p, q, msg=n)
    live = load_file(latest_checkpoint(resumed) / "trainable.safetensors")
    saved = {f"controlnet.{n}": p for n, p in mb.controlnet.state_dict().items()}
    same = all(torch.equal(saved[n], live[n]) for n in saved if n in live)
    assert same == (ema_decay == 0)  # with EMA the folder holds the average, not the last weights
    if ema_decay:
        ema = load_file(latest_checkpoint(resumed) / "ema.safetensors")
        assert all(torch.equal(saved[n], ema[n]) for n in saved if n in ema)


@pytest.mark.slow
def test_base_objective_then_siamese(dataset, tmp_path):
    base = train(_config(dataset, tmp_path / "base", objective="base", max_steps=2))
    assert load_model(base).controlnet is None
    run = train(_config(dataset, tmp_path / "cn", model=str(base), objective="controlnet", max_steps=2))
    rows = _rows(run)
    assert float(rows[-1]["loss_image"]) == 0 and float(rows[-1]["loss_mask"]) > 0


@pytest.mark.slow
def test_from_scratch_pretrains_the_unet_first(dataset, tmp_path):
    """base_steps: the UNet is trained alone in OUTPUT/base, then the ControlNet on top of it (whose frozen
    encoder is then the pre-trained one, not the random initialisation)."""
    events = []
    run = train(_config(dataset, tmp_path / "run", base_steps=2, max_steps=2), callback=events.append)
    assert [(e["stage"], e["step"], e["max_steps"]) for e in events if e["type"] == "start"] == [
        ("base", 0, 2), ("siamese", 0, 2)]
    assert [int(r["step"]) for r in _rows(run / "base")] == [1, 2]
    init, base, final = (load_model(p) for p in (run / "base" / "init", run / "base", run))
    name = "down_blocks.0.resnets.0.conv1.weight"
    w = {k: m.unet.state_dict()[name] for k, m in (("init", init), ("base", base), ("final", final))}
    assert not torch.equal(w["init"], w["base"]) and torch.equal(w["base"], w["final"])
    assert final.controlnet is not None and base.controlnet is None
    # run again with resume: both stages are complete, nothing is retrained
    again = train(_config(dataset, tmp_path / "run", base_steps=2, max_steps=2, resume="latest"))
    assert [int(r["step"]) for r in _rows(again)] == [1, 2]


@pytest.mark.slow
def test_zero_initialised_layers_get_their_own_learning_rate(dataset, tmp_path, tiny_model):
    """zero_lr_scale multiplies the lr of the ControlNet's zero convolutions and the DHI's output conv only:
    after one Adam step from zero, each zero-conv weight has moved by lr * scale (Adam's first step is
    lr * sign(grad)), while every other trainable weight moved by at most lr."""
    params = trainable_parameters(tiny_model, "siamese", unlock_decoder=True)
    groups = param_groups(params, 10.0)
    zero_names = {n for n, p in params.items() if any(p is q for q in groups[1]["params"])}
    assert zero_names and all(n.startswith(("controlnet.controlnet_down_blocks.", "controlnet.controlnet_mid_block.",
                                            "controlnet.controlnet_cond_embedding.conv_out.")) for n in zero_names)
    assert "controlnet.controlnet_cond_embedding.conv_out.weight" in zero_names
    assert not any("unet." in n or "conv_in" in n for n in zero_names)
    assert len(param_groups(params, 1.0)) == 1
    moved = {}
    for scale in (1.0, 10.0):
        run = train(_config(dataset, tmp_path / f"s{scale}", max_steps=1, zero_lr_scale=scale, lr=1e-3))
        moved[scale] = load_model(run).controlnet.controlnet_down_blocks[0].weight.abs().max().item()
        state = json.loads((latest_checkpoint(run) / "state.json").read_text())
        assert [g["lr"] for g in state["optimizer"]["param_groups"]] == ([1e-3] if scale == 1 else [1e-3, 1e-2])
    assert moved[1.0] == pytest.approx(1e-3, rel=0.02)
    assert moved[10.0] == pytest.approx(1e-2, rel=0.02)


@pytest.mark.slow
def test_bad_config_is_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="zero-layer lr scale"):
        train(_config(dataset, tmp_path / "x", zero_lr_scale=0))
    with pytest.raises(ValueError, match="mixed precision"):
        train(_config(dataset, tmp_path / "x", mixed_precision="fp8"))
    with pytest.raises(ValueError, match="resolution"):
        train(_config(dataset, tmp_path / "x", resolution=100))
    with pytest.raises(ValueError, match="built from scratch"):
        train(_config(dataset, tmp_path / "x", model=str(tmp_path), base_steps=2))
    run = train(_config(dataset, tmp_path / "run", max_steps=2))
    rows = (run / "metrics.csv").read_bytes()
    with pytest.raises(ValueError, match="already holds a training run.*--resume latest"):
        train(_config(dataset, run, max_steps=2))  # a fresh run into it would mix two runs' checkpoints and rows
    assert (run / "metrics.csv").read_bytes() == rows


@pytest.mark.slow
def test_a_diverging_run_stops_saves_no_model_and_keeps_its_good_checkpoints(dataset, tmp_path):
    """lr 1 (the highest allowed) makes the tiny model's loss NaN within a few steps: the run stops at that step
    with TrainingDiverged (a ValueError: one line on the CLI and in the app), writes no model folder, keeps the
    checkpoints saved before, and none of them holds a weight that is not finite."""
    out = tmp_path / "run"
    events = []
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+: the loss \(nan\) is not a finite "
                                               r"number.*no model is saved.*it was 1\)") as info:
        train(_config(dataset, out, lr=1.0, max_steps=8, scorer_steps=0), callback=events.append)
    assert "\n" not in str(info.value)
    diverged = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert not (out / "siamese_config.json").exists() and not (out / "unet").exists()  # nothing offered as a model
    kept = sorted((out / "checkpoints").iterdir())
    assert kept and all(int(c.name.split("-")[1]) < diverged for c in kept)
    for checkpoint in kept:
        assert all(torch.isfinite(w).all() for w in load_file(checkpoint / "trainable.safetensors").values())
    assert f"{kept[-1].name}, is kept" in str(info.value)
    assert not any(e["type"] == "end" for e in events)
    assert all(r["loss"] != "nan" for r in _rows(out))  # no metrics row of the diverged step


@pytest.mark.slow
def test_two_processes_with_torchrun(dataset, tmp_path):
    """torchrun --nproc_per_node 2 on the CPU: accelerate picks both processes up."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "siamese", "train", "--data", str(dataset), "--output", str(out), "--resolution", "64",
           "--batch-size", "2", "--max-steps", "2", "--checkpoint-every", "1", "--log-every", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["num_processes"] == 2 and saved["effective_batch_size"] == 4
    assert load_model(out).controlnet is not None


# -- faults: killed at any point, a run resumes to the same losses ---------------------------------
KILLED_RUN = r"""
import json, os, signal, sys
from pathlib import Path

import torch

torch.set_num_threads(1)
import siamese.model
import siamese.checkpoints
from siamese.train import TrainConfig, train

config, kill = TrainConfig(**json.loads(sys.argv[1])), sys.argv[2]


def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)


callback = None
if kill == "init":  # while init/ is written: its UNet saved, its other parts not
    save_module = siamese.model.save_module

    def save_then_die(module, folder, *args):
        save_module(module, folder, *args)
        if folder.parent.name.startswith("init"):
            die()

    siamese.model.save_module = save_then_die
elif kill.startswith("after-step-"):  # between checkpoints, after the step's metrics row
    at = int(kill.rsplit("-", 1)[1])
    callback = lambda event: event["type"] == "log" and event["step"] == at and die()
elif kill.startswith("checkpoint-"):  # while a checkpoint is written: weights and optimiser saved, state.json not
    name = "step-%07d" % int(kill.rsplit("-", 1)[1])
    save_file = siamese.checkpoints.save_file

    def save_then_die(tensors, path, *args, **kwargs):
        save_file(tensors, path, *args, **kwargs)
        if name in str(path) and Path(path).name == "optimizer.safetensors":
            die()

    siamese.checkpoints.save_file = save_then_die
train(config, callback=callback)
"""


@pytest.mark.slow
def test_runs_killed_anywhere_resume_to_the_same_losses(dataset, tmp_path):
    """SIGKILL while init/ is written, between checkpoints (after a metrics row that the checkpoint does not
    cover) and while a checkpoint is written; `--resume latest` after each, and the run ends with the metrics
    rows and weights of a run never interrupted. Also repairs an init/ left incomplete by older versions.
    Metrics rows every 3 steps, checkpoints every 2: a resumed row also averages steps of the killed process."""
    settings = dict(data=str(dataset), model="tiny", resolution=64, batch_size=2, max_steps=6, lr=1e-3,
                    checkpoint_every=2, log_every=3, seed=3, resume="latest")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def run(out: Path, kill: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps({**settings, "output": str(out)}), kill],
                              env=env, capture_output=True, text=True, timeout=600)

    straight, out = tmp_path / "straight", tmp_path / "killed"
    assert run(straight).returncode == 0

    assert run(out, "init").returncode == -signal.SIGKILL
    assert latest_checkpoint(out) is None
    assert not (out / "init").exists(), "init/ is complete or absent"

    assert run(out, "after-step-3").returncode == -signal.SIGKILL
    assert latest_checkpoint(out).name == "step-0000002" and [r["step"] for r in _rows(out)] == ["3"]
    shutil.rmtree(out / "init" / "text_encoder", ignore_errors=True)  # torn, as versions before atomic writes left it

    proc = run(out, "checkpoint-4")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert latest_checkpoint(out).name == "step-0000002" and (out / "checkpoints" / "step-0000004.tmp").is_dir()

    proc = run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rebuilding the starting model" not in proc.stderr  # repaired once, by the run before
    a, b = _rows(straight), _rows(out)
    assert [r["step"] for r in b] == ["3", "6"]
    assert [{k: r[k] for k in siamese.train.LOSS_KEYS} for r in a] == [{k: r[k] for k in siamese.train.LOSS_KEYS}
                                                                      for r in b]
    wa, wb = (load_file(latest_checkpoint(p) / "trainable.safetensors") for p in (straight, out))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
    assert not list(out.rglob("*.tmp")) and load_model(out / "init").text_encoder is not None


# -- progress: seen within seconds, whatever log_every -----------------------------------------------
@pytest.mark.slow
def test_progress_is_logged_from_the_first_step_whatever_log_every(dataset, tmp_path, monkeypatch):
    """A log event at step 1 and every LIVE_LOG_SECONDS; metrics.csv rows at log_every steps only (so resumed
    runs stay exact). Step 1 runs at progress 0, where the image branch equals the mask branch."""
    events = []
    run = train(_config(dataset, tmp_path / "a", max_steps=3, log_every=100, checkpoint_every=100),
                callback=events.append)
    logs = [e for e in events if e["type"] == "log"]
    assert [(e["step"], e["row"]) for e in logs] == [(1, False), (3, True)]
    assert [int(r["step"]) for r in _rows(run)] == [3]
    assert logs[0]["loss_consistency"] == pytest.approx(0.0, abs=1e-10) and logs[0]["loss_mask"] > 0
    assert logs[0]["it_per_s"] > 0 and logs[0]["eta_s"] > 0

    monkeypatch.setattr(siamese.train, "LIVE_LOG_SECONDS", 0.0)
    events.clear()
    run = train(_config(dataset, tmp_path / "b", max_steps=3, log_every=100, checkpoint_every=100),
                callback=events.append)
    logs = [e for e in events if e["type"] == "log"]
    assert [(e["step"], e["row"]) for e in logs] == [(1, False), (2, False), (3, True)]
    assert [int(r["step"]) for r in _rows(run)] == [3]
    assert logs[1]["loss_consistency"] > 0  # step 2: progress 1/3, the image hint acts


@pytest.mark.slow
def test_the_trainer_feeds_the_objective_its_batch(dataset, tmp_path, monkeypatch):
    """The objective gets progress = step / max_steps, the batch's mask hint and, as image hint, the batch's
    own (flipped) image in [0, 1]; the batches are flipped and drop 5% of prompts."""
    batches, calls = [], []
    batch = siamese.train.PairDataset.batch

    def recording_batch(self, indices, generator, flip=False, prompt_dropout=0.0):
        out = batch(self, indices, generator, flip=flip, prompt_dropout=prompt_dropout)
        batches.append((out, flip, prompt_dropout))
        return out

    objective = siamese.train.siamese_losses

    def recording_objective(unet, **kwargs):
        calls.append(kwargs)
        return objective(unet, **kwargs)

    monkeypatch.setattr(siamese.train.PairDataset, "batch", recording_batch)
    monkeypatch.setattr(siamese.train, "siamese_losses", recording_objective)
    train(_config(dataset, tmp_path / "run", max_steps=2, checkpoint_every=100))
    assert [c["progress"] for c in calls] == [0.0, 0.5]
    for (b, flip, dropout), kwargs in zip(batches, calls, strict=True):
        assert flip and dropout == 0.05
        torch.testing.assert_close(kwargs["image_hint"], (b["image"] + 1) / 2, atol=1e-6, rtol=0)
        assert torch.equal(kwargs["mask_hint"], b["mask_hint"])


def test_ema_arithmetic():
    """shadow <- decay * shadow + (1 - decay) * weights, decay warmed up as (1 + step) / (10 + step)."""
    w = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"w": w})
    with torch.no_grad():
        w.fill_(1.0)
    ema.update(0.9)
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 0.1))
    ema.update(0.9)
    torch.testing.assert_close(ema.shadow["w"], torch.full((3,), 0.19))
    with ema.applied():
        torch.testing.assert_close(w.detach(), torch.full((3,), 0.19))
    assert torch.equal(w.detach(), torch.ones(3))
    assert ema_decay_at(0, 0.999) == 0.1 and ema_decay_at(8, 0.999) == 0.5 and ema_decay_at(10**6, 0.999) == 0.999
    assert ema_decay_at(0, 0.05) == 0.05


@pytest.mark.slow
def test_the_saved_model_is_the_average(dataset, tmp_path):
    """After one step with EMA on, the model folder holds 0.1 * start + 0.9 * trained (decay warm-up at step 0)."""
    run = train(_config(dataset, tmp_path / "run", max_steps=1, ema_decay=0.999))
    start = load_model(run / "init").controlnet.state_dict()
    live = load_file(latest_checkpoint(run) / "trainable.safetensors")
    saved = load_model(run).controlnet.state_dict()
    moved = 0
    for n, p in saved.items():
        torch.testing.assert_close(p, 0.1 * start[n] + 0.9 * live[f"controlnet.{n}"], rtol=1e-5, atol=1e-7)
        moved += not torch.equal(start[n], live[f"controlnet.{n}"])
    assert moved


@pytest.mark.slow
def test_timestep_bias_follows_diffusers_semantics(dataset, tmp_path, monkeypatch):
    """none: METHOD.md's uniform U{0..999}; later/earlier: the last/first `portion` of the timesteps weigh
    `multiplier` times the others; and the trainer draws its timesteps from those weights."""
    config = _config(dataset, tmp_path / "run", timestep_bias="later", timestep_bias_multiplier=3.0,
                     timestep_bias_portion=0.5, max_steps=3, batch_size=8, checkpoint_every=100)
    assert timestep_weights(_config(dataset, tmp_path), 1000) is None
    weights = timestep_weights(config, 1000)
    assert float(weights[500:].sum()) == pytest.approx(0.75) and float(weights[0]) == pytest.approx(0.25 / 500)
    early = timestep_weights(_config(dataset, tmp_path, timestep_bias="earlier", timestep_bias_multiplier=4.0), 1000)
    assert float(early[:250].sum()) == pytest.approx(4 * 250 / (4 * 250 + 750))
    with pytest.raises(ValueError, match="timestep bias must be one of"):
        _config(dataset, tmp_path, timestep_bias="sooner").validate()
    with pytest.raises(ValueError, match="timestep bias portion"):
        _config(dataset, tmp_path, timestep_bias="later", timestep_bias_portion=0).validate()
    seen = []
    objective = siamese.train.siamese_losses

    def recording_objective(unet, **kwargs):
        seen.append(kwargs["t"])
        return objective(unet, **kwargs)

    monkeypatch.setattr(siamese.train, "siamese_losses", recording_objective)
    monkeypatch.setattr(siamese.train, "timestep_weights", lambda c, n: torch.eye(n, dtype=torch.float64)[999])
    train(config)
    assert torch.cat(seen).eq(999).all()  # every timestep drawn from the weights the config asks for


@pytest.mark.slow
def test_stop_at_stops_as_ctrl_c_does_and_resumes_on_the_same_schedule(dataset, tmp_path):
    """--stop-at 2 of 4 steps: checkpoint and model at step 2, schedules still set by max_steps; resuming with
    --stop-at 2 again changes nothing; without it the run ends as an uninterrupted one."""
    straight = train(_config(dataset, tmp_path / "a", scorer_steps=0))
    run = train(_config(dataset, tmp_path / "b", stop_at=2, scorer_steps=0))
    assert latest_checkpoint(run).name == "step-0000002" and load_model(run).controlnet is not None
    rows = (run / "metrics.csv").read_bytes()
    train(_config(dataset, run, stop_at=2, resume="latest", scorer_steps=0))
    assert (run / "metrics.csv").read_bytes() == rows and latest_checkpoint(run).name == "step-0000002"
    train(_config(dataset, run, resume="latest", scorer_steps=0))
    assert [r["loss"] for r in _rows(run)] == [r["loss"] for r in _rows(straight)]
    with pytest.raises(ValueError, match="stop at must be a whole number"):
        _config(dataset, run, stop_at=-1).validate()

"""The trainer: a short run gives a loadable model, checkpoints resume exactly, stop flag, events,
and two processes under torchrun."""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from siamese.model import load_model
from siamese.train import TrainConfig, batch_indices, latest_checkpoint, param_groups, train, trainable_parameters

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


def test_base_objective_then_siamese(dataset, tmp_path):
    base = train(_config(dataset, tmp_path / "base", objective="base", max_steps=2))
    assert load_model(base).controlnet is None
    run = train(_config(dataset, tmp_path / "cn", model=str(base), objective="controlnet", max_steps=2))
    rows = _rows(run)
    assert float(rows[-1]["loss_image"]) == 0 and float(rows[-1]["loss_mask"]) > 0


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


def test_bad_config_is_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match="zero-layer lr scale"):
        train(_config(dataset, tmp_path / "x", zero_lr_scale=0))
    with pytest.raises(ValueError, match="mixed precision"):
        train(_config(dataset, tmp_path / "x", mixed_precision="fp8"))
    with pytest.raises(ValueError, match="resolution"):
        train(_config(dataset, tmp_path / "x", resolution=100))
    with pytest.raises(ValueError, match="built from scratch"):
        train(_config(dataset, tmp_path / "x", model=str(tmp_path), base_steps=2))


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

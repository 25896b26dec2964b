"""The benchmark package runs, on a minuscule model: each benchmark compares like with like (same gradients,
same images), its speedups are the ratios of its own timings, and `python -m bench --json` prints one JSON
object with the keys docs/PERFORMANCE.md reports. One timing is asserted, with a wide margin: our training
step takes less CPU time than the naive one (about 2x less on this model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.estimate import sd15_training_memory
from bench.sampling import compare_samplers
from bench.training import compare_steps, float64_parity
from bench.workload import PRESETS, build_preset, build_sd15_architecture, reg_timesteps

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def smoke_model():
    return build_preset(PRESETS["smoke"])


def test_regularised_share_is_representative():
    t = reg_timesteps(8, torch.Generator().manual_seed(0))
    assert int((t <= 200).sum()) == 2 and t.min() >= 0 and t.max() <= 999
    assert int((reg_timesteps(4, torch.Generator(), regularised=0) <= 200).sum()) == 0


def test_train_comparison_same_gradients(smoke_model):
    r = compare_steps(smoke_model, 2, CPU, repeats=3, variants=("ours", "naive"))
    assert set(r["step_s"]) == {"ours", "naive"}
    assert r["batch"]["samples_t_le_200"] == 1
    assert r["max_grad_abs"] > 0  # every path is active: the comparison means something
    assert r["ours_max_grad_diff"] < 1e-5 * r["max_grad_abs"]
    for key in ("loss_mask", "loss_image", "loss_consistency", "loss_regularization", "loss"):
        assert r["losses"]["ours"][key] == pytest.approx(r["losses"]["naive"][key], rel=1e-4, abs=1e-7)
    # the speedup is naive / ours, paired per repeat (median), in wall and in CPU time: not its inverse, not
    # another pair of variants
    for key, clock in (("ours_speedup", "wall_s"), ("ours_speedup_cpu_time", "cpu_s")):
        naive, ours = r["timings"]["naive"][clock], r["timings"]["ours"][clock]
        ratios = sorted(n / o for n, o in zip(naive, ours))
        assert r[key] == pytest.approx(ratios[1], rel=0.02), key
    assert r["ours_speedup_cpu_time"] > 1.0  # measured 1.9-2.1 on a busy 2-core CPU


def test_float64_parity(smoke_model):
    r = float64_parity(smoke_model, batch_size=2)
    assert r["max_grad_diff"] < 1e-12


def test_samplers_make_the_same_images(smoke_model):
    smoke_model.eval()
    r = compare_samplers(smoke_model, batch=2, repeats=1, settings=dict(scheduler="dpm++", steps=2,
                         guidance_scale=3.0, control_scale=1.5), with_pipeline=True)
    assert r["max_pixel_diff"] < 1e-4
    assert r["max_pixel_diff_vs_pipeline"] < 1e-4
    assert set(r["images_per_second"]) == {"ours", "diffusers_loop", "diffusers_pipeline"}


def test_sd15_memory_estimate_from_parameter_counts():
    est = sd15_training_memory()
    assert est["parameters"]["unet"] == 859_520_964  # Stable Diffusion 1.5's UNet
    assert est["parameters"]["trainable"] == est["parameters"]["controlnet"] + est["parameters"]["unet_decoder"]
    assert 8 < est["total_gib"]["adamw_8bit"] < est["total_gib"]["adamw_fp32"] < 40


def test_sd15_architecture_preset_is_stable_diffusion_15():
    """The sd15arch section times SD1.5's own UNet (random weights, nothing downloaded): built on the meta
    device here, so the check costs no memory."""
    from accelerate import init_empty_weights

    preset = PRESETS["sd15"]
    with init_empty_weights():
        model = build_sd15_architecture(preset.resolution)
    assert preset.architecture == "sd15" and preset.dhi_widths == (16, 32, 64, 128, 256)
    assert sum(p.numel() for p in model.unet.parameters()) == 859_520_964
    assert model.latent_size == 32 and model.encode_prompt(["a polyp"]).shape == (1, 77, 768)


def test_cli_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", "--threads", "1", "--out", str(out),
         "--only", "train", "memory", "sample", "ips"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # the JSON object alone on stdout
    for key in ("train_speedup", "train_memory_ratio", "max_grad_diff", "sample_speedup", "max_pixel_diff",
                "images_per_second", "device", "torch", "train", "targets"):
        assert key in result, key
    assert set(result["images_per_second"]) == {"1", "2", "4"}
    assert result["max_grad_diff"] < 1e-5 and result["max_pixel_diff"] < 1e-4
    assert 0 < result["train_memory_ratio"] < 2
    assert json.loads(out.read_text())["train_speedup"] == result["train_speedup"]

"""The benchmark package runs, on a minuscule model: each benchmark compares like with like (same gradients,
same images), its speedups are the ratios of its own timings, and `python -m bench --json` prints one JSON
object with the keys docs/PERFORMANCE.md reports, every figure finite, and names each target in its table.

No timing is asserted: how fast a step is depends on the machine and its load, and speed targets are checked
by the benchmarks, which print their figures (`python -m bench`). What is asserted holds on any machine: the
speedups are computed from the timings the benchmark reports (checked exactly on made-up timings, where the
inverse, the ratio of the medians and the other clock all give other values), and the gradients and images
agree."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

import bench.overlay
import bench.training
from bench.estimate import sd15_training_memory
from bench.sampling import batch_images_per_hour, compare_presets, compare_samplers
from bench.timing import Timings
from bench.training import compare_steps, float64_parity
from bench.workload import PRESETS, build_preset, build_sd15_architecture, mask_hints, reg_timesteps
from conftest import write_dataset
from siamese.params import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture
def smoke_model():
    return build_preset(PRESETS["smoke"])


def test_regularised_share_is_representative():
    t = reg_timesteps(8, torch.Generator().manual_seed(0))
    assert int((t <= 200).sum()) == 2 and t.min() >= 0 and t.max() <= 999
    assert int((reg_timesteps(4, torch.Generator(), regularised=0) <= 200).sum()) == 0


def paired_ratio(timings: dict, slow: str, fast: str, clock: str) -> float:
    """The median over repeats of slow_i / fast_i, from a result's reported timings (`Timings.summary()`)."""
    return statistics.median(s / f for s, f in zip(timings[slow][clock], timings[fast][clock]))


def speedup_mismatches(r: dict, pairs, rel: float = 0.01) -> list[str]:
    """The speedups of `r` that are not the paired ratios of its reported timings. `pairs`: (key, slow, fast,
    clock). The tolerance covers the rounding of the reported figures (timings to 0.1 ms, speedups to 0.001)."""
    out = []
    for key, slow, fast, clock in pairs:
        expected = paired_ratio(r["timings"], slow, fast, clock)
        if not (math.isfinite(r[key]) and r[key] == pytest.approx(expected, rel=rel, abs=2e-3)):
            out.append(f"{key} = {r[key]}, but {slow} / {fast} ({clock}) = {expected:.4f}")
    return out


TRAIN_SPEEDUPS = (("ours_speedup", "naive", "ours", "wall_s"), ("ours_speedup_cpu_time", "naive", "ours", "cpu_s"))


def test_train_comparison_same_gradients(smoke_model):
    r = compare_steps(smoke_model, 2, CPU, repeats=3, variants=("ours", "naive"))
    assert set(r["step_s"]) == {"ours", "naive"}
    assert r["batch"]["samples_t_le_200"] == 1
    assert r["max_grad_abs"] > 0  # every path is active: the comparison means something
    assert r["ours_max_grad_diff"] < 1e-5 * r["max_grad_abs"]
    for key in ("loss_mask", "loss_image", "loss_consistency", "loss_regularization", "loss"):
        assert r["losses"]["ours"][key] == pytest.approx(r["losses"]["naive"][key], rel=1e-4, abs=1e-7)
    # the figures are real timings, three per variant and clock, and the speedups their paired ratios
    for v in ("ours", "naive"):
        for clock in ("wall_s", "cpu_s"):
            assert len(r["timings"][v][clock]) == 3 and all(math.isfinite(t) and t > 0 for t in r["timings"][v][clock])
        assert r["step_s"][v] == pytest.approx(statistics.median(r["timings"][v]["wall_s"]), abs=1e-4)
    assert speedup_mismatches(r, TRAIN_SPEEDUPS) == []


def test_train_speedups_are_the_paired_ratios_of_the_timings(smoke_model, monkeypatch):
    """compare_steps on made-up timings: each speedup must be naive / ours, paired per repeat, median, in its own
    clock. Chosen so that every other formula gives another value: the inverse (1/3 and 1/2), the ratio of the
    medians (1.5 and 2.5), the mean ratio, the other clock (2 and 3), the first or the last repeat."""
    # (wall, cpu) seconds per repeat
    made_up = {"naive": ([0.2, 0.3, 0.8], [0.9, 0.4, 0.5]), "ours": ([0.2, 0.1, 0.2], [0.1, 0.2, 0.5])}

    def fake_interleaved(fns, repeats, device):
        return Timings({n: list(made_up[n][0]) for n in fns}, {n: list(made_up[n][1]) for n in fns})

    monkeypatch.setattr(bench.training, "interleaved", fake_interleaved)
    r = compare_steps(smoke_model, 2, CPU, repeats=3, variants=("ours", "naive"), time_optimizer=False)
    assert r["ours_speedup"] == 3.0  # wall: 1, 3, 4
    assert r["ours_speedup_cpu_time"] == 2.0  # cpu: 9, 2, 1
    assert r["step_s"] == {"ours": 0.2, "naive": 0.3}  # medians
    assert speedup_mismatches(r, TRAIN_SPEEDUPS) == []
    # and the check used on real runs rejects what is not the paired ratio
    for key, wrong in (("ours_speedup", 1 / 3), ("ours_speedup", 1.5), ("ours_speedup", 2.0), ("ours_speedup", 1.0),
                       ("ours_speedup", 4.0), ("ours_speedup", 8 / 3),
                       ("ours_speedup_cpu_time", 0.5), ("ours_speedup_cpu_time", 2.5), ("ours_speedup_cpu_time", 3.0),
                       ("ours_speedup", float("nan"))):
        assert len(speedup_mismatches({**r, key: wrong}, TRAIN_SPEEDUPS)) == 1, (key, wrong)


def test_float64_parity(smoke_model):
    r = float64_parity(smoke_model, batch_size=2)
    assert r["max_grad_abs"] > 0  # gradients to compare
    assert r["max_grad_diff"] < 1e-12


def test_samplers_make_the_same_images(smoke_model):
    smoke_model.eval()
    r = compare_samplers(smoke_model, batch=2, repeats=1, settings=dict(scheduler="dpm++", steps=2,
                         guidance_scale=3.0, control_scale=1.5, control_end=0.5), with_pipeline=True)
    assert r["max_pixel_diff"] < 1e-4
    assert r["max_pixel_diff_vs_pipeline"] < 1e-4
    assert set(r["images_per_second"]) == {"ours", "diffusers_loop", "diffusers_pipeline"}
    assert speedup_mismatches(r, [("speedup", "diffusers_loop", "ours", "wall_s"),
                                  ("speedup_cpu_time", "diffusers_loop", "ours", "cpu_s"),
                                  ("speedup_vs_pipeline", "diffusers_pipeline", "ours", "wall_s")]) == []


def test_presets_are_timed_against_today_and_the_batch_path_counts_pairs(smoke_model):
    """Each preset's speedup is the paired ratio of its own timings against today's sampler's; the Batch path's
    pairs per hour is what it made in the time it took."""
    smoke_model.eval()
    today = dict(scheduler="dpm++", steps=2, guidance_scale=3.0)
    presets = {"default": {**today, "cache_interval": 2}, "fast": {**today, "steps": 1, "precision": "bfloat16"}}
    r = compare_presets(smoke_model, batch=2, repeats=1, today=today, presets=presets)
    assert set(r["seconds_per_image"]) == {"today", "default", "fast"} and set(r["speedup"]) == set(presets)
    for key, clock in (("speedup", "wall_s"), ("speedup_cpu_time", "cpu_s")):
        assert speedup_mismatches(r[key] | {"timings": r["timings"]},
                                  [(name, "today", name, clock) for name in presets]) == []
    masks = [("a", (mask_hints(1, 64, 0)[0, 0].numpy() > 0).astype("uint8"))]
    b = batch_images_per_hour(smoke_model, None, masks, SamplingParams(steps=1, scheduler="ddim"), num_images=2)
    assert b["pairs"] == 2 and not b["scored"]
    assert b["images_per_hour"] == pytest.approx(3600 * 2 / b["seconds"], rel=0.01)


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


def non_finite(value, path: str = "") -> list[str]:
    """The paths of the NaN and infinite numbers in a JSON value."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{path}[{i}]")]
    return [path] if isinstance(value, float) and not math.isfinite(value) else []


def target_problems(result: dict, table: str) -> list[str]:
    """Each target of the JSON must be printed in the table by name, with the same finite value, and met or
    MISSED as its value says."""
    out = []
    for key, t in result["targets"].items():
        match = re.search(rf"^ +{re.escape(key)} +(\S+) +\(target {re.escape(t['target'])}: (met|MISSED|-)\)$",
                          table, re.MULTILINE)
        if match is None:
            out.append(f"{key}: not in the printed table")
            continue
        op, bound = t["target"].split()
        value = t["value"]
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            out.append(f"{key}: value {value!r}")
        elif match[1] != str(value):
            out.append(f"{key}: printed {match[1]}, JSON {value}")
        elif t["met"] != (value >= float(bound) if op == ">=" else value <= float(bound)) or \
                match[2] != ("met" if t["met"] else "MISSED"):
            out.append(f"{key}: met {t['met']} / printed {match[2]} for {value} {op} {bound}")
    return out


def cli_problems(result: dict, table: str) -> list[str]:
    """What is wrong with a `python -m bench --smoke --json` result and its printed table, whatever the speed."""
    out = [f"{key}: missing" for key in ("train_speedup", "train_memory_ratio", "max_grad_diff", "sample_speedup",
                                         "max_pixel_diff", "images_per_second", "device", "torch", "train",
                                         "targets") if key not in result]
    if out:
        return out
    out += [f"{p}: not finite" for p in non_finite(result)]
    if set(result["images_per_second"]) != {"1", "2", "4"}:
        out.append(f"images_per_second: batches {sorted(result['images_per_second'])}")
    frame = result.get("frame_mode_cost", {})
    if not (frame.get("ratio", 0) > 0 and f"{frame['ratio']:.2f}x" in table):
        out.append(f"frame_mode_cost: {frame} (and its table row)")
    if not (result["max_grad_diff"] < 1e-5 and result["max_pixel_diff"] < 1e-4):
        out.append(f"max_grad_diff {result['max_grad_diff']}, max_pixel_diff {result['max_pixel_diff']}")
    if not 0 < result["train_memory_ratio"] < 2:
        out.append(f"train_memory_ratio {result['train_memory_ratio']}")
    # the headline speedups are those of their sections, which are the ratios of the sections' timings
    for key, section, inner in (("train_speedup", "train", "ours_speedup"),
                                ("train_speedup_cpu_time", "train", "ours_speedup_cpu_time"),
                                ("sample_speedup", "sample", "speedup")):
        if result[key] != result[section][inner]:
            out.append(f"{key} {result[key]} is not {section}.{inner} {result[section][inner]}")
    out += speedup_mismatches(result["train"], TRAIN_SPEEDUPS)
    out += speedup_mismatches(result["sample"], [("speedup", "diffusers_loop", "ours", "wall_s"),
                                                 ("speedup_cpu_time", "diffusers_loop", "ours", "cpu_s")])
    return out + target_problems(result, table)


@pytest.mark.slow
def test_cli_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", "--threads", "1", "--out", str(out),
         "--only", "train", "memory", "sample", "ips", "presets"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)  # the JSON object alone on stdout; the table on stderr
    assert cli_problems(result, proc.stderr) == []
    assert json.loads(out.read_text())["train_speedup"] == result["train_speedup"]


def test_the_overlay_benchmark_measures_strokes_in_the_text_zone(tiny_model_dir, tmp_path, capsys):
    """`python -m bench.overlay` on frames with text in a fixed block: the zone lies there, the real frames have
    strokes in it, and each model's paired difference from the first is reported (the same model twice: zero)."""
    data = write_dataset(tmp_path / "d", n=40, size=64, seed=2)
    for path in sorted((data / "images").iterdir()):  # the scope's text: white strokes in the top-left block
        image = cv2.imread(str(path))
        cv2.putText(image, path.stem[-3:], (2, 14), cv2.FONT_HERSHEY_PLAIN, 0.8, (250, 250, 250), 1)
        cv2.imwrite(str(path), image)
    grid = tmp_path / "grid.png"
    assert bench.overlay.main(["--models", str(tiny_model_dir), str(tiny_model_dir), "--data", str(data),
                               "--masks", "8", "--grid", str(grid)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["zone_share_of_frame"] < 0.5 and report["masks"] == 8
    assert report["real"]["mean"] > 0.05 and report["real"]["streaked"] > 0.5
    second = report[str(tiny_model_dir)]
    assert second["minus_first"] == {"mean": 0.0, "se": 0.0}  # the same model, masks and seeds: the same images
    assert cv2.imread(str(grid)).shape == (3 * 64, 8 * 64, 3)  # the real frames, then each model

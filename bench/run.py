"""`python -m bench`: every figure of docs/PERFORMANCE.md, as a table and as one JSON object.

    python -m bench --quick               # a few minutes on the 2-core CPU
    python -m bench                       # the full set (mid-size preset, diffusers pipeline, more repeats)
    python -m bench --quick --json        # the JSON object alone on stdout (table and progress on stderr)
    python -m bench --device cuda --dtype bfloat16 [--compile] [--sd15 runwayml/stable-diffusion-v1-5]

Sections (`--only` picks some): train (step time and gradients, ours vs naive, on the tiny preset and,
in full mode, the mid-size one), memory (peak memory per variant, one process each), sample (our
sampler vs the diffusers pipeline's loop), ips (images per second of the default model at the app's
defaults), presets (seconds per image of the model's "default" and "fast" sampling presets against today's
sampler, interleaved, with each speed lever alone beside them, their quality on held-out masks and the Batch
path's pairs per hour), scaling (step
time and memory vs resolution and batch size), profile (where our step's time goes, part by part), sd15 (GPU
only, with --sd15), sd15arch (Stable Diffusion 1.5's architecture with random weights, ours vs naive training
step and memory: runs only when named, about 15 minutes and 18 GB on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from . import report
from .estimate import sd15_training_memory
from siamese.fidelity import load_scorer
from siamese.files import default_model as default_model_path
from siamese.presets import FALLBACK_PRESETS, model_presets, preset_params

from .quality import DATA, load_held_out, measure_quality
from .sampling import (SETTINGS, autoguidance_cost, batch_images_per_hour, compare_memory_formats, compare_presets,
                       compare_samplers, frame_mode_cost, images_per_second)
from .sd15 import run_sd15
from .timing import load_average, median
from .training import (
    compare_steps, component_times, deepcopy_seconds, float64_parity, speedup_by_regularised_samples,
)
from .worker import measure
from .workload import PRESETS, build_preset, default_model, mask_hints, parse_dtype, prepare_networks

__all__ = ["main", "run_benchmarks", "build_parser", "MODES"]

SECTIONS = ("train", "memory", "sample", "ips", "presets", "scaling", "profile", "sd15", "sd15arch")
DEFAULT_SECTIONS = SECTIONS[:-1]  # sd15arch (15 minutes, 18 GB) runs only when named
TARGETS = {"train_speedup": (">=", 2.0), "train_memory_ratio": ("<=", 0.7), "sample_speedup": (">=", 1.3),
           "seconds_per_image_app_defaults": ("<=", 0.6), "seconds_per_image_fast_preset": ("<=", 0.25)}

# What each mode runs.
MODES = {
    "smoke": dict(preset="smoke", sections=DEFAULT_SECTIONS, train_batch=2, train_repeats=1, mid=False,
                  variants=("ours", "naive"), f64_resolution=64, f64_batch=2, sample_batch=2,
                  sample_repeats=1, sample_steps=2, pipeline=True, ips_batches=(1, 2, 4), ips_repeats=1,
                  scaling=[(64, 2)], timed_steps=0, formats_experiment=True, regularised_counts=(0,),
                  checkpointing=True, preset_repeats=1, quality_masks=0, batch_masks=2),
    "quick": dict(preset="tiny", sections=("train", "memory", "sample", "ips", "presets", "scaling"), train_batch=8,
                  train_repeats=2, mid=False, variants=("ours", "naive"), f64_resolution=128, f64_batch=4,
                  sample_batch=4, sample_repeats=1, sample_steps=None, pipeline=False, ips_batches=(1, 4, 16),
                  ips_repeats=1, scaling=[(128, 4), (256, 4), (256, 8)], timed_steps=0, formats_experiment=False,
                  regularised_counts=(), checkpointing=False, preset_repeats=2, quality_masks=16, batch_masks=4),
    "full": dict(preset="tiny", sections=DEFAULT_SECTIONS, train_batch=8, train_repeats=4, mid=True,
                 variants=("ours", "naive"), f64_resolution=128, f64_batch=4, sample_batch=4,
                 sample_repeats=2, sample_steps=None, pipeline=True, ips_batches=(1, 4, 16), ips_repeats=2,
                 scaling=[(128, 4), (256, 4), (384, 4), (256, 2), (256, 8), (256, 16)], timed_steps=2,
                 formats_experiment=True, regularised_counts=(0, 1), checkpointing=True, preset_repeats=3,
                 quality_masks=32, batch_masks=8),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def environment(device: torch.device, dtype: torch.dtype, args: argparse.Namespace) -> dict:
    import diffusers

    env = {"device": device.type, "torch": torch.__version__, "diffusers": diffusers.__version__,
           "python": platform.python_version(), "dtype": str(dtype).replace("torch.", ""),
           "threads": torch.get_num_threads(), "compile": args.compile, "load_average_start": load_average()}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
        env["cpu_count"] = os.cpu_count()
    return env


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _train_section(results: dict, mode: dict, device: torch.device, amp: torch.dtype, args) -> None:
    presets = [mode["preset"]] + (["mid"] if mode["mid"] else [])
    for name in presets:
        preset = PRESETS[name]
        log(f"train: preset {name}, batch {mode['train_batch']}, {', '.join(mode['variants'])}")
        repeats = mode["train_repeats"] if name == mode["preset"] else max(2, mode["train_repeats"] - 2)
        r = compare_steps(build_preset(preset), mode["train_batch"], device, repeats, mode["variants"], amp,
                          compile=args.compile, log=log)
        r["preset"] = preset.describe()
        if name == mode["preset"]:
            results["train"] = r
            results["train_speedup"] = r["ours_speedup"]
            results["train_speedup_cpu_time"] = r["ours_speedup_cpu_time"]
            results["max_grad_diff"] = r["ours_max_grad_diff"]
        else:
            results[f"train_{name}"] = r
    if mode["regularised_counts"]:
        log("train: speedup against the number of samples with t <= 200")
        results["train_speedup_by_regularised_samples"] = speedup_by_regularised_samples(
            build_preset(PRESETS[mode["preset"]]), mode["train_batch"], device, max(2, mode["train_repeats"] - 2),
            mode["regularised_counts"], log=log)
    log(f"train: float64 gradient parity at {mode['f64_resolution']}x{mode['f64_resolution']}")
    results["train_float64"] = float64_parity(build_preset(PRESETS[mode["preset"]], mode["f64_resolution"]),
                                              mode["f64_batch"])
    results["max_grad_diff_float64"] = results["train_float64"]["max_grad_diff"]


def _memory_section(results: dict, mode: dict, device: torch.device, amp: torch.dtype, args) -> None:
    runs = [(name, False) for name in [mode["preset"]] + (["mid"] if mode["mid"] else [])]
    if mode["checkpointing"]:  # as the SD1.5 recipe trains
        runs.append((mode["preset"], True))
    for name, checkpointing in runs:
        mem = {}
        for variant in mode["variants"]:
            log(f"memory: preset {name}, {variant}{' with gradient checkpointing' if checkpointing else ''} "
                "(fresh process)")
            mem[variant] = measure(dict(variant=variant, preset=name, batch=mode["train_batch"], device=device.type,
                                        amp_dtype=_dtype_name(amp), threads=torch.get_num_threads(),
                                        compile=args.compile, gradient_checkpointing=checkpointing))
        entry: dict = {"batch": mode["train_batch"], "gradient_checkpointing": checkpointing, "variants": mem}
        for variant in mem:
            if variant != "naive" and "peak_bytes" in mem[variant] and "peak_bytes" in mem["naive"]:
                entry[f"{variant}_ratio"] = round(mem[variant]["peak_bytes"] / mem["naive"]["peak_bytes"], 3)
        key = ("train_memory" if name == mode["preset"] else f"train_memory_{name}") + (
            "_checkpointing" if checkpointing else "")
        results[key] = entry
        if key == "train_memory" and "ours_ratio" in entry:
            results["train_memory_ratio"] = entry["ours_ratio"]


def _sd15_architecture_section(results: dict, mode: dict, device: torch.device, amp: torch.dtype, args) -> None:
    """Ours vs naive on Stable Diffusion 1.5's UNet and DHI ControlNet (random weights, no download), with
    gradient checkpointing as the reference run trains: each variant's peak memory in a fresh process
    (first, while this process is small), then the step time at batch 2, 256x256, with 0 and 1 samples at
    t <= 200 (probabilities 0.64 and 0.32 under t ~ U{0..999})."""
    batch, repeats = 2, max(1, mode["train_repeats"] // 2)  # full mode: 2
    mem = {}
    for variant in ("ours", "naive"):
        log(f"sd15arch: peak memory, {variant} (fresh process)")
        mem[variant] = measure(dict(variant=variant, preset="sd15", batch=batch, device=device.type,
                                    amp_dtype=_dtype_name(amp), threads=torch.get_num_threads(),
                                    gradient_checkpointing=True))
    out: dict = {"batch": batch, "gradient_checkpointing": True,
                 "memory": {"batch": batch, "gradient_checkpointing": True, "variants": mem}}
    if "peak_bytes" in mem["ours"] and "peak_bytes" in mem["naive"]:
        out["memory"]["ours_ratio"] = round(mem["ours"]["peak_bytes"] / mem["naive"]["peak_bytes"], 3)
    for k in (0, 1):
        log(f"sd15arch: SD1.5 architecture, batch {batch}, {k} samples with t <= 200, ours vs naive")
        model = build_preset(PRESETS["sd15"])
        r = compare_steps(model, batch, device, repeats, ("ours", "naive"), amp,
                          regularised=k, gradient_checkpointing=True, time_optimizer=False, log=log)
        r["preset"] = PRESETS["sd15"].describe()
        out[f"regularised_{k}"] = r
    log("sd15arch: the naive objective's deep copies alone")
    out["deepcopy_s"] = deepcopy_seconds(model)
    results["train_sd15_architecture"] = out


def _sample_section(results: dict, mode: dict, device: torch.device, dtype: torch.dtype, sections, args) -> None:
    def load():
        if mode["preset"] == "smoke":
            return build_preset(PRESETS["smoke"]), "smoke preset (figures meaningless)"
        return default_model()

    model, which = load()
    # as the app runs it: contiguous memory format on the CPU (load_model); channels_last on CUDA
    prepare_networks(model, device, dtype, channels_last=device.type == "cuda", compile=args.compile)
    settings = {**SETTINGS, "control_scale": model.config.control_scale,  # the app uses the model's values
                "control_end": model.config.control_end}
    if mode["sample_steps"]:
        settings["steps"] = mode["sample_steps"]
    # the app's settings are the model's "default" preset with its autoguidance; the comparison with the diffusers
    # loop (which has neither feature reuse nor autoguidance) runs today's sampler without it, and the ips section
    # measures what the autoguidance costs
    autoguidance = model.config.autoguidance
    presets = {name: {**settings, **preset} for name, preset in model_presets(model).items()}
    if mode["sample_steps"]:
        for preset in presets.values():
            preset["steps"] = min(preset["steps"], mode["sample_steps"])
    app_settings = {**presets["default"], "autoguidance": autoguidance} if autoguidance != 1 else presets["default"]
    results["sample_model"] = which
    ips: dict[int, dict] = {}
    if "sample" in sections:
        log(f"sample: ours vs diffusers loop{' and pipeline' if mode['pipeline'] else ''}, batch "
            f"{mode['sample_batch']}, {settings}")
        r = compare_samplers(model, mode["sample_batch"], mode["sample_repeats"], settings,
                             with_pipeline=mode["pipeline"], log=log)
        results["sample"] = r
        results["sample_speedup"] = r["speedup"]
        results["sample_speedup_cpu_time"] = r["speedup_cpu_time"]
        results["max_pixel_diff"] = r["max_pixel_diff"]
        b, seconds = r["batch"], r["seconds"]["ours"]
        ips[b] = {"batch": b, "seconds": seconds, "images_per_second": round(b / seconds, 4),
                  "seconds_per_image": round(seconds / b, 4), "wall_s": r["timings"]["ours"]["wall_s"]}
    if "ips" in sections:
        if autoguidance != 1:  # batch 4 (the app's) with the model's autoguidance, against none
            ips.pop(4, None)
            log(f"ips: batch 4, autoguidance {autoguidance:g} (the model's) and none, interleaved")
            cost = autoguidance_cost(model, 4, max(2, mode["ips_repeats"]), presets["default"], autoguidance)
            results["autoguidance_cost"] = cost
            seconds = cost["seconds_with"]
            ips[4] = {"batch": 4, "seconds": seconds, "images_per_second": round(4 / seconds, 4),
                      "seconds_per_image": cost["seconds_per_image_with"], "wall_s": cost["wall_s"]}
        for b in mode["ips_batches"]:
            if b in ips:
                log(f"ips: batch {b} (measured above)")
                continue
            log(f"ips: batch {b}")
            warm = b <= 4 or mode["ips_repeats"] > 1  # quick mode: no separate warm-up call at batch 16
            ips[b] = images_per_second(model, b, mode["ips_repeats"], app_settings, warm=warm)
        log("ips: painting into a frame against whole images, batch 4, interleaved")
        results["frame_mode_cost"] = frame_mode_cost(model, 4, max(2, mode["ips_repeats"]), app_settings)
        ips = {b: ips[b] for b in sorted(ips)}
        results["images_per_second_detail"] = {str(b): v for b, v in ips.items()}
        results["images_per_second"] = {str(b): v["images_per_second"] for b, v in ips.items()}
        app_batch = 4 if 4 in ips else max(ips)  # the app generates in batches of 4
        results["seconds_per_image_app_defaults"] = ips[app_batch]["seconds_per_image"]
        results["app_defaults"] = {**app_settings, "batch": app_batch, "resolution": model.config.resolution,
                                   "model": which, "threads": torch.get_num_threads()}
    if "presets" in sections:
        _presets_part(results, mode, model, settings, presets, autoguidance)
    if "sample" in sections and mode["formats_experiment"] and device.type == "cpu":
        log("sample: contiguous vs channels_last networks, ours and the diffusers loop, batch 4")
        other, _ = load()
        prepare_networks(other, device, dtype, channels_last=True)
        results["sample_memory_format"] = compare_memory_formats(model, other, 4, mode["sample_repeats"], settings)


def _presets_part(results: dict, mode: dict, model, settings: dict, presets: dict[str, dict], autoguidance: float):
    """The model's presets against today's sampler (16 steps, every block, float32, the model's autoguidance), at
    the app's batch of 4, interleaved; their quality on held-out masks (the bundled model, its scorer, the shared
    data); the Batch path's pairs per hour at the default preset."""
    with_guide = {"autoguidance": autoguidance} if autoguidance != 1 else {}
    today = {**settings, **{k: FALLBACK_PRESETS["default"][k] for k in ("cache_interval", "precision")}, **with_guide}
    chosen = {name: {**preset, **with_guide} for name, preset in presets.items()}
    log(f"presets: {', '.join(f'{k} {v}' for k, v in chosen.items())} against today's sampler, batch 4")
    fast = chosen["fast"]
    # each lever alone on today's sampler, for its share of the presets' speed and quality
    levers = {"lever: bfloat16 alone": {**today, "precision": "bfloat16"},
              "lever: feature reuse alone (cache 2)": {**today, "cache_interval": 2},
              f"lever: {fast['scheduler']} {fast['steps']} steps alone": {**today, "scheduler": fast["scheduler"],
                                                                           "steps": fast["steps"]}}
    r = compare_presets(model, 4, mode["preset_repeats"], today, {**chosen, **levers})
    results["presets"] = r
    results["seconds_per_image_today"] = r["seconds_per_image"]["today"]
    results["seconds_per_image_default_preset"] = r["seconds_per_image"]["default"]
    results["seconds_per_image_fast_preset"] = r["seconds_per_image"]["fast"]
    # the app's defaults are the default preset: its time interleaved with today's is the headline (the ips
    # section's, timed alone, moves more with the machine's load)
    results["seconds_per_image_app_defaults"] = r["seconds_per_image"]["default"]
    results["preset_speedup"] = r["speedup"]
    bundled = mode["preset"] != "smoke" and (DATA / "images").is_dir()
    scorer = load_scorer(default_model_path()) if bundled else None
    held = None
    if mode["quality_masks"] and scorer is not None:
        log(f"presets: quality on {mode['quality_masks']} held-out masks (colour/texture KID, feature KID, fidelity)")
        held = load_held_out(model, scorer, mode["quality_masks"])
        results["presets_quality"] = measure_quality(model, scorer, held, {"today": today, **chosen, **levers},
                                                     log=log)
    n = mode["batch_masks"]
    masks = (list(held.masks[:n]) if held is not None and len(held.masks) >= n
             else list(mask_hints(n, model.config.resolution, 1)[:, 0].numpy().astype("uint8")))
    params = preset_params(model, "default", steps=chosen["default"]["steps"])
    log(f"presets: the Batch path (run_batch, {'scored' if scorer is not None else 'unscored'}), {n} masks x 2 "
        "images, default preset")
    results["batch_images_per_hour"] = batch_images_per_hour(model, scorer, [(f"m{i}", m) for i, m in enumerate(masks)],
                                                             params)


def _scaling_section(results: dict, mode: dict, device: torch.device, amp: torch.dtype, args) -> None:
    rows = []
    known = results.get("train_memory", {}).get("variants", {}).get("ours", {})
    for resolution, batch in mode["scaling"]:
        if (resolution, batch) == (PRESETS[mode["preset"]].resolution, mode["train_batch"]) and "peak_bytes" in known:
            log(f"scaling: {resolution}x{resolution}, batch {batch} (from the memory section)")
            r = known
        else:
            log(f"scaling: ours at {resolution}x{resolution}, batch {batch} (fresh process)")
            r = measure(dict(variant="ours", preset=mode["preset"], resolution=resolution, batch=batch,
                             device=device.type, amp_dtype=_dtype_name(amp), threads=torch.get_num_threads(),
                             compile=args.compile, timed_steps=mode["timed_steps"]))
        step_s = median(r["step_s"]) if r.get("step_s") else None
        rows.append({"resolution": resolution, "batch": batch, "step_s": step_s, "peak_bytes": r.get("peak_bytes"),
                     "error": r.get("error")})
    results["scaling"] = rows


def run_benchmarks(args: argparse.Namespace) -> dict:
    """Run the selected sections and return the results (the JSON object)."""
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    sections = tuple(args.only) if args.only else mode["sections"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype:
        dtype = parse_dtype(args.dtype)
    elif device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    t0 = time.perf_counter()
    results: dict = {"mode": mode_name, "sections": list(sections), **environment(device, dtype, args)}
    results["training_precision"] = ("fp32" if dtype in (torch.float32, torch.float64)
                                     else f"autocast {_dtype_name(dtype)} (fp32 weights)")
    if "train" in sections:
        _train_section(results, mode, device, dtype, args)
    if "memory" in sections:
        _memory_section(results, mode, device, dtype, args)
    if "profile" in sections:
        log(f"profile: where our step's time goes (preset {mode['preset']}, batch {mode['train_batch']})")
        results["train_profile"] = component_times(build_preset(PRESETS[mode["preset"]]), mode["train_batch"],
                                                   device, 2)
    if {"sample", "ips", "presets"} & set(sections):
        _sample_section(results, mode, device, dtype, sections, args)
    if "scaling" in sections:
        _scaling_section(results, mode, device, dtype, args)
    if "sd15arch" in sections:
        _sd15_architecture_section(results, mode, device, dtype, args)
    if "sd15" in sections:
        results["sd15"] = run_sd15(args.sd15, device, dtype, mode_name != "full", args.compile, log=log)
    results["sd15_memory_estimate"] = sd15_training_memory()
    results["targets"] = {k: {"target": f"{op} {v}", "value": results.get(k),
                              "met": None if results.get(k) is None else
                              (results[k] >= v if op == ">=" else results[k] <= v)}
                          for k, (op, v) in TARGETS.items()}
    results["load_average_end"] = load_average()
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats and points (a few minutes on 2 CPU cores)")
    p.add_argument("--smoke", action="store_true", help="a minuscule model: checks the benchmark runs (seconds)")
    p.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 or float16 (CUDA default: "
                   "bf16 where supported); training uses autocast in it, sampling casts the weights")
    p.add_argument("--compile", action="store_true", help="torch.compile every UNet/ControlNet block (both sides)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                   help="run these sections only (default: the mode's; quick skips profile and sd15; "
                        "sd15arch runs only when named)")
    p.add_argument("--sd15", default=None, help="Stable Diffusion 1.5 folder or hub id (CUDA only)")
    p.add_argument("--out", default=None, help="also write the JSON here (default: runs/bench/<mode>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    diffusers_logging.set_verbosity_error()  # no "modules that should be kept in float32" notices
    results = run_benchmarks(args)
    results["command"] = " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out or Path(__file__).resolve().parent.parent / "runs" / "bench" / f"{results['mode']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str)
    out.write_text(text + "\n")
    table = report.table(results)
    if args.json:
        print(table, file=sys.stderr)
        print(text)
    else:
        print(table)
        print(f"\nJSON written to {out}")
    return 0

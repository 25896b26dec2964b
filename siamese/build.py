"""A complete model from a folder of image-mask pairs, in one resumable command (`python -m siamese build`).

The stages are those that made the bundled polyp model (its model card has every figure):

    1-base      text-to-image pre-training of the tiny UNet (objective base, EMA)
    decoder     the learned decoder of the patch codec fitted in 1-base (it depends on the codec alone)
    scorer      the fidelity scorer, a MONAI UNet on the training pairs (its Dice on the held-out pairs is the ceiling)
    2-siamese   the Siamese objective; the ControlNet initialised from the 1-base encoder
    3-biased    more Siamese steps with the noisiest timesteps favoured (timestep bias "later", x3 on half)
    4-locked    more biased Siamese steps with the UNet decoder locked (the ControlNet alone learns)
    assemble    4-locked with the decoder, the scorer, and 2-siamese as its autoguidance guide
    sweep       mask strength, guidance and autoguidance chosen on the held-out split (`siamese.sweep`), then the
                fewest sampling steps that keep their quality (the "default" preset)
    ship        OUTPUT: the model in float16 with the chosen settings, metrics.csv of every stage, build.json, card,
                and examples/: EXAMPLE_MASKS held-out masks at the model resolution (the app's example masks)
    evaluate    `siamese.evaluate` on the held-out split at the "default" preset: evaluation.json and the card's figures

OUTPUT/build/ holds the stages' run folders, `plan.json` (every stage's settings, fixed at the first run) and
`done.json` (the finished stages). Running the same command again skips the finished stages and resumes the
running one from its last checkpoint; a training stage killed at any point continues to the same weights.
`budget_hours` scales every stage's steps from the full recipe, in the recipe's proportions, so that they take about
that long on 2 idle CPU cores (`step_seconds`: measured per kind of step at 256 px, batch 8, and scaled to the
build's resolution and batch; the full recipe at 256 px, batch 8 is `REFERENCE_HOURS`).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from filelock import FileLock, Timeout

from .card import FIGURE_NAME, write_model_card
from .data import PairDataset, find_pairs, split_pairs, write_examples
from .decoder import DecoderTrainConfig
from .evaluate import EvalConfig, evaluate
from .fidelity import ScorerConfig, load_scorer
from .files import atomic_write, check_writable
from .folder_ops import add_decoder, add_scorer
from .guide import make_guide
from .model import load_model
from .model_config import label_problem
from .presets import PRESET_NAMES, config_presets
from .stopping import Stopped
from .sweep import run_sweep
from .train import train
from .train_config import MAX_SEED, TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["BuildConfig", "BuildStopped", "build", "begun_build", "plan_stages", "planned_stages", "step_seconds",
           "BUILD_FOLDER", "REFERENCE_HOURS", "STAGES"]

BUILD_FOLDER = "build"
LOCK_NAME = "lock"  # OUTPUT/build/lock: held while a build runs there (a second one is refused)
SWEEP_ROWS = "sweep-rows.json"  # OUTPUT/build/: the sweep's rows as they are measured (a stopped sweep continues)
# seconds per step on 2 idle CPU cores at 256 px, batch 8, whole stages with their checkpoints and previews (skin
# builds: 1-base 1029 steps in 499 s; 2-siamese to 4-locked 1697 steps in 1904 s on a quiet machine, where an earlier
# build measured 1111 in 1605 s; decoder 1741 in 220 s and 1143 in 207 s; scorer 870 in 71 s), and the share of a
# step that does not shrink with the image (at 128 px a base step took 0.184 s, a siamese step 0.41 s)
_SECONDS_AT_256 = {"base": 0.49, "siamese": 1.12, "decoder": 0.15, "scorer": 0.08}
_FIXED_SHARE = {"base": 0.17, "siamese": 0.15}
_DECODER_CROP, _SCORER_SIDE = 96, 128  # the decoder's training crop and the scorer's resolution (at most the model's)
STAGES = ("1-base", "decoder", "scorer", "2-siamese", "3-biased", "4-locked", "assemble", "sweep", "ship", "evaluate")
# the full recipe's training stages: steps, length of the lr/EMA schedule (steps / share), settings
_FULL = {
    "1-base": dict(steps=3600, share=1.0, objective="base", lr=3e-4, warmup_steps=100, ema_decay=0.999, log_every=50),
    "2-siamese": dict(steps=2000, share=1.0, objective="siamese", lr=2e-4, warmup_steps=50, ema_decay=0.99,
                      log_every=20, preview_every=250),
    "3-biased": dict(steps=700, share=0.7, objective="siamese", lr=2e-4, warmup_steps=50, ema_decay=0.99, log_every=20,
                     timestep_bias="later", timestep_bias_multiplier=3.0, timestep_bias_portion=0.5),
    "4-locked": dict(steps=1200, share=0.6, objective="siamese", lr=2e-4, warmup_steps=50, ema_decay=0.99,
                     log_every=20, unlock_decoder=False, timestep_bias="later", timestep_bias_multiplier=3.0,
                     timestep_bias_portion=0.5),
}
_FULL_DECODER_STEPS, _FULL_SCORER_STEPS = 4000, 2000
_FROM = {"1-base": "tiny", "2-siamese": "1-base", "3-biased": "2-siamese", "4-locked": "3-biased"}


def step_seconds(kind: str, resolution: int = 256, batch_size: int = 8) -> float:
    """About how long one step of `kind` ("base", "siamese", "decoder", "scorer") takes on 2 idle CPU cores: the
    measured time at 256 px, batch 8, its image-sized share scaled by the pixels per step. The decoder and the scorer
    train at their own size (a crop, a fixed resolution) and batch whatever the model's."""
    if kind not in _SECONDS_AT_256:
        raise ValueError(f"kind of step must be one of {', '.join(_SECONDS_AT_256)}, got {kind!r}")
    if kind in ("decoder", "scorer"):
        side = _DECODER_CROP if kind == "decoder" else _SCORER_SIDE
        return _SECONDS_AT_256[kind] * (min(side, resolution) / side) ** 2
    work = (resolution / 256) ** 2 * batch_size / 8
    return _SECONDS_AT_256[kind] * (_FIXED_SHARE[kind] + (1 - _FIXED_SHARE[kind]) * work)


def _full_recipe_seconds(resolution: int, batch_size: int) -> float:
    """The full recipe's training stages (budget factor 1) on 2 idle CPU cores."""
    training = sum(full["steps"] * step_seconds(full["objective"], resolution, batch_size) for full in _FULL.values())
    return (training + _FULL_DECODER_STEPS * step_seconds("decoder", resolution, batch_size)
            + _FULL_SCORER_STEPS * step_seconds("scorer", resolution, batch_size))


REFERENCE_HOURS = _full_recipe_seconds(256, 8) / 3600  # the full recipe on 2 idle CPU cores at 256 px, batch 8: 1.9


class BuildStopped(Stopped):
    """The build was asked to stop; the same command resumes (a training stage from its checkpoint, the sweep from
    its measured settings; the other stages start over)."""


@dataclass
class BuildConfig:
    """The settings of a build; the plan made from them is fixed at the first run (OUTPUT/build/plan.json)."""

    data: str
    output: str
    budget_hours: float = REFERENCE_HOURS  # hours the training stages are planned to take on 2 idle CPU cores
    resolution: int = 256
    batch_size: int = 8
    holdout: float = 0.2  # share of the pairs held out for the sweep and the evaluation (split seed 0)
    prompt: str | None = None  # None: guessed from the data folder's name, or the pairs' prompt.json
    name: str = ""  # default: the output folder's name
    seed: int = 0
    sweep_masks: int = 32  # held-out masks the sweep samples
    sweep_seeds: int = 2  # images of each of them per candidate (another seed each)
    sweep_steps: int = 16  # sampling steps in the sweep (the app's default)
    eval_seeds: int = 2  # segmentation seeds of the final evaluation's downstream test; 0: no evaluation
    eval_seg_steps: int = 600  # training steps of each of the evaluation's segmentation networks
    report_to: str = "none"
    overlay: str = "auto"  # on-screen overlays left out of every training stage's loss ("auto") or not ("off")
    label: str | None = None  # what the model makes, for the app's selector (e.g. "skin lesions (dermoscopy)")

    def validate(self) -> None:
        if not isinstance(self.budget_hours, (int, float)) or isinstance(self.budget_hours, bool) \
                or not 0 < self.budget_hours <= 1000:
            raise ValueError(f"budget hours must be a positive number, at most 1000, got {self.budget_hours!r}")
        if not isinstance(self.holdout, (int, float)) or not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be a fraction above 0 and below 1 (the sweep and the evaluation need "
                             f"held-out pairs), got {self.holdout!r}")
        for name, low, high in (("sweep_masks", 4, 1000), ("sweep_seeds", 1, 16), ("sweep_steps", 1, 1000),
                                ("eval_seeds", 0, 16),
                                ("eval_seg_steps", 1, 100000),
                                ("seed", 0, MAX_SEED)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name.replace('_', ' ')} must be a whole number from {low} to {high}, got {value!r}")
        problem = label_problem(self.label)
        if problem:
            raise ValueError(f"label must be {problem}, got {self.label!r}")
        TrainConfig(data=self.data, output=self.output, resolution=self.resolution, batch_size=self.batch_size,
                    holdout=self.holdout, prompt=self.prompt, name=self.name, seed=self.seed,
                    report_to=self.report_to, overlay=self.overlay).validate()  # the settings every stage shares

    def factor(self) -> float:
        """The share of the full recipe's steps that fits the budget at this resolution and batch size."""
        return self.budget_hours * 3600 / _full_recipe_seconds(self.resolution, self.batch_size)

    def train_config(self, stage: str, settings: dict) -> TrainConfig:
        """The TrainConfig of a training stage from its planned settings."""
        build = Path(self.output) / BUILD_FOLDER
        source = _FROM[stage]
        return TrainConfig(
            data=self.data, output=str(build / stage), model=source if source == "tiny" else str(build / source),
            resolution=self.resolution, batch_size=self.batch_size, seed=self.seed, holdout=self.holdout,
            name=self.name or Path(self.output).name, prompt=self.prompt, resume="latest", scorer_steps=0,
            report_to=self.report_to, overlay=self.overlay, **settings)


def plan_stages(config: BuildConfig) -> dict[str, dict]:
    """Every stage's settings, from the budget: the full recipe's steps times `config.factor()` (at least 10)."""
    f = config.factor()
    plan: dict[str, dict] = {}
    for stage, full in _FULL.items():
        settings = {k: v for k, v in full.items() if k not in ("steps", "share")}
        steps = max(10, round(full["steps"] * f))
        schedule = max(steps, round(steps / full["share"]))
        # a loss row at least every tenth of the stage (a short stage stopped before its first row had no curve)
        settings.update(max_steps=schedule, stop_at=steps if schedule > steps else 0,
                        checkpoint_every=max(5, min(200, steps // 10)),
                        log_every=max(1, min(full["log_every"], steps // 10)),
                        warmup_steps=min(steps // 2, round(full["warmup_steps"] * f)))
        if "preview_every" in full:
            settings["preview_every"] = max(10, round(full["preview_every"] * f))
        plan[stage] = settings
    plan["decoder"] = {"steps": max(10, round(_FULL_DECODER_STEPS * f)),
                       "crop": min(_DECODER_CROP, config.resolution)}
    plan["scorer"] = {"steps": max(10, round(_FULL_SCORER_STEPS * f)),
                      "resolution": min(_SCORER_SIDE, config.resolution)}
    return plan


def _stage_seconds(stage: str, settings: dict, config: BuildConfig) -> float:
    """About how long a stage of the plan takes on 2 idle cores, for the ETA (0 for the stages that do not train)."""
    if stage in _FULL:
        return (settings["stop_at"] or settings["max_steps"]) * step_seconds(settings["objective"], config.resolution,
                                                                             config.batch_size)
    if stage in ("decoder", "scorer"):
        return settings["steps"] * step_seconds(stage, config.resolution, config.batch_size)
    return 0.0


class _Record:
    """OUTPUT/build/plan.json and done.json: the plan fixed at the first run, and the finished stages' results."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.done_path = folder / "done.json"
        self.done: dict[str, dict] = json.loads(self.done_path.read_text()) if self.done_path.is_file() else {}

    def begun_plan(self, config: BuildConfig) -> dict | None:
        """The stages fixed at the first run of a build begun here with `config`'s settings (a version that plans
        otherwise resumes it with its own steps), or None; ValueError if it was begun with other settings."""
        path = self.folder / "plan.json"
        if not path.is_file():
            return None
        before = _with_defaults_of_old_plans(json.loads(path.read_text()))
        settings = json.loads(json.dumps(_plan_settings(config)))
        if before.get("config") != settings or not isinstance(before.get("stages"), dict):
            begun = before.get("config") or {}
            changed = [f"{k} {begun.get(k)!r}, now {v!r}" for k, v in sorted(settings.items()) if begun.get(k) != v]
            raise ValueError(f"{self.folder.parent} holds a build begun with other settings (begun with "
                             f"{'; '.join(changed) or 'another plan'}): run it again with the same settings to "
                             f"resume, or build into a new output folder")
        return before["stages"]

    def fix_plan(self, config: BuildConfig) -> dict:
        """The stages this build runs: those fixed at its first run, or `plan_stages(config)`, now fixed."""
        begun = self.begun_plan(config)
        if begun is not None:
            return begun
        plan = plan_stages(config)
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"config": _plan_settings(config), "stages": plan}
        atomic_write(self.folder / "plan.json", (json.dumps(record, indent=2) + "\n").encode())
        return plan

    def finish(self, stage: str, result: dict | None = None) -> None:
        self.done[stage] = result or {}
        atomic_write(self.done_path, (json.dumps(self.done, indent=2) + "\n").encode())


def _with_defaults_of_old_plans(record: dict) -> dict:
    """A plan.json written before a setting existed holds what those stages ran with: no overlay detection, one
    image per mask in the sweep."""
    if isinstance(record.get("config"), dict):
        record["config"].setdefault("overlay", "off")
        record["config"].setdefault("sweep_seeds", 1)
    return record


def _plan_settings(config: BuildConfig) -> dict:
    # the label names the shipped model only (it is read at the ship stage): a resumed build may give another
    return {k: v for k, v in asdict(config).items() if k != "label"}


def planned_stages(config: BuildConfig) -> dict[str, dict]:
    """The stages the build of `config` runs: those fixed at the first run of a build begun in its output folder
    with the same settings, else `plan_stages(config)`."""
    return _Record(Path(config.output) / BUILD_FOLDER).begun_plan(config) or plan_stages(config)


def begun_build(output: str | Path) -> BuildConfig | None:
    """The settings of the build begun in `output` (its build/plan.json; the label is not part of them), or None when
    there is none: building with them resumes it."""
    path = Path(output) / BUILD_FOLDER / "plan.json"
    if not path.is_file():
        return None
    try:
        return BuildConfig(**_with_defaults_of_old_plans(json.loads(path.read_text()))["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a build plan this version reads ({e})") from None


def build(config: BuildConfig, callback: Callable[[dict], None] | None = None, stop: threading.Event | None = None,
          progress_bar: bool = False, device: torch.device | str | None = None) -> Path:
    """Run (or resume) every stage of the build; returns OUTPUT, a complete model folder.

    `device`: where the decoder, the scorer, the sweep and the evaluation run (default: CUDA when available, as the
    training stages, which accelerate places); it is not part of the plan, so a build may resume on another device.

    `callback` receives {"type": "stage", "stage", "index", "total", "eta_s", "stage_s"} before each stage (eta_s: the
    planned seconds of it and the stages after it, stage_s: of it alone), every training event of `siamese.train.train`
    with "stage" added, {"type": "sweep", "done", "total"} in the sweep, and {"type": "done", "output"} at the end.
    Setting `stop` ends the build after the current training step (saved), after the current setting of the sweep
    (the measured ones are kept), within seconds in the evaluation (which starts over), or after the current stage
    of the others (decoder, scorer, assemble, ship: minutes at most): BuildStopped is raised, and the same call
    resumes.
    """
    config.validate()
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    out = Path(config.output)
    check_writable(out)
    find_pairs(config.data)  # the data, checked before anything is written
    emit = callback or (lambda event: None)
    build_dir = out / BUILD_FOLDER
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(build_dir / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ValueError(f"another build is running in {out} (it holds {build_dir / LOCK_NAME}): wait for it to "
                         f"finish or stop it, or build into another output folder") from None
    try:
        return _build_stages(config, build_dir, emit, stop, progress_bar, device)
    finally:
        lock.release()


def _build_stages(config: BuildConfig, build_dir: Path, emit: Callable[[dict], None],
                  stop: threading.Event | None, progress_bar: bool, device: torch.device) -> Path:
    out = Path(config.output)
    record = _Record(build_dir)
    plan = record.fix_plan(config)
    remaining = [s for s in STAGES if s not in record.done and not (s == "evaluate" and not config.eval_seeds)]
    for index, stage in enumerate(STAGES, 1):
        if stage not in remaining:
            continue
        if stop is not None and stop.is_set():
            raise BuildStopped(f"stopped before stage {stage}: run the same build again to resume")
        eta = sum(_stage_seconds(s, plan.get(s, {}), config) for s in remaining[remaining.index(stage):])
        logger.info("stage %d/%d: %s (about %.0f min of training left on 2 idle cores)", index, len(STAGES), stage,
                    eta / 60)
        emit({"type": "stage", "stage": stage, "index": index, "total": len(STAGES), "eta_s": eta,
              "stage_s": _stage_seconds(stage, plan.get(stage, {}), config)})
        try:
            result = _run_stage(stage, config, plan, build_dir, emit, stop, progress_bar, device)
        except BuildStopped:
            raise
        except Stopped as e:  # the sweep (it keeps its measured rows) or the evaluation (it starts over)
            raise BuildStopped(f"{e} (stage {stage}): run the same build again to resume") from e
        record.finish(stage, result)
    emit({"type": "done", "output": str(out)})
    return out


def _run_stage(stage: str, config: BuildConfig, plan: dict, build_dir: Path, emit: Callable[[dict], None],
               stop: threading.Event | None, progress_bar: bool, device: torch.device) -> dict:
    if stage in _FULL:
        train(config.train_config(stage, plan[stage]), lambda e: emit({**e, "stage": stage}), stop, progress_bar)
        if stop is not None and stop.is_set():
            raise BuildStopped(f"stopped in stage {stage}: run the same build again to resume")
        return {}
    parts = build_dir / "parts"  # 1-base's codec with the learned decoder, and the fidelity scorer
    if stage == "decoder":
        add_decoder(str(build_dir / "1-base"), config.data, DecoderTrainConfig(seed=config.seed, **plan["decoder"]),
                    output=str(parts), holdout=config.holdout, device=device)
        return {}
    if stage == "scorer":
        add_scorer(parts, config.data, ScorerConfig(seed=config.seed, **plan["scorer"]), holdout=config.holdout,
                   holdout_seed=0, progress_bar=progress_bar, device=device)
        return {"held_out_dice": load_scorer(parts).config.held_out_dice}
    if stage == "assemble":
        model, weak = load_model(build_dir / "4-locked"), load_model(build_dir / "2-siamese")
        decoder = load_model(parts).codec.decoder
        model.codec.set_decoder(decoder)
        weak.codec.set_decoder(decoder)
        model.guide = make_guide(model, weak, "stage 2-siamese of its build")
        model.scheduler_config["timestep_spacing"] = "trailing"
        model.save_pretrained(build_dir / "assembled")
        _copy_scorer(parts, build_dir / "assembled")
        return {}
    if stage == "sweep":
        return _sweep(config, build_dir, emit, device, progress_bar, stop)
    if stage == "ship":
        return _ship(config, plan, build_dir)
    if stage == "evaluate":
        report = build_dir / "evaluation"
        default = config_presets({"sampling_presets": _presets(build_dir)})["default"]  # what the app samples with
        evaluate(EvalConfig(data=config.data, model=config.output, test_fraction=config.holdout, seed=0,
                            seeds=config.eval_seeds, seg_steps=config.eval_seg_steps, steps=default["steps"],
                            scheduler=default["scheduler"], guidance_scale=default["guidance_scale"],
                            cache_interval=default["cache_interval"], precision=default["precision"],
                            output=str(report), device=str(device)),
                 progress_bar=progress_bar, stop=stop)
        _card_figure(report / "fidelity.png", Path(config.output) / FIGURE_NAME)
        write_model_card(config.output)  # now with the figure
        return {}  # the report is OUTPUT/evaluation.json, and in the model card
    raise ValueError(f"unknown build stage {stage!r}")


def _card_figure(grid: Path, path: Path) -> None:
    """The evaluation's held-out grid (real | mask | generated) as the card's JPEG figure (about a fifth of the PNG)."""
    image = cv2.imread(str(grid), cv2.IMREAD_COLOR)
    if image is None:
        logger.warning("no held-out figure for the card: %s cannot be read", grid)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes())


def _copy_scorer(parts: Path, folder: Path) -> None:
    shutil.copytree(parts / "segmenter", folder / "segmenter", dirs_exist_ok=True)


def _held_out(config: BuildConfig, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sweep's held-out masks and images, and the training images, at the model resolution."""
    train_pairs, held = split_pairs(find_pairs(config.data), config.holdout, 0)
    test = PairDataset(config.data, resolution, pairs=held[:config.sweep_masks])
    keep = [i for i, m in enumerate(test.masks) if 0 < m.mean() < 1]
    train_images = PairDataset(config.data, resolution, pairs=train_pairs[:200]).images
    return test.masks[keep], test.images[keep], train_images


def _sweep(config: BuildConfig, build_dir: Path, emit: Callable[[dict], None], device: torch.device,
           progress_bar: bool, stop: threading.Event | None) -> dict:
    model = load_model(build_dir / "assembled", device=device)
    scorer = load_scorer(build_dir / "assembled", device=device)
    masks, real, train_images = _held_out(config, model.config.resolution)
    return run_sweep(model, scorer, masks, real, train_images, build_dir / SWEEP_ROWS, config.sweep_seeds,
                     config.sweep_steps, config.seed, lambda done, total: emit({"type": "sweep", "done": done,
                                                                               "total": total}), progress_bar, stop)


def _chosen(build_dir: Path) -> dict:
    return json.loads((build_dir / "done.json").read_text())["sweep"]["chosen"]


def _presets(build_dir: Path) -> dict[str, dict]:
    sweep = json.loads((build_dir / "done.json").read_text())["sweep"]
    guidance = sweep["chosen"]["guidance_scale"]
    return sweep.get("presets") or {name: {"guidance_scale": guidance} for name in PRESET_NAMES}


def _ship(config: BuildConfig, plan: dict, build_dir: Path) -> dict:
    out = Path(config.output)
    chosen = _chosen(build_dir)
    model = load_model(build_dir / "assembled")
    model.config.control_scale, model.config.control_end = chosen["control_scale"], chosen["control_end"]
    model.config.autoguidance = chosen["autoguidance"]
    # the presets, which the app and `sample` read: the sweep's sampler and steps with the chosen guidance (a sweep
    # that measured no sampler: the chosen guidance with the fallback's speed settings)
    model.config.sampling_presets = _presets(build_dir)
    if chosen["autoguidance"] == 1.0:
        model.guide = None
    model.config.label = config.label
    model.save_pretrained(out, dtype=torch.float16)
    _copy_scorer(build_dir / "parts", out)
    write_examples(config.data, config.holdout, model.config.resolution, out)
    for name in ("train_config.json",):
        (out / name).write_text((build_dir / "4-locked" / name).read_text())
    _merge_metrics([build_dir / s for s in _FULL], out / "metrics.csv")
    done = json.loads((build_dir / "done.json").read_text())
    summary = {"plan": plan, "budget_hours": config.budget_hours, "factor": round(config.factor(), 4),
               "sweep": done.get("sweep"), "scorer_held_out_dice": done.get("scorer", {}).get("held_out_dice"),
               "recommended": {"control_scale": chosen["control_scale"], "control_end": chosen["control_end"],
                               "guidance_scale": chosen["guidance_scale"], "autoguidance": chosen["autoguidance"]}}
    atomic_write(out / "build.json", (json.dumps(summary, indent=2) + "\n").encode())
    write_model_card(out)
    return {}


def _merge_metrics(folders: list[Path], path: Path) -> None:
    """Every training stage's metrics.csv rows in one file, with a `stage` column first."""
    rows, header = [], None
    for folder in folders:
        with open(folder / "metrics.csv", newline="") as f:
            reader = csv.reader(f)
            head = next(reader)
            header = header or head
            rows += [[folder.name, *row] for row in reader]
    with open(path.with_suffix(".tmp"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stage", *(header or [])])
        writer.writerows(rows)
    path.with_suffix(".tmp").replace(path)

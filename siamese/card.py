"""Model cards: the README.md of a model or run folder, with YAML front matter for the Hugging Face hub.

`write_model_card(folder)` (re)writes a generated card from what the folder holds: siamese_config.json, the
run's train_config.json, the last row of metrics.csv, and evaluation.json (written by `evaluate`). `train`
calls it at every checkpoint and at the end (through `save_pretrained`), `evaluate` after scoring a local
folder, `push` before uploading. A card somebody wrote (a README.md without GENERATED_MARK, like the bundled
model's) keeps its text: only front-matter keys it lacks are added.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .eval_report import format_report
from .files import atomic_write, is_hub_id
from .params import describe_mask
from .presets import config_presets

logger = logging.getLogger(__name__)

__all__ = ["GENERATED_MARK", "TAGS", "PIPELINE_TAG", "EVALUATION_NAME", "FIGURE_NAME", "write_model_card", "render_model_card",
           "record_evaluation", "base_model_of"]

CARD_NAME = "README.md"
EVALUATION_NAME = "evaluation.json"
FIGURE_NAME = "figures/held-out.jpg"  # real | mask | generated for held-out pairs (written by `build`)
BUILD_NAME = "build.json"
# the checks a built model's card states: fidelity share of the real ceiling, copying ratio, colour/texture and
# feature KID (the bundled polyp model's card holds its models to the same KID targets)
FIDELITY_TARGET, COPYING_TARGET, KID_TARGETS = 0.95, 0.9, (5.0, 1.0)
GENERATED_MARK = ("<!-- siamese: generated model card; rewritten by train, evaluate and push. "
                  "Remove this line to keep your own text. -->")
TAGS = ["siamese-diffusion", "medical-imaging", "image-segmentation", "controlnet", "diffusers"]
PIPELINE_TAG = "image-to-image"
LIBRARY_NAME = "diffusers"
_LOSS_KEYS = ("loss", "loss_mask", "loss_image", "loss_consistency", "loss_regularization")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        if path.exists():
            logger.warning("%s cannot be read for the model card (%s)", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _last_metrics(path: Path) -> dict:
    """The last row of metrics.csv ({} when there is none)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if (r.get("step") or "").isdigit()]
    except (OSError, ValueError, csv.Error) as e:
        if path.exists():
            logger.warning("%s cannot be read for the model card (%s)", path, e)
        return {}
    return rows[-1] if rows else {}


def _card_front_matter(path: Path) -> dict:
    try:
        return ModelCard.load(path).data.to_dict()
    except Exception:  # a card without front matter, or not readable: nothing to inherit
        return {}


def base_model_of(model: str | None) -> str | None:
    """The hub id a run started from: the `--model` hub id, or the base_model of a local start folder's card
    (None for the tiny preset, trained from scratch)."""
    if not model or model == "tiny":
        return None
    path = Path(model).expanduser()
    if path.is_dir():
        base = _card_front_matter(path / CARD_NAME).get("base_model")
        return base if isinstance(base, str) and is_hub_id(base) else None
    return model if is_hub_id(model) else None


def _shown(value) -> str:
    """A hub id as it is; a local path by its last part (a card may be published: no server paths in it)."""
    text = str(value)
    return text if is_hub_id(text) and not Path(text).expanduser().exists() else Path(text).name


def _table(rows: list[tuple[str, object]]) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]
    return "\n".join(lines)


def render_model_card(folder: str | Path, repo_id: str | None = None, license: str = "other",
                      datasets: list[str] | None = None) -> ModelCard:
    """A generated card for `folder` (its body starts with GENERATED_MARK). `repo_id`: shown in the usage
    examples (default: the folder path); `datasets`: hub dataset ids of the training data, when it has some."""
    folder = Path(folder)
    settings = _read_json(folder / "siamese_config.json")
    train = _read_json(folder / "train_config.json")
    last = _last_metrics(folder / "metrics.csv")
    evaluation = _read_json(folder / EVALUATION_NAME)
    name = settings.get("name") or folder.name
    base = base_model_of(train.get("model"))
    data = ModelCardData(license=license, tags=list(TAGS), base_model=base, datasets=datasets or None,
                         pipeline_tag=PIPELINE_TAG, library_name=LIBRARY_NAME, model_name=name)
    where = repo_id or str(folder)
    resolution = settings.get("resolution", "?")
    lines = [GENERATED_MARK, "", f"# {name}", "",
             f"A [Siamese-Diffusion](https://arxiv.org/abs/2505.06068) model (CVPR 2025): it generates "
             f"{resolution}x{resolution} images from binary lesion masks, so that each image and its mask form a "
             "synthetic training pair for segmentation. Made with Siamese-Diffusion Studio (the `siamese` package)."]
    if settings:
        codec = settings.get("codec", {}).get("type", "vae")
        lines += [""] + ([f"- makes: {settings['label']}"] if settings.get("label") else [])
        lines += [f"- default prompt: \"{settings.get('prompt', '')}\"",
                  "- recommended mask strength (ControlNet conditioning scale): "
                  f"{describe_mask(settings.get('control_scale', 1.0), settings.get('control_end', 1.0))}",
                  f"- recommended autoguidance: {settings.get('autoguidance', 1.0):g}"
                  + (" (with the guide in guide/, a weaker version of the model)" if settings.get('autoguidance', 1.0)
                     != 1 else " (off)"),
                  f"- latent codec: {'the tiny preset patch codec' if codec == 'patch' else 'Stable Diffusion VAE'}"]
    preset = config_presets(settings)["default"]
    steps, guidance, scheduler = preset["steps"], preset["guidance_scale"], preset["scheduler"]
    lines += ["", "**Generated images are synthetic and not for clinical use.** The terms of the training data and of "
              "the base model apply.", "", "## Use", "", "```bash",
              f"python -m siamese sample --model {where} --masks MASKS --output OUT --steps {steps} "
              f"--guidance {guidance:g} --scheduler {scheduler}", "```", "",
              "With diffusers alone (the folder carries its pipeline code):", "",
              "```python", "import torch", "from diffusers import DiffusionPipeline", "",
              f"pipe = DiffusionPipeline.from_pretrained(\"{where}\", trust_remote_code=True, dtype=torch.float32)",
              f"image = pipe(image=mask, num_inference_steps={steps}, guidance_scale={guidance:g},",
              "             generator=torch.Generator().manual_seed(0)).images[0]", "```"]
    if (folder / FIGURE_NAME).is_file():
        lines += ["", f"![held-out pairs: real image, its mask, generated from the mask]({FIGURE_NAME})", "",
                  "Held-out pairs (never seen in training): the real image, its mask, and an image generated from the "
                  "mask at the recommended settings."]
    lines += _build_section(_read_json(folder / BUILD_NAME), evaluation)
    if train:
        max_steps = train.get("max_steps")
        step = int(last["step"]) if last else 0
        end = min(max_steps or 0, train.get("stop_at") or max_steps or 0)  # a build stops some stages early
        state = "finished" if end and step + train.get("log_every", 1) > end else f"in progress or stopped at step {step}"
        model = train.get("model")
        started = "from scratch (tiny preset)" if model == "tiny" else f"from `{_shown(model)}`"
        shown = {**train, "model": _shown(train.get("model", ""))}
        lines += ["", "## Training", "", f"Objective `{train.get('objective')}`, {started}, on "
                  f"{train.get('num_pairs', '?')} pairs of `{_shown(train.get('data', ''))}`; {step} of {max_steps} "
                  f"steps ({state}).", "",
                  _table([(k, v) for k, v in shown.items() if k not in ("data", "output", "resume")])]
    if last:
        lines += ["", f"## Last losses (metrics.csv, step {last['step']})", "", "| term | value |", "|---|---|"]
        lines += [f"| {k} | {last[k]} |" for k in (*_LOSS_KEYS, "lr") if last.get(k) not in (None, "")]
    if evaluation:
        try:
            settings = evaluation.get("settings", {})
            text = format_report({**evaluation, "data": _shown(evaluation.get("data", "")),
                                  "settings": {**settings, "model": _shown(settings.get("model", ""))}})
        except (KeyError, TypeError, ValueError) as e:
            logger.warning("%s is not an evaluation report (%s)", folder / EVALUATION_NAME, e)
        else:
            lines += ["", "## Evaluation", "", "`python -m siamese evaluate` on held-out real pairs "
                      f"({EVALUATION_NAME} has every figure):", "", "```text", text, "```"]
    else:
        lines += ["", "## Evaluation", "", f"Not evaluated yet: `python -m siamese evaluate --model {where} "
                  "--data DATA` scores mask fidelity, downstream benefit, realism, diversity and mask use."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _sweep_fidelity(row: dict) -> str:
    """A sweep row's fidelity cell; rows written before the sweep measured its standard error hold the mean alone."""
    se = row.get("fidelity_se")
    return f"{row['fidelity']:.3f}" + ("" if se is None else f" +- {se:.3f}")


def _sweep_kids(row: dict) -> str:
    """A sweep row's two KID cells; rows written before the sweep measured the feature KID hold the colour/texture
    KID x1e3 alone."""
    if "feature_kid" not in row:
        return f"{row['kid'] / 1e3:.3g} | not measured"
    return f"{row['kid']:.3g} | {row['feature_kid']:.3g}"


def _build_section(build: dict, evaluation: dict) -> list[str]:
    """The card's "Build" section from build.json (the stages' steps, the sweep and the chosen settings) and the
    checks a built model is held to, from evaluation.json ([] for a folder that was not built)."""
    plan, sweep = build.get("plan") or {}, build.get("sweep") or {}
    if not plan:
        return []
    stages = ", ".join(f"{name} {stage.get('stop_at') or stage.get('max_steps') or stage.get('steps')}"
                       for name, stage in plan.items() if isinstance(stage, dict))
    lines = ["", "## Build", "", f"Made by `python -m siamese build --budget-hours {build.get('budget_hours', 0):.4g}` "
             f"(training planned to take that long on 2 idle CPU cores); steps per stage: {stages}."]
    if sweep.get("rows"):
        lines += ["", f"Settings sweep on {sweep.get('masks')} held-out masks, {sweep.get('images_per_mask', 1)} "
                  f"image(s) each ({sweep.get('scheduler')}, {sweep.get('steps')} steps; fidelity: the scorer's Dice "
                  f"+- its standard error over the masks, real ceiling {sweep.get('ceiling', 0):.3f}; KIDs as "
                  f"`evaluate` prints them, the feature KID on the scorer's network; of the faithful settings, whose "
                  f"fidelity less its standard error reaches {FIDELITY_TARGET} of the ceiling, the one nearest the "
                  f"KID targets is chosen; then the fewest sampling steps that keep its quality):",
                  "", "| sampler | mask strength | guidance | autoguidance | fidelity | colour/texture KID "
                  "| feature KID |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r.get('scheduler', sweep.get('scheduler'))} {r.get('steps', sweep.get('steps'))} | "
                  f"{r['control_scale']:g} | {r['guidance_scale']:g} | {r['autoguidance']:g} | "
                  f"{_sweep_fidelity(r)} | {_sweep_kids(r)} |" for r in sweep["rows"]]
        if sweep.get("presets"):
            lines += ["", "Sampling presets (`siamese_config.json`): " + "; ".join(
                f"{name} {p['scheduler']} {p['steps']} steps, guidance {p['guidance_scale']:g}"
                for name, p in sweep["presets"].items()) + "."]
    try:
        fidelity = evaluation["fidelity"]["generated"]["dice"] / evaluation["fidelity"]["real"]["dice"]
        copying = evaluation["memorisation"]["ratio"]
        kids = [(name, evaluation["realism"][key]["generated"]["mean"], target) for name, key, target in
                (("colour/texture", "kid_statistics", KID_TARGETS[0]), ("feature", "kid_features", KID_TARGETS[1]))]
    except (KeyError, TypeError, ZeroDivisionError):
        return lines
    lines += ["", "Checks on the held-out split (evaluation below):", "",
              f"- fidelity Dice / real ceiling {fidelity:.3f} (target >= {FIDELITY_TARGET}: "
              f"{'met' if fidelity >= FIDELITY_TARGET else 'short'})"]
    lines += [f"- {name} KID {value:.2f} (target <= {target:g}: {'met' if value <= target else 'short'})"
              for name, value, target in kids]
    lines.append(f"- nearest-training-image distance, generated / held-out real {copying:.3f} (below {COPYING_TARGET} "
                 f"would mean copying: {'no copying' if copying >= COPYING_TARGET else 'SHORT: the model copies'})")
    return lines


def _is_generated(path: Path) -> bool:
    return not path.exists() or GENERATED_MARK in path.read_text(encoding="utf-8", errors="replace")


def write_model_card(folder: str | Path, repo_id: str | None = None, license: str = "other",
                     datasets: list[str] | None = None) -> Path:
    """Write FOLDER/README.md (atomically): a generated card, or, over a card somebody wrote, that card with the
    front-matter keys it lacks (license, tags, pipeline_tag, library_name) added and its text unchanged."""
    folder = Path(folder)
    path = folder / CARD_NAME
    if _is_generated(path):
        card = render_model_card(folder, repo_id, license, datasets)
    else:
        try:
            card = ModelCard.load(path)
        except Exception as e:  # e.g. front matter that is not YAML: somebody's text, left as it is
            logger.warning("%s is a hand-written card that cannot be parsed (%s): left as it is", path, e)
            return path
        wanted = {"license": license, "pipeline_tag": PIPELINE_TAG, "library_name": LIBRARY_NAME}
        missing = {k: v for k, v in wanted.items() if getattr(card.data, k, None) is None}
        tags = list(card.data.tags or [])
        new_tags = [t for t in TAGS if t not in tags]
        if not missing and not new_tags:
            return path
        for key, value in missing.items():
            setattr(card.data, key, value)
        card.data.tags = tags + new_tags
        logger.info("%s is a hand-written card: added front matter %s", path, sorted(missing) + new_tags)
    atomic_write(path, str(card).encode("utf-8"))
    return path


def record_evaluation(model: str | Path, report: dict) -> Path | None:
    """Save an evaluation report in the evaluated model's folder (evaluation.json) and add it to its card, when
    the model is a local folder with a generated card that can be written; otherwise leave it and say why."""
    folder = Path(model).expanduser()
    if not (folder / "siamese_config.json").is_file():
        logger.info("evaluation not recorded in the model: %s is not a local model folder", model)
        return None
    if not _is_generated(folder / CARD_NAME):
        logger.info("evaluation not recorded in %s: its README.md was written by hand", folder)
        return None
    try:
        atomic_write(folder / EVALUATION_NAME, (json.dumps(report, indent=2) + "\n").encode())
        return write_model_card(folder)
    except OSError as e:
        logger.warning("evaluation not recorded in %s: the folder cannot be written (%s)", folder, e.strerror or e)
        return None

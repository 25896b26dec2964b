"""Training: one flat loop on accelerate, for one process or many (torchrun / accelerate launch).

Run folder (`output`):
    train_config.json          TrainConfig + num_processes + effective batch size
    init/                      the tiny preset's starting model, for resuming (written atomically; rebuilt
                               from the settings when missing or damaged)
    metrics.csv                every loss term, lr and it/s, every `log_every` steps
    checkpoints/step-XXXXXXX/  trainable weights, optimiser state, step, EMA of the weights when on, the
                               partial sums of the next metrics row (written atomically; last K kept)
    previews/step-XXXXXXX.png  sampled from fixed training masks every `preview_every` steps
    logs/siamese/              TensorBoard files, with report_to "tensorboard" (siamese.tracking)
    README.md                  the model card: settings, last losses (siamese.card), at every checkpoint
    siamese_config.json unet/ controlnet/ ...   the trained model folder (at the end, or when stopped;
                               the EMA weights when `ema_decay` > 0)

Batches, timesteps, noise, flips and prompt dropout are pure functions of (seed, step, micro-step,
process), so a resumed run continues exactly where the interrupted one was, whenever it was killed: every
file is written to a temporary name and renamed, and metrics.csv rows after the checkpoint are dropped and
redone.

Progress: a log event every `log_every` steps (a metrics.csv row), and besides after the first step of a
process and after every step that ends LIVE_LOG_SECONDS or more after the previous event, so that a long run
shows its losses within seconds whatever `log_every`.

Objectives: `siamese` (METHOD.md), `controlnet` (loss_mask alone: the paper's baseline) and `base`
(text-to-image pre-training of a whole UNet from scratch, the first stage of the tiny preset).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import tracking
from .card import write_model_card
from .checkpoints import EMA, checkpoint_metrics, ema_decay_at, latest_checkpoint, load_checkpoint, save_checkpoint
from .codec import PatchCodec
from .data import PairDataset, find_pairs, split_pairs
from .fidelity import ScorerConfig
from .files import atomic_folder, atomic_write, check_writable
from .folder_ops import add_scorer
from .model import SiameseModel, build_tiny, load_model
from .model_config import ModelLoadError
from .objective import LOSS_KEYS, base_losses, controlnet_losses, siamese_losses
from .overlay import attach_overlay, keep_weights
from .sampling import sample
from .schedule import (batch_generator, batch_indices, lr_at, param_groups, timestep_weights,
                       trainable_parameters)
from .train_config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train", "TrainingDiverged", "latest_checkpoint"]

LIVE_LOG_SECONDS = 10.0  # log events this far apart at most (or one per step), besides the metrics rows


class TrainingDiverged(ValueError):
    """A loss or a trained weight that is not a finite number (too high a learning rate): the run stops before it
    steps or saves again; no model folder is written, the checkpoints saved before are kept."""


def _diverged(output: Path, step: int, what: str, lr: float) -> TrainingDiverged:
    """The one-line error of a run that diverged at `step`, naming the last checkpoint it keeps."""
    last = latest_checkpoint(output)
    kept = f"; its last checkpoint, {last.name}, is kept" if last is not None else ""
    return TrainingDiverged(f"training diverged at step {step}: {what} is not a finite number, so the run is stopped "
                            f"and no model is saved{kept}. Train again with a lower learning rate (it was {lr:g})")


def _on_any_process(flag: bool, world: int, device: torch.device) -> bool:
    """Whether `flag` is set on any process (every process then takes the same branch)."""
    if world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _finite(params: dict[str, torch.nn.Parameter]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params.values())


# -- model -------------------------------------------------------------------------------------
def load_init(init_dir: Path) -> SiameseModel | None:
    """The starting model saved in a run's init/, or None when it is missing or damaged (a run killed while
    versions before atomic writes wrote it): the caller rebuilds it, which gives the same model."""
    if not (init_dir / "siamese_config.json").exists():
        return None
    try:
        return load_model(init_dir)
    except ModelLoadError as e:
        logger.warning("%s is damaged (%s): rebuilding the starting model from the run's settings", init_dir, e)
        return None


def save_folder_atomically(model: SiameseModel, folder: Path) -> Path:
    """`model.save_pretrained(folder)` through FOLDER.tmp and a rename: the folder is complete or absent."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
    return folder


def build_model(config: TrainConfig, dataset: PairDataset) -> SiameseModel:
    """The model a run starts from: a tiny preset (codec statistics fitted on the data) or a loaded folder."""
    if config.model == "tiny":
        images = torch.from_numpy(dataset.images[:256]).permute(0, 3, 1, 2).float() / 127.5 - 1
        model = build_tiny(config.resolution, dataset.prompt, PatchCodec.fit(images),
                           seed=config.seed, name=config.name or "siamese-tiny")
    else:
        model = load_model(config.model)
        if model.config.resolution != config.resolution:
            logger.info("training at %d (model was %d)", config.resolution, model.config.resolution)
            model.config.resolution = config.resolution
        if config.name:
            model.config.name = config.name
        if not model.config.prompt:
            model.config.prompt = dataset.prompt
        if model.guide is not None:  # a weaker version of the starting weights, not of what this run makes
            logger.info("the starting model's autoguidance guide is not carried into the run (add-guide adds one)")
            model.guide, model.config.autoguidance = None, 1.0
    if config.objective != "base" and model.controlnet is None:
        model.add_controlnet(config.seed)
    return model


def _make_optimizer(params: dict[str, torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(params, config.zero_lr_scale)
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("8-bit AdamW needs the bitsandbytes package: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _preview(model: SiameseModel, dataset: PairDataset, step: int, output: Path):
    """Four images sampled from fixed training masks (DDIM 20 steps), saved as one PNG strip."""
    from PIL import Image

    n = min(4, len(dataset))
    idx = list(range(0, len(dataset), max(1, len(dataset) // n)))[:n]
    hint = torch.from_numpy(dataset.masks[idx]).float().unsqueeze(1).expand(-1, 3, -1, -1)
    gens = [torch.Generator("cpu").manual_seed(i) for i in range(n)]
    modes = {m: m.training for m in (model.unet, model.controlnet)}
    model.eval()
    images = sample(model, hint, [dataset.prompt] * n, gens, steps=20, guidance_scale=3.0, scheduler="dpm++")
    for m, mode in modes.items():
        m.train(mode)
    top = np.concatenate(list((images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)), 1)
    bottom = np.concatenate([np.repeat(m[..., None] * 255, 3, 2) for m in dataset.masks[idx]], 1)
    strip = Image.fromarray(np.concatenate([top, bottom], 0))
    (output / "previews").mkdir(exist_ok=True)
    strip.save(output / "previews" / f"step-{step:07d}.png")
    return strip


# -- the loop ----------------------------------------------------------------------------------
def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the header and the rows of metrics.csv up to `last_step` (rewritten atomically)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= last_step]
    if len(kept) != len(rows):
        text = io.StringIO(newline="")
        csv.writer(text).writerows(kept)
        atomic_write(path, text.getvalue().encode())


def train(
    config: TrainConfig,
    callback: Callable[[dict], None] | None = None,
    stop: threading.Event | None = None,
    progress_bar: bool = False,
) -> Path:
    """Train and return the run folder, which is also a loadable model folder.

    With `base_steps` (model "tiny"), the UNet is first pre-trained alone (objective base) in
    OUTPUT/base, then the ControlNet is trained from it: the Siamese and ControlNet objectives keep the
    UNet encoder frozen, which from scratch would leave it random. Both stages resume.
    `callback` receives events: {"type": "start", "stage", ...}, {"type": "log", "step", <loss keys>, "lr", "it_per_s",
    "eta_s", "row"}, {"type": "preview", "step", "image"}, {"type": "checkpoint", "step", "path"}, {"type": "end",
    "step", "stopped"}. A log event with "row" True is a metrics.csv row (every `log_every` steps and the last:
    the mean over the steps since the previous row); the others (after the first step of the process, then
    LIVE_LOG_SECONDS or more apart) give the mean since the previous log event. Setting `stop` ends the run after the
    current step; it is saved first. Settings and the output folder are checked before anything is written.
    """
    config.validate()
    check_writable(config.output)
    if config.base_steps:
        base = replace(config, output=str(Path(config.output) / "base"), objective="base",
                       max_steps=config.base_steps, base_steps=0, preview_every=0)
        base_output = _train(base, callback, stop, progress_bar)
        if stop is not None and stop.is_set():
            return base_output
        config = replace(config, model=str(base_output), base_steps=0)
    return _train(config, callback, stop, progress_bar)


def _train(config: TrainConfig, callback: Callable[[dict], None] | None, stop: threading.Event | None,
           progress_bar: bool) -> Path:
    from accelerate import Accelerator

    emit = callback or (lambda event: None)
    output = Path(config.output)
    # on a machine without CUDA, accelerate finds torchrun's processes only when told it runs on the CPU
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                              **tracking.accelerator_kwargs(config.report_to, output))  # trackers: OUTPUT/logs
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process

    # 1. data and model
    resume_from = None
    if config.resume:
        resume_from = latest_checkpoint(output) if config.resume == "latest" else Path(config.resume)
        if config.resume != "latest" and not (resume_from / "state.json").is_file():
            raise ValueError(f"{config.resume} is not a checkpoint folder (expected state.json inside)")
        if resume_from is None:
            logger.info("no checkpoint in %s: starting from step 0", output)
    elif latest_checkpoint(output) is not None:  # a fresh run would mix its checkpoints and metrics with these
        raise ValueError(f"{output} already holds a training run (checkpoints/): resume it (--resume latest) or "
                         "train into another output folder")
    found = pairs = find_pairs(config.data)
    if config.holdout > 0:
        pairs, held = split_pairs(found, config.holdout, config.holdout_seed)
        logger.info("holding out %d pairs (split seed %d); training on %d", len(held), config.holdout_seed, len(pairs))
    dataset = PairDataset(config.data, config.resolution, config.prompt, pairs)
    init_dir = output / "init"
    model = load_init(init_dir) if resume_from is not None else None  # the exact starting point of the run
    write_init = model is None and config.model == "tiny"  # fresh, or the init/ of a killed run was incomplete
    if model is None:
        model = build_model(config, dataset)
    overlay_share = attach_overlay(dataset, model.latent_size) if config.overlay == "auto" else 0.0
    device = accelerator.device
    model.to(device)
    for m in (model.unet, model.controlnet):
        if m is not None:
            m.to(memory_format=torch.channels_last)
            if config.gradient_checkpointing:
                m.enable_gradient_checkpointing()
    params = trainable_parameters(model, config.objective, config.unlock_decoder)
    optimizer = accelerator.prepare(_make_optimizer(params, config))
    alphas_cumprod = model.alphas_cumprod.to(device)
    if main:
        output.mkdir(parents=True, exist_ok=True)
        if write_init:
            save_folder_atomically(model, init_dir)  # the exact starting point, for resuming
        effective = config.batch_size * config.gradient_accumulation * world
        record = {**asdict(config), "num_processes": world, "effective_batch_size": effective,
                  "trainable_parameters": sum(p.numel() for p in params.values()), "num_pairs": len(dataset),
                  "overlay_share": overlay_share}
        atomic_write(output / "train_config.json", (json.dumps(record, indent=2) + "\n").encode())
        tracking.start(accelerator, record)

    # 2. resume
    start = 0
    sums, count = {k: 0.0 for k in LOSS_KEYS}, 0  # the next metrics.csv row: sums of the per-step losses
    if resume_from is not None:
        start = load_checkpoint(resume_from, params, optimizer.optimizer)
        saved = checkpoint_metrics(resume_from)
        if saved:
            sums, count = {k: float(saved["sums"].get(k, 0.0)) for k in LOSS_KEYS}, int(saved["count"])
        logger.info("resumed from %s at step %d", resume_from, start)
    ema = EMA(params) if config.ema_decay > 0 else None
    if ema is not None and resume_from is not None and not ema.load(resume_from):
        logger.info("checkpoint has no EMA: the average starts from its weights")
    for m in (model.unet, model.controlnet):
        if m is not None:
            m.train()

    metrics_path = output / "metrics.csv"
    if main and (start == 0 or not metrics_path.exists()):
        with open(metrics_path, "w", newline="") as f:
            csv.writer(f).writerow(["step", *LOSS_KEYS, "lr", "it_per_s", "elapsed_s"])
    elif main:  # resumed: drop the rows logged after the checkpoint, they are about to be redone
        _truncate_metrics(metrics_path, start)
    emit({"type": "start", "stage": config.objective, "step": start, "max_steps": config.max_steps, "num_processes": world,
          "output": str(output)})
    bar = None
    if progress_bar and main:
        from tqdm.auto import tqdm
        bar = tqdm(total=config.max_steps, initial=start, desc="train", dynamic_ncols=True)

    objective = {"siamese": siamese_losses, "controlnet": controlnet_losses, "base": base_losses}[config.objective]
    live, live_count = {k: 0.0 for k in LOSS_KEYS}, 0  # the next log event's sums
    t0 = t_row = t_event = time.perf_counter()
    timed_row = 0  # steps of this process since t_row (a resumed row's first steps ran in another process)
    step = start
    stopped = 0 < config.stop_at <= start  # resumed at or past --stop-at: saved again as it is
    t_weights = timestep_weights(config, len(alphas_cumprod))
    try:
        while step < config.max_steps and not stopped:
            # 3. learning rate
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            progress = step / config.max_steps
            # 4. forward / backward over the micro-batches
            step_losses = {k: 0.0 for k in LOSS_KEYS}
            for micro in range(config.gradient_accumulation):
                gen = batch_generator(config.seed, step, micro, rank)
                position = ((step * config.gradient_accumulation + micro) * world + rank) * config.batch_size
                idx = batch_indices(len(dataset), config.seed, position, config.batch_size)
                batch = dataset.batch(idx, gen, flip=config.flip, prompt_dropout=config.prompt_dropout)
                with torch.no_grad():
                    x0 = model.codec.encode(batch["image"].to(device, model.dtype), gen)
                    prompt_embeds = model.encode_prompt(batch["prompts"])
                if t_weights is None:
                    t = torch.randint(0, len(alphas_cumprod), (len(idx),), generator=gen).to(device)
                else:
                    t = torch.multinomial(t_weights, len(idx), replacement=True, generator=gen).to(device)
                noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(device)
                weight = keep_weights(batch["overlay"], x0.shape[-2:]).to(device) if "overlay" in batch else None
                scale = 1.0 / config.gradient_accumulation
                with accelerator.autocast():
                    losses = objective(
                        model.unet, controlnet=model.controlnet, x0=x0,
                        mask_hint=batch["mask_hint"].to(device).contiguous(memory_format=torch.channels_last),
                        image_hint=batch["image_hint"].to(device).contiguous(memory_format=torch.channels_last),
                        prompt_embeds=prompt_embeds, t=t, noise=noise, progress=progress,
                        alphas_cumprod=alphas_cumprod, backward=lambda loss: accelerator.backward(loss * scale),
                        weight=weight,
                    )
                for k in LOSS_KEYS:
                    if k in losses:
                        step_losses[k] += float(losses[k]) / config.gradient_accumulation
            # 5. a loss that is not finite stops the run before the weights take it in; average gradients over
            #    processes, step
            if _on_any_process(not all(map(math.isfinite, step_losses.values())), world, device):
                raise _diverged(output, step + 1, f"the loss ({step_losses['loss']:g})", lr)
            if world > 1:
                for p in params.values():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(ema_decay_at(step, config.ema_decay))
            step += 1
            for k in LOSS_KEYS:
                sums[k] += step_losses[k]
                live[k] += step_losses[k]
            count, live_count, timed_row = count + 1, live_count + 1, timed_row + 1
            if bar is not None:
                bar.update(1)
            # 6. log: a metrics.csv row every log_every steps (and the last); a live event besides at the first
            #    step of this process and every LIVE_LOG_SECONDS
            now = time.perf_counter()
            is_row = step % config.log_every == 0 or step == config.max_steps
            if is_row or step == start + 1 or now - t_event >= LIVE_LOG_SECONDS:
                if is_row:
                    values = {k: sums[k] / count for k in LOSS_KEYS}
                    it_per_s = timed_row / max(now - t_row, 1e-9)
                else:
                    values = {k: live[k] / live_count for k in LOSS_KEYS}
                    it_per_s = live_count / max(now - t_event, 1e-9)
                if main and is_row:
                    with open(metrics_path, "a", newline="") as f:
                        csv.writer(f).writerow([step, *(f"{values[k]:.6g}" for k in LOSS_KEYS), f"{lr:.3g}",
                                                f"{it_per_s:.4g}", f"{now - t0:.1f}"])
                    tracking.log_row(accelerator, step, values, lr, it_per_s)
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.4f}")
                emit({"type": "log", "step": step, **values, "lr": lr, "it_per_s": it_per_s,
                      "eta_s": (config.max_steps - step) / max(it_per_s, 1e-9), "row": is_row})
                live, live_count, t_event = {k: 0.0 for k in LOSS_KEYS}, 0, now
                if is_row:
                    sums, count, timed_row, t_row = {k: 0.0 for k in LOSS_KEYS}, 0, 0, now
            # 7. preview and checkpoint
            if main and config.preview_every and step % config.preview_every == 0 and model.controlnet is not None:
                with ema.applied() if ema is not None else contextlib.nullcontext():
                    strip = _preview(model, dataset, step, output)
                tracking.log_preview(accelerator, strip, step)
                emit({"type": "preview", "step": step, "image": strip})
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                if not _finite(params):  # the same weights on every process: all stop here
                    raise _diverged(output, step, "a trained weight", lr)
                if main:
                    path = save_checkpoint(output, step, params, optimizer.optimizer, config.keep_checkpoints, ema,
                                           {"sums": sums, "count": count})
                    write_model_card(output)  # README.md: the run's settings and last losses so far
                    emit({"type": "checkpoint", "step": step, "path": str(path)})
                accelerator.wait_for_everyone()
            if (stop is not None and stop.is_set()) or step == config.stop_at:  # Ctrl-C, the app's Stop, --stop-at
                stopped = True
                break
    finally:
        if bar is not None:
            bar.close()
        tracking.finish(accelerator)
    # 8. save: a checkpoint to resume from (when stopped) and the model folder itself, never of weights that diverged
    if not _finite(params):
        raise _diverged(output, step, "a trained weight", lr_at(max(step - 1, 0), config))
    if main:
        if stopped and step % config.checkpoint_every:
            save_checkpoint(output, step, params, optimizer.optimizer, config.keep_checkpoints, ema,
                            {"sums": sums, "count": count})
        if ema is not None:  # the model folder holds the averaged weights
            ema.swap()
        for m in (model.unet, model.controlnet):
            if m is not None:
                m.to(memory_format=torch.contiguous_format)
        model.eval().save_pretrained(output)
        logger.info("saved model at step %d to %s", step, output)
        if config.scorer_steps and model.controlnet is not None and not stopped:  # 9. the fidelity scorer
            add_scorer(output, config.data, ScorerConfig(resolution=min(128, config.resolution),
                                                         steps=config.scorer_steps), holdout=config.holdout,
                       holdout_seed=config.holdout_seed, progress_bar=bar is not None, pairs=found)
    accelerator.wait_for_everyone()
    emit({"type": "end", "step": step, "stopped": stopped, "output": str(output)})
    return output

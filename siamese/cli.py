"""Command line: `python -m siamese train | build | sample | evaluate | train-decoder | train-scorer | add-guide |
convert | push`: a thin front."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .cli_options import (add_config_options, add_device_option, add_sampling_options, add_speed_options,
                          config_from_args, default_device, fractions)
from .params import PRECISIONS

logger = logging.getLogger(__name__)


@contextmanager
def _stopping(what: str) -> Iterator[threading.Event]:
    """The stop event of a long command: Ctrl-C or SIGTERM sets it (and says "stopping `what`"), a second one aborts;
    the previous handlers come back at the end. Signals reach the main thread only: elsewhere it is never set."""
    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"\nstopping {what}; Ctrl-C again to abort", file=sys.stderr)
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        yield stop
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    config = config_from_args(TrainConfig, args)  # every option is a TrainConfig field (add_config_options)
    with _stopping("after this step (checkpoint and model are saved)") as stop:
        out = train(config, stop=stop, progress_bar=True)
    print(f"model {'saved (stopped early; --resume latest continues)' if stop.is_set() else 'saved'} to {out}")


def _sample(args: argparse.Namespace) -> None:
    import torch

    from .batch import REJECTED_FOLDER, finished_pairs, frame_choices, run_batch, validate_min_fidelity
    from .data import list_masks, read_mask
    from .distributed import clear_part, start_share
    from .export import check_apart, remove_pairs, write_pairs
    from .fidelity import load_scorer
    from .files import check_writable, default_model
    from .inpaint import DEFAULT_MARGIN, check_margin, list_frames, read_frames
    from .model import load_model
    from .params import SamplingParams, random_seed, validate_request
    from .presets import FALLBACK_PRESETS, preset_params
    from .sampling import prepare_mask

    # 1. every setting, every mask file and the output folder, before the (possibly slow) model load. The preset's
    #    values come from the model (its siamese_config.json); what is given explicitly is checked here, over the
    #    fallback preset, and overrides the model's preset below
    given = {key: value for key, value in (("steps", args.steps), ("scheduler", args.scheduler),
                                           ("guidance_scale", args.guidance), ("cache_interval", args.cache_interval),
                                           ("precision", args.precision)) if value is not None}
    common = dict(prompt=args.prompt, eta=args.eta, control_scale=args.control_scale, control_end=args.control_end,
                  autoguidance=args.autoguidance)
    SamplingParams(**{**FALLBACK_PRESETS[args.preset], **given, **common}).validate()
    validate_request(args.num_images, args.seed, args.batch_size)
    validate_min_fidelity(args.min_fidelity, check_scorer=False)
    if args.keep_rejected and args.min_fidelity is None:
        raise ValueError("--keep-rejected keeps the pairs below --min-fidelity: give --min-fidelity too")
    paths = list_masks(args.masks)
    masks = [read_mask(path) for path in paths]
    out = Path(args.output)
    check_writable(out)
    check_apart(out, args.masks, "masks")
    frame_files = None  # inpainting: the frames (and their masks) each mask is painted into
    if args.frames is not None:
        frame_files = list_frames(args.frames)
        check_apart(out, args.frames, "frames")
        check_margin(DEFAULT_MARGIN if args.margin is None else args.margin)
    elif args.margin is not None or args.clear_frame_lesions:
        raise ValueError("--margin and --clear-frame-lesions paint into frames: give --frames too")
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    # 2. the model and its fidelity scorer; every mask at the model's resolution (an empty or full mask is
    #    refused before any sampling). Under torchrun / accelerate launch this process takes a share of the
    #    masks, on its own device.
    share = start_share(len(paths), cpu=True if args.device == "cpu" else None)
    device = share.device if share.world > 1 else default_device(args.device)
    model_path = args.model or default_model()
    model = load_model(model_path, device=device)
    params = preset_params(model, args.preset, **given, **common)
    scorer = load_scorer(model_path, device=device)
    validate_min_fidelity(args.min_fidelity, scorer)
    prepared = []
    for path, mask in zip(paths, masks):
        try:
            prepared.append(prepare_mask(model, mask))
        except ValueError as e:
            raise type(e)(f"{path}: {e}") from None
    frames = None
    if frame_files is not None:  # every frame read, and a fitting frame for every image, before the first image
        check_margin(margin, model.config.resolution)
        frames = read_frames(frame_files, model.config.resolution)
    elif not args.augment_masks:  # sampled as prepared; an augmentation (or a frame's fit: the mask's aspect)
        masks = prepared  # starts from the mask as the file has it
    # 3. resume: the pairs of this very batch already in the output folder are not made again
    seed = share.agree(random_seed() if args.seed is None else args.seed)
    stems = [path.stem for path in paths]
    chosen = None
    if frames is not None:
        try:
            choices = frame_choices(frames, list(zip(stems, masks)), args.num_images, seed, model.config.resolution,
                                    augment=args.augment_masks)
        except ValueError as e:
            raise type(e)(f"{args.masks}: {e}") from None
        chosen = {f"{stems[m]}_{i:02d}": frames[c].name for m, row in enumerate(choices) for i, c in enumerate(row)}
    done = finished_pairs(out, model, stems, args.num_images, seed, params, augment=args.augment_masks,
                          scored=scorer is not None, min_fidelity=args.min_fidelity, frames=chosen, margin=margin,
                          clear_frame_lesions=args.clear_frame_lesions)
    # 4. sample this process's share, score, write each pair as it comes (accepted in OUTPUT, rejected in
    #    OUTPUT/rejected/; several processes write into parts of their own that process 0 merges at the end)
    mine, part = share.indices, clear_part(share, out)
    from tqdm.auto import tqdm

    counts = {"accepted": 0, "rejected": 0, "written": 0}
    todo = sum(f"{stems[m]}_{i:02d}" not in done for m in mine for i in range(args.num_images))
    with tqdm(total=todo, desc="pairs", disable=todo < 2 or not share.main) as bar, \
            _stopping("after these images (what is written stays; the same command resumes)") as stop:
        for pair in run_batch(model, [(stems[m], masks[m]) for m in mine], args.num_images, seed, params,
                              augment=args.augment_masks, scorer=scorer, min_fidelity=args.min_fidelity, skip=done,
                              stop=stop, batch_size=args.batch_size, sources=[str(paths[m]) for m in mine],
                              offset=mine.start, frames=frames, margin=margin,
                              clear_frame_lesions=args.clear_frame_lesions):
            side = "accepted" if pair.accepted else "rejected"
            counts[side] += 1
            folder, other = (part, part / REJECTED_FOLDER) if pair.accepted else (part / REJECTED_FOLDER, part)
            if pair.accepted or args.keep_rejected:
                write_pairs([pair.item], folder, [pair.name])
                counts["written"] += 1
            remove_pairs(other, [pair.name])  # made before with other settings, on the other side
            bar.update(1)
            bar.set_postfix(accepted=counts["accepted"], rejected=counts["rejected"])
    counts = share.sum(counts)  # the pairs of all processes
    share.finish(out, sides=("", REJECTED_FOLDER))  # a barrier, then process 0 merges the parts into OUTPUT
    if not share.main:
        return
    made = counts["accepted"] + counts["rejected"]
    where = f"{out} (images/, masks/, metadata.jsonl)"
    if args.keep_rejected and counts["rejected"]:
        where += f"; rejected ones in {out / REJECTED_FOLDER}"
    line = f"wrote {counts['written']} pairs to {where}"
    if frames is not None:
        unknown = sum(f.mask is None for f in frames)
        line += f", painted into frames of {args.frames}"
        if unknown:
            line += f" (warning: {unknown} of {len(frames)} frames have no mask: their own lesions are unlabelled, " \
                    "frame_mask: unknown in metadata.jsonl)"
    if scorer is not None:
        line += f": {counts['accepted']} accepted, {counts['rejected']} rejected"
        line += f" (fidelity >= {args.min_fidelity:g})" if args.min_fidelity is not None else " (no --min-fidelity)"
    if done:
        line += f"; {len(done)} already there, kept"
    if stop.is_set():
        line += f"; stopped after {made} of {len(paths) * args.num_images - len(done)}: the same command resumes"
    print(line)


def _train_decoder(args: argparse.Namespace) -> None:
    from .decoder import DecoderTrainConfig
    from .folder_ops import add_decoder

    config = DecoderTrainConfig(steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                                latent_noise=args.latent_noise, width=args.width, seed=args.seed,
                                adversarial_weight=args.adversarial_weight, adversarial_start=args.adversarial_start)
    from tqdm.auto import tqdm

    bars = []  # made at the first event: errors in the settings or the data come before any progress bar

    def progress(event: dict) -> None:
        if not bars:
            bars.append(tqdm(total=config.steps, desc="decoder", dynamic_ncols=True))
        bars[0].update(event["step"] - bars[0].n)
        bars[0].set_postfix(loss=f"{event['loss']:.4f}")

    try:
        out = add_decoder(args.model, args.data, config, output=args.output, holdout=args.holdout, callback=progress,
                          fine_tune=args.fine_tune)
    finally:
        for bar in bars:
            bar.close()
    print(f"learned decoder saved in {out}/codec/decoder")


def _train_scorer(args: argparse.Namespace) -> None:
    from .fidelity import ScorerConfig, load_scorer, scorer_summary
    from .folder_ops import add_scorer

    config = ScorerConfig(steps=args.steps, resolution=args.resolution, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed)
    config.validate()
    out = add_scorer(args.model, args.data, config, output=args.output, holdout=args.holdout, progress_bar=True)
    print(f"fidelity scorer saved in {out}/segmenter: {scorer_summary(load_scorer(out))}")


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import EvalConfig, evaluate, format_report
    from .stopping import Stopped

    config = EvalConfig(
        data=args.data, model=args.model, test_fraction=args.test_fraction, seeds=args.seeds,
        seg_steps=args.seg_steps, steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler,
        control_scale=args.control_scale, control_end=args.control_end, autoguidance=args.autoguidance,
        cache_interval=args.cache_interval, precision=args.precision,
        resolution=args.resolution, output=args.output, seed=args.seed, max_test=args.max_test,
        max_synthetic=args.max_synthetic, curation=args.curation, curation_thresholds=tuple(args.curation_thresholds),
        curation_compare=None if args.curation_compare is None else tuple(args.curation_compare),
        save_scorer=not args.no_save_scorer, frames=args.frames, margin=args.margin, device=default_device(args.device),
    )
    with _stopping("now (nothing of this evaluation is written)") as stop:
        try:
            report = evaluate(config, progress_bar=True, stop=stop)
        except Stopped as e:
            print(f"{e}: nothing written; the same command starts it over", file=sys.stderr)
            return
    print(format_report(report))


def _build(args: argparse.Namespace) -> None:
    from .build import BuildConfig, BuildStopped, build

    budget = {} if args.budget_hours is None else {"budget_hours": args.budget_hours}
    config = BuildConfig(data=args.data, output=args.output, **budget,
                         resolution=args.resolution, batch_size=args.batch_size, holdout=args.holdout,
                         prompt=args.prompt, name=args.name, seed=args.seed, sweep_masks=args.sweep_masks,
                         sweep_seeds=args.sweep_seeds,
                         eval_seeds=args.eval_seeds, eval_seg_steps=args.eval_seg_steps, report_to=args.report_to,
                         overlay=args.overlay, label=args.label)

    def progress(event: dict) -> None:
        if event["type"] == "stage":
            print(f"stage {event['index']}/{event['total']}: {event['stage']} (training left: about "
                  f"{event['eta_s'] / 60:.0f} min on 2 idle cores)", file=sys.stderr, flush=True)

    try:
        with _stopping("after this training step or sweep setting, or now in the evaluation (the same command "
                       "resumes)") as stop:
            out = build(config, progress, stop, progress_bar=True, device=default_device(args.device))
    except BuildStopped as e:
        print(str(e), file=sys.stderr)
        return
    print(f"model built in {out} (its card: {out}/README.md)")


def _add_guide(args: argparse.Namespace) -> None:
    from .folder_ops import add_guide

    out = add_guide(args.model, args.guide, args.weight, output=args.output)
    print(f"guide from {args.guide} added to {out}; it recommends autoguidance {args.weight:g}")


def _convert(args: argparse.Namespace) -> None:
    import torch

    from .convert import convert_checkpoint

    out = convert_checkpoint(args.src, args.dst, base=args.base, tokenizer=args.tokenizer, resolution=args.resolution,
                             prompt=args.prompt, name=args.name, dtype=torch.float16 if args.half else torch.float32)
    print(f"converted {args.src} into the model folder {out}")


def _push(args: argparse.Namespace) -> None:
    from .hub import push_folder

    url = push_folder(args.run, args.repo_id, private=args.private, token=args.token)
    print(f"uploaded {args.run} to {args.repo_id}: {url}")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors ending as every error of the CLI does: a last line `error: ...`, exit code 2."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .train_config import TrainConfig

    parser = _Parser(prog="python -m siamese", description="Siamese-Diffusion: image-mask "
                     "pair synthesis for medical segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on image-mask pairs")
    add_config_options(t, TrainConfig)
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="generate images from masks")
    s.add_argument("--model", default=None, help="model folder or hub repo id (default: the bundled model)")
    s.add_argument("--masks", required=True, help="a mask image or a folder of masks")
    s.add_argument("--output", required=True, help="output folder (images/, masks/, metadata.jsonl)")
    s.add_argument("--num-images", type=int, default=1, help="images per mask")
    add_sampling_options(s, steps=None, guidance=None, scheduler=None)  # None: the preset's (the model's)
    add_speed_options(s)
    s.add_argument("--seed", type=int, default=None, help="first seed (default: random); image i gets seed+i")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    s.add_argument("--prompt", default=None, help="default: the model's prompt")
    s.add_argument("--augment-masks", action="store_true", help="each image from a randomly augmented mask")
    s.add_argument("--frames", default=None,
                   help="paint each mask into real frames instead of making whole images: a folder of frames with an "
                        "optional masks/ (their own lesions, same file names), or a dataset folder (images/ and "
                        "masks/); each image's frame is drawn by its seed among those the mask fits")
    s.add_argument("--margin", type=int, default=None,
                   help="with --frames: pixels (at the model resolution) the painted region reaches beyond the new "
                        "lesion, where the generated image blends into the frame (default 12)")
    s.add_argument("--clear-frame-lesions", action="store_true",
                   help="with --frames: paint each frame's own lesion (its mask in masks/) away first, so the pair's "
                        "mask is the new lesion alone (default: the union of both lesions)")
    s.add_argument("--min-fidelity", type=float, default=None,
                   help="write only pairs whose fidelity (the model's scorer's Dice between its segmentation of the "
                        "image and the mask) is at least this, in [0, 1]; needs a scorer (train-scorer)")
    s.add_argument("--keep-rejected", action="store_true",
                   help="write the pairs below --min-fidelity too, to OUTPUT/rejected/ (with its own metadata.jsonl)")
    s.add_argument("--batch-size", type=int, default=4)
    add_device_option(s)
    s.set_defaults(func=_sample)

    d = sub.add_parser("train-decoder", help="train a learned decoder for a tiny model's patch codec (sharper, "
                       "no 8x8 block grid) and add it to the model folder")
    d.add_argument("--model", required=True, help="model folder with a patch codec (the tiny preset)")
    d.add_argument("--data", required=True, help="folder of real pairs (its images are used)")
    d.add_argument("--output", default=None, help="write the model with its decoder here (default: in place)")
    d.add_argument("--steps", type=int, default=4000)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--crop", type=int, default=96, help="training crop size in pixels (a multiple of the patch size)")
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--latent-noise", type=float, default=0.3,
                   help="latents get Gaussian noise of a random std up to this, so generated latents decode cleanly")
    d.add_argument("--width", type=int, default=48, help="channels of every decoder level")
    d.add_argument("--adversarial-weight", type=float, default=0.0,
                   help="weight of a PatchGAN critic's loss beside L1 (0: L1 only); sharper texture, highlights, blacks")
    d.add_argument("--adversarial-start", type=int, default=0, help="step from which the critic counts")
    d.add_argument("--fine-tune", action="store_true", help="start from the model's own learned decoder")
    d.add_argument("--holdout", type=float, default=0.2,
                   help="fraction of pairs left out (the split `evaluate` tests on, seed 0); measured on them")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_train_decoder)

    f = sub.add_parser("train-scorer", help="train the fidelity scorer (a small segmentation network on the "
                       "model's real training pairs) and add it to the model folder (segmenter/)")
    f.add_argument("--model", required=True, help="model folder")
    f.add_argument("--data", required=True, help="folder of real pairs (the model's training data)")
    f.add_argument("--output", default=None, help="write the model with its scorer here (default: in place)")
    f.add_argument("--steps", type=int, default=600)
    f.add_argument("--resolution", type=int, default=128, help="input size of the scorer's network")
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--holdout", type=float, default=None,
                   help="fraction of pairs left out (default: the split the model was trained with, from its "
                        "train_config.json; else 0.2, the split `evaluate` tests on, seed 0); measured on them")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_train_scorer)

    e = sub.add_parser("evaluate", help="score a model on held-out real pairs (fidelity, benefit, realism, "
                       "diversity, mask use)")
    e.add_argument("--data", required=True, help="folder of real pairs (images/ and masks/)")
    e.add_argument("--model", default=None, help="model folder or hub repo id (default: the bundled model)")
    e.add_argument("--output", default=None, help="write report.json (and samples) here")
    e.add_argument("--test-fraction", type=float, default=0.2)
    e.add_argument("--max-test", type=int, default=60, help="held-out pairs used (0: all)")
    e.add_argument("--seeds", type=int, default=2, help="segmentation training seeds for the downstream test")
    e.add_argument("--seg-steps", type=int, default=600, help="segmentation network training steps")
    add_sampling_options(e, steps=20, guidance=9.0, scheduler="dpm++",  # EvalConfig's (not imported: it is slow)
                         guidance_help="classifier-free guidance (the app's default)")
    e.add_argument("--cache-interval", type=int, default=1, help="the sampler's feature reuse, as sample's (1: off)")
    e.add_argument("--precision", default="float32", choices=PRECISIONS, help="the networks' precision while sampling")
    e.add_argument("--resolution", type=int, default=128, help="segmentation network input size")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-synthetic", type=int, default=200,
                   help="synthetic training pairs of the downstream test (and the curation pool); 0: as many as real")
    e.add_argument("--curation", action="store_true",
                   help="also measure whether curation pays: acceptance rates of the fidelity scorer, and real + n "
                        "filtered vs real + n unfiltered synthetic pairs (slower: 2 networks per seed and threshold)")
    e.add_argument("--curation-thresholds", type=fractions, default=(0.5, 0.6, 0.7, 0.8),
                   help="fidelity thresholds whose acceptance rates are reported (comma-separated)")
    e.add_argument("--curation-compare", type=fractions, default=None,
                   help="thresholds compared downstream (default: all of --curation-thresholds)")
    e.add_argument("--no-save-scorer", action="store_true",
                   help="do not save the evaluation's network as the model's fidelity scorer when it has none")
    e.add_argument("--frames", action="store_true",
                   help="also evaluate inpainted pairs: each held-out mask painted into another held-out frame "
                        "(realism of frames and lesion crops, seam, fidelity, downstream vs whole-image synthesis)")
    e.add_argument("--margin", type=int, default=12, help="with --frames: pixels (at the model resolution) the "
                   "inpainted region reaches beyond the new lesion (default 12, `inpaint.DEFAULT_MARGIN`)")
    add_device_option(e)
    e.set_defaults(func=_evaluate)

    b = sub.add_parser("build", help="make a complete model from image-mask pairs in one resumable command: every "
                       "stage of the bundled model's recipe, the settings sweep, the evaluation and the model card")
    b.add_argument("--data", required=True, help="folder with images/ and masks/, or prompt.json")
    b.add_argument("--output", required=True, help="the model folder to make (its stages go in OUTPUT/build/)")
    b.add_argument("--budget-hours", type=float, default=None, help="hours on 2 idle CPU cores the training "
                   "stages are planned for; the steps scale from the full recipe in its proportions (default: the "
                   "full recipe, the polyp model's)")
    b.add_argument("--resolution", type=int, default=256, help="image size, a multiple of 64 (default 256)")
    b.add_argument("--batch-size", type=int, default=8, help="training batch size (default 8)")
    b.add_argument("--holdout", type=float, default=0.2, help="share of the pairs held out for the settings sweep "
                   "and the evaluation (default 0.2, split seed 0, as evaluate's)")
    b.add_argument("--prompt", default=None, help="the model's prompt (default: guessed from the data folder)")
    b.add_argument("--name", default="", help="model name (default: the output folder's name)")
    b.add_argument("--label", default=None, help="what the model makes, shown in the app's model selector, e.g. "
                   "'skin lesions (dermoscopy)' (default: the model's name)")
    b.add_argument("--seed", type=int, default=0, help="training and sweep seed")
    b.add_argument("--sweep-masks", type=int, default=32, help="held-out masks the settings sweep samples")
    b.add_argument("--sweep-seeds", type=int, default=2,
                   help="images of each sweep mask per candidate setting (another seed each; default 2)")
    b.add_argument("--eval-seeds", type=int, default=2, help="segmentation seeds of the final evaluation's "
                   "downstream test (0: no evaluation)")
    b.add_argument("--eval-seg-steps", type=int, default=600, help="training steps of each segmentation network of "
                   "the final evaluation")
    b.add_argument("--report-to", default="none", help="none, tensorboard or wandb (the training stages' losses)")
    add_config_options(b, TrainConfig, only=("overlay",))  # every training stage's, as `train`'s
    add_device_option(b, "where the decoder, scorer, sweep and evaluation run (the training stages: where "
                      "accelerate puts them)")
    b.set_defaults(func=_build)

    g = sub.add_parser("add-guide", help="give a model a guide for autoguidance: a weaker version of it (an earlier "
                       "stage of its training), which sampling pushes the images away from")
    g.add_argument("--model", required=True, help="model folder")
    g.add_argument("--guide", required=True, help="model folder of the same model trained less (same architecture)")
    g.add_argument("--weight", type=float, default=2.0, help="the autoguidance weight the model recommends (default 2)")
    g.add_argument("--output", default=None, help="write the model with its guide here (default: in place)")
    g.set_defaults(func=_add_guide)

    c = sub.add_parser("convert", help="convert a reference-implementation checkpoint (ControlLDM .ckpt/.pth/"
                       ".safetensors, e.g. the authors' released weights) into a model folder")
    c.add_argument("src", help="checkpoint file (merged ControlLDM, or control-only with --base), or a folder holding one")
    c.add_argument("dst", help="new model folder")
    c.add_argument("--base", default=None, help="Stable Diffusion 1.5 folder or hub id: configs and tokenizer, and the "
                   "weights a control-only checkpoint lacks (required for one)")
    c.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder or hub id when there is no --base "
                   "(default: openai/clip-vit-large-patch14, as the reference code)")
    c.add_argument("--resolution", type=int, default=384, help="the model's resolution (the reference trains at 384)")
    c.add_argument("--prompt", default="", help="the model's default prompt")
    c.add_argument("--name", default=None, help="model name (default: the folder name)")
    c.add_argument("--half", action="store_true", help="save the weights in float16 (half the size)")
    c.set_defaults(func=_convert)

    p = sub.add_parser("push", help="upload a model folder to the Hugging Face hub, with its model card")
    p.add_argument("run", help="model or run folder (checkpoints/, init/, base/, previews/ and logs/ stay local)")
    p.add_argument("repo_id", help="hub model repo, 'owner/name' (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", default=None, help="hub token (default: the stored login or HF_TOKEN)")
    p.set_defaults(func=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    from .data import DataError
    from .model_config import ModelLoadError

    try:
        args.func(args)
    except (DataError, ModelLoadError, ValueError, OSError) as e:  # one line: what was wrong
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0

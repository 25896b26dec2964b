"""Operations on a model folder: give it a learned decoder, a guide for autoguidance, or a fidelity scorer.

Each loads the folder, makes its addition with the part's own module (`decoder`, `guide`, `fidelity`: the classes
and training the model bundle is made of) and writes it in place or into a copy of the model at `output`; what it
adds appears whole (written beside, then renamed). The CLI's train-decoder, add-guide and train-scorer, `train`'s
last step (the scorer) and `build` call these. They sit above `model`: the model loads its parts, and these
functions load the model.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from .data import Pair, PairDataset, find_pairs, split_pairs
from .decoder import DecoderTrainConfig, PatchDecoder, config_dict, train_decoder
from .fidelity import SCORER_FOLDER, ScorerConfig, save_scorer, train_scorer
from .files import atomic_folder, check_writable, same_folder
from .guide import GUIDE_FOLDER, guide_tensors, save_guide
from .model import load_model, resolve_folder
from .model_config import CONFIG_NAME
from .params import MAX_AUTOGUIDANCE
from .quality import block_edge_ratio, psnr, reconstruct
from .segnet import dice_iou, predict_masks
from .train_config import trained_on, training_record

logger = logging.getLogger(__name__)

__all__ = ["add_decoder", "add_guide", "add_scorer", "scorer_split", "stored_in_half"]

DEFAULT_HOLDOUT, DEFAULT_HOLDOUT_SEED = 0.2, 0  # `evaluate`'s split, for a model whose own is not recorded


def stored_in_half(model_folder: str | Path) -> bool:
    """Whether the folder's UNet weights are stored in float16 (a copy of a shipped folder stays float16)."""
    files = sorted((Path(model_folder) / "unet").glob("*.safetensors"))
    if not files:
        return False
    with safe_open(files[0], "pt") as f:
        return f.get_slice(next(iter(f.keys()))).get_dtype() == "F16"


def _check_output(output: Path, what: str) -> None:
    """A copy of the model goes into a new (or empty) folder this process can write."""
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} is not empty: name a new --output folder (the model is copied there with its "
                         f"{what})")
    check_writable(output)


# -- the learned decoder --------------------------------------------------------------------------
def add_decoder(
    model_path: str, data: str, config: DecoderTrainConfig, output: str | None = None, holdout: float = 0.2,
    holdout_seed: int = 0, device: torch.device | str = "cpu", callback: Callable[[dict], None] | None = None,
    fine_tune: bool = False,
) -> Path:
    """Train a learned decoder for a model folder's patch codec on `data`'s pairs (less the held-out split
    that `evaluate` tests on) and save the model with it to `output` (default: in place). `fine_tune`:
    start from the folder's own learned decoder (e.g. to add the adversarial term) instead of a fresh one.

    Writes codec/decoder/ (config.json + safetensors), codec/decoder/train_config.json with the figures
    measured on the held-out images (PSNR and block-edge ratio, linear vs learned), and the codec's
    `learned_decoder` flag in siamese_config.json. Returns the folder.
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:  # nan too
        raise ValueError(f"holdout must be a fraction in [0, 1), got {holdout!r}")
    if output is None and not Path(model_path).is_dir():
        raise ValueError(f"'{model_path}' is not a local model folder: name an --output folder for the model with its decoder")
    model = load_model(model_path, device=device)
    codec = model.codec
    if not hasattr(codec, "decode_linear"):
        raise ValueError(f"{model_path} decodes with a VAE; a learned decoder is for the patch codec (tiny preset)")
    config.validate(codec.config.patch_size)  # before the data is read
    init = codec.decoder if fine_tune else None
    if fine_tune and init is None:
        raise ValueError(f"{model_path} has no learned decoder to fine-tune: train one first (without --fine-tune)")
    pairs = find_pairs(data)
    train_pairs, held = split_pairs(pairs, holdout, holdout_seed) if holdout > 0 else (pairs, pairs[:0])
    res = model.config.resolution
    train_images = PairDataset(data, res, pairs=train_pairs).images
    logger.info("training a decoder on %d images at %d (held out: %d)", len(train_images), res, len(held))
    decoder = train_decoder(codec, train_images, config, device=device, callback=callback, init=init)
    record = {"data": str(data), "holdout": holdout, "holdout_seed": holdout_seed, "num_images": len(train_images),
              **config_dict(config)}
    previous = Path(model_path) / "codec" / "decoder" / "train_config.json"
    if fine_tune:  # the recipe of the decoder it started from (read before an in-place save replaces it)
        record["fine_tuned_from"] = json.loads(previous.read_text()) if previous.is_file() else str(model_path)
    if held:
        record["held_out"] = _held_out_figures(codec, decoder, PairDataset(data, res, pairs=held[:64]).images, device)
        logger.info("held-out: %s", record["held_out"])
    codec.set_decoder(decoder)
    if output is not None and Path(output).resolve() != Path(model_path).resolve():
        out = model.save_pretrained(output, dtype=torch.float16 if stored_in_half(model_path) else None)
        if (Path(model_path) / SCORER_FOLDER).is_dir():  # the fidelity scorer travels with the model
            shutil.copytree(Path(model_path) / SCORER_FOLDER, out / SCORER_FOLDER, dirs_exist_ok=True)
        (out / "codec" / "decoder" / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")
        return out
    # in place: the decoder folder appears whole (written beside, then renamed), then the config names it
    out = Path(model_path)
    with atomic_folder(out / "codec" / "decoder") as tmp:
        codec.save_decoder(tmp)
        (tmp / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")
    model.config.codec = codec.to_dict()
    model.config.save(out)
    return out


def _held_out_figures(codec, decoder: PatchDecoder, images: np.ndarray, device: torch.device | str) -> dict:
    """PSNR and block-edge ratio of the codec's round trip of `images` (N, R, R, 3) uint8, linear vs learned."""
    codec.set_decoder(None)
    linear = reconstruct(codec, images, device)
    codec.set_decoder(decoder)
    learned = reconstruct(codec, images, device)
    return {"images": len(images), "psnr_db": {"linear": psnr(images, linear), "learned": psnr(images, learned)},
            "block_edge_ratio": {"real": block_edge_ratio(images), "linear": block_edge_ratio(linear),
                                 "learned": block_edge_ratio(learned)}}


# -- the guide ------------------------------------------------------------------------------------
def add_guide(model_folder: str | Path, guide_folder: str | Path, weight: float = 2.0,
              output: str | Path | None = None) -> Path:
    """Give the model folder `model_folder` a guide for autoguidance: `guide_folder`, a model folder of the same
    model trained less (an earlier stage of its training). Writes guide/ (only the tensors that differ, in the
    dtype of the model's UNet weights) and recommends `weight` in siamese_config.json, in place or in a copy of
    the model at `output`. Returns the folder written."""
    if not 1.0 < float(weight) <= MAX_AUTOGUIDANCE:
        raise ValueError(f"autoguidance weight must be above 1 (1 is off) and at most {MAX_AUTOGUIDANCE:g}, "
                         f"got {weight}")
    source = Path(model_folder)
    if not (source / CONFIG_NAME).is_file():
        raise ValueError(f"{model_folder} is not a local model folder of this package (no {CONFIG_NAME})")
    out = Path(output) if output is not None else source
    same = same_folder(out, source)
    if not same:
        _check_output(out, "guide")
    model, weaker = load_model(source), load_model(guide_folder)
    if model.controlnet is None:
        raise ValueError(f"{model_folder} has no ControlNet (a base model): autoguidance guides the mask branch")
    tensors = guide_tensors(model, weaker)
    if not same:
        shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(GUIDE_FOLDER, "*.tmp"))
    save_guide(out, tensors, str(guide_folder), torch.float16 if stored_in_half(source) else None)
    model.config.autoguidance = float(weight)
    model.config.save(out)
    logger.info("guide from %s added to %s (%d tensors), autoguidance %g", guide_folder, out, len(tensors), weight)
    return out


# -- the fidelity scorer --------------------------------------------------------------------------
def scorer_split(model_folder: str | Path, data: str | Path, holdout: float | None = None,
                 holdout_seed: int | None = None) -> tuple[float, int]:
    """The held-out split to leave out of the scorer's training: the one the model was trained with (its
    train_config.json, when it names this data folder), else `evaluate`'s default (0.2, seed 0). Explicit
    values win (and the record is not read when both are given)."""
    if holdout is not None and holdout_seed is not None:
        return holdout, holdout_seed
    trained = training_record(model_folder)
    recorded = trained_on(trained, data)
    if holdout is None:
        holdout = float(trained.get("holdout", DEFAULT_HOLDOUT)) if recorded else DEFAULT_HOLDOUT
    if holdout_seed is None:
        holdout_seed = int(trained.get("holdout_seed", DEFAULT_HOLDOUT_SEED)) if recorded else DEFAULT_HOLDOUT_SEED
    return holdout, holdout_seed


def add_scorer(model_folder: str | Path, data: str | Path, config: ScorerConfig, output: str | Path | None = None,
               holdout: float | None = None, holdout_seed: int | None = None, progress_bar: bool = False,
               max_held_out: int = 200, pairs: Sequence[Pair] | None = None,
               device: torch.device | str = "cpu") -> Path:
    """Train a scorer on `data`'s pairs less the model's held-out split (`scorer_split`) on `device`, measure its
    Dice on (up to `max_held_out` of) the held-out pairs, and save it in OUTPUT/segmenter/ (default: in the model
    folder). `pairs`: the data's pairs when the caller has found them already (`find_pairs(data)`, as `train`
    has). Returns the model folder it was saved in."""
    if output is None and not Path(model_folder).is_dir():
        raise ValueError(f"'{model_folder}' is not a local model folder: name an --output folder for the model "
                         "with its scorer")
    source = resolve_folder(model_folder)
    if not (source / CONFIG_NAME).is_file():
        raise ValueError(f"{model_folder} is not a model folder of this package (no {CONFIG_NAME})")
    holdout, holdout_seed = scorer_split(source, data, holdout, holdout_seed)
    config.holdout, config.holdout_seed, config.data = holdout, holdout_seed, str(data)
    config.validate()  # before the data is read
    out = Path(output) if output is not None else source
    same = same_folder(out, source)
    if not same:
        _check_output(out, "scorer")
    pairs = find_pairs(data) if pairs is None else list(pairs)
    train_pairs, held = split_pairs(pairs, holdout, holdout_seed) if holdout > 0 else (pairs, pairs[:0])
    R = config.resolution
    real = PairDataset(data, R, pairs=train_pairs)
    logger.info("training a fidelity scorer on %d pairs at %d (held out: %d)", len(real), R, len(held))
    scorer = train_scorer(real.images, real.masks, config, progress_bar=progress_bar, device=device)
    config.train_pairs, config.held_out_pairs = len(real), 0
    if held:
        test = PairDataset(data, R, pairs=held[:max_held_out])
        config.held_out_pairs = len(test)
        config.held_out_dice = float(dice_iou(predict_masks(scorer.net, test.images), test.masks)[0].mean())
        logger.info("scorer Dice on %d held-out real pairs: %.3f", len(test), config.held_out_dice)
    if not same:  # a copy of the model, then its scorer
        shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(SCORER_FOLDER, "*.tmp"))
    save_scorer(scorer, out)
    return out

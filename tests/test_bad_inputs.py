"""Bad inputs across the three fronts: the CLI, the library and the app's API.

Each is refused before anything is written, with one line that names what was wrong: the CLI exits with code 2
and its last stderr line starts with "error: "; the library raises DataError, ModelLoadError or ValueError; the
app raises gr.Error. No output folder or file is left behind. The CLI cases run `siamese.cli.main` in this
process (the exit code is main's return value, as `python -m siamese` passes it on); test_cli.py runs a few as
real processes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import struct
import typing
import zlib
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest

from conftest import write_dataset
from siamese import DataError, ModelLoadError, SamplingParams, generate, read_image, read_mask
from siamese.cli import main
from siamese.data import PairDataset, binarize_mask, find_pairs, split_pairs
from siamese.export import export_zip, write_pairs
from siamese.train import TrainConfig, train
from studio.settings import Settings
from studio.server import Studio


class Inputs:
    """Builds the bad (and good) inputs of a case inside one tmp_path; `out` is where output would go."""

    def __init__(self, tmp: Path, model: Path) -> None:
        self.tmp, self.model = tmp, model
        self.out = tmp / "out"

    def data(self, name: str = "data", n: int = 6) -> Path:
        return write_dataset(self.tmp / name, n=n)

    def masks(self, extra: dict[str, np.ndarray | bytes] | None = None) -> Path:
        """A folder of 3 good masks (sorted first) and `extra` files, which come after them."""
        folder = self.data("pairs", n=3) / "masks"
        for name, content in (extra or {}).items():
            if isinstance(content, bytes):
                (folder / name).write_bytes(content)
            else:
                cv2.imwrite(str(folder / name), content)
        return folder

    def mask(self) -> Path:
        return self.data("one", n=1) / "masks" / "case00.png"

    def model_with(self, **config) -> Path:
        folder = shutil.copytree(self.model, self.tmp / "model")
        saved = json.loads((folder / "siamese_config.json").read_text())
        (folder / "siamese_config.json").write_text(json.dumps({**saved, **config}))
        return folder

    def model_changed(self, change) -> Path:
        """A copy of the model folder, `change`d (a function of the folder)."""
        folder = shutil.copytree(self.model, self.tmp / "model")
        change(folder)
        return folder

    def model_file(self, content: bytes) -> Path:
        folder = shutil.copytree(self.model, self.tmp / "model")
        (folder / "siamese_config.json").write_bytes(content)
        return folder

    def data_with(self, change) -> Path:
        root = self.data()
        change(root)
        return root

    def file(self, name: str = "a-file", content: bytes = b"x") -> Path:
        (self.tmp / name).write_bytes(content)
        return self.tmp / name


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few KB whose header says width x height (1-bit gray): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * ((width + 7) // 8 + 1) * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def truncate(relative: str):
    """Cut a model file to half its size, as an interrupted copy or download leaves it."""
    def change(folder: Path) -> None:
        data = (folder / relative).read_bytes()
        (folder / relative).write_bytes(data[: len(data) // 2])
    return change


def truncated_guide(folder: Path) -> None:
    """guide/ as add-guide writes it, its safetensors file cut short."""
    import torch
    from safetensors.torch import save_file

    (folder / "guide").mkdir()
    save_file({"unet.conv_out.bias": torch.ones(16)}, str(folder / "guide" / "guide.safetensors"))
    (folder / "guide" / "guide_config.json").write_text('{"source": "x", "tensors": 1, "parts": ["unet"]}')
    truncate("guide/guide.safetensors")(folder)


def edit_json(relative: str, **changes):
    def change(folder: Path) -> None:
        path = folder / relative
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return change


def empty_tokenizer(folder: Path) -> None:
    for path in (folder / "tokenizer").iterdir():
        path.unlink()


def duplicate_stem(root: Path) -> None:
    (root / "images" / "case02.png").write_bytes((root / "masks" / "case02.png").read_bytes())


def small_mask(root: Path) -> None:
    cv2.imwrite(str(root / "masks" / "case03.png"), np.zeros((40, 50), np.uint8))


def empty_masks(root: Path) -> None:
    for path in (root / "masks").iterdir():
        cv2.imwrite(str(path), np.zeros((80, 80), np.uint8))


def prompt_json(content: bytes):
    return lambda root: (root / "prompt.json").write_bytes(content)


EMPTY = np.zeros((80, 80), np.uint8)
WHITE = np.full((80, 80), 255, np.uint8)
NOT_UTF8 = b'{"source": "masks/case00.png", "target": "images/case00.jpg", "prompt": "caf\xe9"}\n'
OUTSIDE = b'{"source": "../x.png", "target": "images/case00.jpg"}\n'


# -- the command line ----------------------------------------------------------------------------
def sample(i: Inputs, *extra: str, masks=None, model=None) -> list[str]:
    return ["sample", "--model", str(model or i.model), "--masks", str(masks or i.mask()), "--steps", "1",
            "--output", str(i.out), *extra]


def train_args(i: Inputs, *extra: str, data=None) -> list[str]:
    return ["train", "--data", str(data or i.data()), "--output", str(i.out), "--resolution", "64",
            "--max-steps", "1", *extra]


CLI = {
    # sample: settings, checked before the model loads
    "sample batch size 0": (lambda i: sample(i, "--batch-size", "0"), "batch size must be at least 1, got 0"),
    "sample 0 images": (lambda i: sample(i, "--num-images", "0"), "number of images must be between 1 and 64"),
    "sample 65 images": (lambda i: sample(i, "--num-images", "65"), "number of images must be between 1 and 64"),
    "sample seed -1": (lambda i: sample(i, "--seed", "-1"), "seed must be between 0 and 4294967295, got -1"),
    "sample seed 2**70": (lambda i: sample(i, "--seed", str(2**70)), "seed must be between 0 and 4294967295"),
    "sample 0 steps": (lambda i: sample(i, "--steps", "0"), "steps must be between 1 and 1000"),
    "sample guidance -1": (lambda i: sample(i, "--guidance", "-1"), "guidance scale must be between 0 and 50"),
    "sample eta 2": (lambda i: sample(i, "--eta", "2"), "eta must be between 0 and 1"),
    "sample control scale 11": (lambda i: sample(i, "--control-scale", "11"), "control scale must be between 0 and 10"),
    "sample control end 0": (lambda i: sample(i, "--control-end", "0"), "control end must be a fraction of the steps"),
    "sample unknown scheduler": (lambda i: sample(i, "--scheduler", "euler"), "argument --scheduler: invalid choice"),
    "sample images not a number": (lambda i: sample(i, "--num-images", "abc"), "invalid int value: 'abc'"),
    "sample device foo": (lambda i: sample(i, "--device", "foo"),
                          "argument --device: expected cpu, cuda, cuda:N or mps, got 'foo'"),
    # sample: mask files, all read before any image is made
    "sample no such masks": (lambda i: sample(i, masks=i.tmp / "none"), "no such file or folder"),
    "sample folder of no images": (lambda i: sample(i, masks=i.file("notes.txt").parent),
                                   "no mask images in this folder"),
    "sample unreadable mask last": (lambda i: sample(i, masks=i.masks({"zz.png": b"not an image"})),
                                    "zz.png: not a readable image"),
    "sample empty mask last": (lambda i: sample(i, masks=i.masks({"zz.png": EMPTY})), "zz.png: the mask is empty"),
    "sample white mask last": (lambda i: sample(i, masks=i.masks({"zz.png": WHITE})), "zz.png: the mask is all white"),
    "sample two masks one name": (lambda i: sample(i, masks=i.masks({"case01.bmp": EMPTY})),
                                  "case01.bmp and case01.png have the same name"),
    "sample mask bomb": (lambda i: sample(i, masks=i.file("bomb.png", png_header(20000, 20000))),
                         "bomb.png: the image is too large"),
    # sample: where it writes, before the model loads and before any sampling
    "sample output is a file": (lambda i: sample(i, "--output", str(i.file())), "it is a file, not a folder"),
    "sample output under a file": (lambda i: sample(i, "--output", str(i.file() / "out")), "is a file, not a folder"),
    "sample output holds the masks": (lambda i: sample(i, "--output", str(i.masks().parent), masks=i.tmp / "pairs/masks"),
                                      "pairs contains the masks folder"),
    "sample output is the masks": (lambda i: sample(i, "--output", str(i.masks()), masks=i.tmp / "pairs/masks"),
                                   "pairs/masks is the masks folder"),
    "sample output in the masks": (lambda i: sample(i, "--output", str(i.masks() / "out"), masks=i.tmp / "pairs/masks"),
                                   "masks/out is inside the masks folder"),
    "sample output holds the mask file": (lambda i: sample(i, "--output", str(i.mask().parent.parent)),
                                          "one contains the masks folder"),
    # sample: the model
    "sample no model": (lambda i: sample(i, model=i.tmp / "nowhere"), "No model folder at"),
    "sample config resolution text": (lambda i: sample(i, model=i.model_with(resolution="abc")),
                                      "siamese_config.json: 'resolution' must be a whole number"),
    "sample config prompt number": (lambda i: sample(i, model=i.model_with(prompt=5)),
                                    "siamese_config.json: 'prompt' must be text, got 5"),
    "sample config bad JSON": (lambda i: sample(i, model=i.model_file(b"{")), "siamese_config.json: not valid JSON"),
    "sample config not UTF-8": (lambda i: sample(i, model=i.model_file(b'{"name": "\xff"}')),
                                "siamese_config.json: not UTF-8 text"),
    # sample: a damaged model folder, each part named (nothing is written: the model loads before any sampling)
    "sample guide cut short": (lambda i: sample(i, model=i.model_changed(truncated_guide)),
                               "guide/guide.safetensors could not be read"),
    "sample text encoder cut short": (lambda i: sample(i, model=i.model_changed(truncate("text_encoder/model.safetensors"))),
                                      "text_encoder/model.safetensors could not be read"),
    "add-guide guide cut short": (lambda i: ["add-guide", "--model", str(i.model), "--output", str(i.out), "--guide",
                                             str(i.model_changed(truncate("text_encoder/model.safetensors")))],
                                  "text_encoder/model.safetensors could not be read"),
    "sample text encoder hidden size": (
        lambda i: sample(i, model=i.model_changed(edit_json("text_encoder/config.json", hidden_size=32))),
        "'embeddings.position_embedding.weight' is [77, 64] but"),
    "sample empty tokenizer": (lambda i: sample(i, model=i.model_changed(empty_tokenizer)),
                               "tokenizer: no tokenizer files"),
    "sample 0 training timesteps": (
        lambda i: sample(i, model=i.model_changed(edit_json("scheduler/scheduler_config.json", num_train_timesteps=0))),
        "scheduler_config.json: 'num_train_timesteps' must be a whole number between 1 and 100000, got 0"),
    # train: settings, checked before anything is read or written
    "train seed -1": (lambda i: train_args(i, "--seed", "-1"), "seed must be a whole number between 0 and 4294967295"),
    "train seed 2**70": (lambda i: train_args(i, "--seed", str(2**70)), "seed must be a whole number between 0"),
    "train resolution 100": (lambda i: train_args(i, "--resolution", "100"), "resolution must be a multiple of 64"),
    "train batch size 0": (lambda i: train_args(i, "--batch-size", "0"), "batch size must be a whole number 1 or more"),
    "train 0 steps": (lambda i: train_args(i, "--max-steps", "0"), "max steps must be a whole number 1 or more"),
    "train lr 0": (lambda i: train_args(i, "--lr", "0"), "learning rate must be a positive number"),
    "train lr nan": (lambda i: train_args(i, "--lr", "nan"), "learning rate must be a positive number, got nan"),
    "train lr 1e30": (lambda i: train_args(i, "--lr", "1e30"), "learning rate must be at most 1, got 1e+30: AdamW"),
    "train lr times zero scale": (lambda i: train_args(i, "--lr", "0.5", "--zero-lr-scale", "10"),
                                  "at most 1, got 0.5 times the zero-layer lr scale 10 = 5"),
    "train batch size 10**9": (lambda i: train_args(i, "--batch-size", str(10**9)),
                               "batch size must be at most 4096, got 1000000000: a batch"),
    "train empty tokenizer": (lambda i: train_args(i, "--model", str(i.model_changed(empty_tokenizer))),
                              "tokenizer: no tokenizer files"),
    "train EMA decay 1": (lambda i: train_args(i, "--ema-decay", "1"), "EMA decay must be in [0, 1)"),
    "train holdout 1": (lambda i: train_args(i, "--holdout", "1"), "holdout must be a fraction in [0, 1)"),
    "train base steps on a folder": (lambda i: train_args(i, "--base-steps", "2", "--model", str(i.model)),
                                     "base steps pre-train a UNet built from scratch"),
    "train precision fp8": (lambda i: train_args(i, "--mixed-precision", "fp8"),
                            "argument --mixed-precision: invalid choice"),
    "train output is a file": (lambda i: train_args(i, "--output", str(i.file())), "it is a file, not a folder"),
    "train resume no checkpoint": (lambda i: train_args(i, "--resume", str(i.tmp / "none")),
                                   "is not a checkpoint folder"),
    # train: the data, read before the run folder is made
    "train no data": (lambda i: train_args(i, data=i.tmp / "none"), "none: no such folder"),
    "train two images one name": (lambda i: train_args(i, data=i.data_with(duplicate_stem)),
                                  "case02.jpg and case02.png have the same name"),
    "train sizes differ": (lambda i: train_args(i, data=i.data_with(small_mask)),
                           "case03.jpg is 80x80 pixels but its mask"),
    "train all masks empty": (lambda i: train_args(i, data=i.data_with(empty_masks)), "all 6 masks are empty"),
    "train prompt.json not UTF-8": (lambda i: train_args(i, data=i.data_with(prompt_json(NOT_UTF8))),
                                    "prompt.json: not UTF-8 text"),
    "train prompt.json outside": (lambda i: train_args(i, data=i.data_with(prompt_json(OUTSIDE))),
                                  "must be a path inside the dataset folder"),
    "train prompt.json number prompt": (
        lambda i: train_args(i, data=i.data_with(prompt_json(b'{"source": "masks/case00.png", "target": '
                                                             b'"images/case00.jpg", "prompt": 7}'))),
        "prompt.json line 1: the prompt must be text, got 7"),
}


@pytest.fixture()
def signal_handlers():
    """`train` turns Ctrl-C into "stop after this step": give pytest its own handlers back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _cli_error(build, message: str, tmp_path, tiny_model_dir, capsys) -> Inputs:
    """Run the CLI case: exit code 2, a last line `error: ...` holding `message`, no traceback; its Inputs."""
    inputs = Inputs(tmp_path, tiny_model_dir)
    args = build(inputs)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2, err
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in err
    return inputs


@pytest.mark.parametrize("case", list(CLI))
def test_cli(case, tmp_path, tiny_model_dir, capsys, signal_handlers):
    inputs = _cli_error(*CLI[case], tmp_path, tiny_model_dir, capsys)
    assert not inputs.out.exists(), "output written"
    assert not list(tmp_path.rglob("*_00.png")) and not list(tmp_path.rglob("metadata.jsonl"))
    assert not list(tmp_path.rglob("train_config.json"))


def test_cli_cuda_on_a_torch_without_cuda(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """--device cuda where CUDA is not available (a CPU-only torch here, whatever this machine has): refused when
    parsed, before anything is read."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    inputs = _cli_error(lambda i: sample(i, "--device", "cuda"),
                        "argument --device: 'cuda': CUDA is not available (this torch is built without CUDA); use "
                        "--device cpu", tmp_path, tiny_model_dir, capsys)
    assert not inputs.out.exists()


# -- the library ---------------------------------------------------------------------------------
def _mask() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 16:44] = 255
    return mask


LIBRARY = {
    "read_mask of text": (lambda i, m: read_mask(i.file("t.png", b"text")), DataError, "not a readable image"),
    "read_image of a bomb": (lambda i, m: read_image(i.file("b.png", png_header(9000, 9000))), DataError,
                             "9000x9000 pixels, too large"),
    "binarize text": (lambda i, m: binarize_mask(np.array([["x"]])), DataError, "array of numbers"),
    "binarize 4-D": (lambda i, m: binarize_mask(np.zeros((2, 2, 2, 2))), DataError, "2-D grayscale or colour"),
    "generate 16-bit empty": (lambda i, m: generate(m, np.zeros((64, 64), np.uint16)), DataError, "empty"),
    "generate batch size 0": (lambda i, m: generate(m, _mask(), batch_size=0), ValueError, "batch size"),
    "generate prompt number": (lambda i, m: generate(m, _mask(), params=SamplingParams(prompt=5)), ValueError,
                               "prompt must be text"),
    "generate seed 2**40": (lambda i, m: generate(m, _mask(), seed=2**40), ValueError, "seed must be between"),
    "load control scale text": (lambda i, m: generate(_load(i.model_with(control_scale="2")), _mask()),
                                ModelLoadError, "'control_scale' must be a number"),
    "pairs two masks one name": (lambda i, m: find_pairs(i.data_with(lambda r: cv2.imwrite(
        str(r / "masks" / "case01.bmp"), EMPTY))), DataError, "case01.bmp and case01.png have the same name"),
    "dataset all empty": (lambda i, m: PairDataset(i.data_with(empty_masks), 64), DataError, "masks are empty"),
    "split too few": (lambda i, m: split_pairs(find_pairs(i.data(n=3)), 0.2, 0), DataError, "at least 4"),
    "train seed -1": (lambda i, m: train(TrainConfig(data=str(i.data()), output=str(i.out), seed=-1)), ValueError,
                      "seed must be"),
    "train prompt number": (lambda i, m: train(TrainConfig(data=str(i.data()), output=str(i.out), prompt=3)),
                            ValueError, "prompt must be text"),
    "write_pairs into a file": (lambda i, m: write_pairs(generate(m, _mask(), params=SamplingParams(steps=1)),
                                                         i.file() / "out"), OSError, "a-file"),
    "export nothing": (lambda i, m: export_zip([], i.out / "x.zip"), ValueError, "nothing to export"),
    "export nnU-Net label background": (lambda i, m: export_zip(_pair(m), i.out / "x.zip", nnunet=True,
                                                                label="background"),
                                        ValueError, "nnU-Net label name cannot be 'background'"),
    "export nnU-Net label Ignore": (lambda i, m: export_zip(_pair(m), i.out / "x.zip", nnunet=True, label="Ignore"),
                                    ValueError, "cannot be 'Ignore': nnU-Net reserves"),
    "export nnU-Net label empty": (lambda i, m: export_zip(_pair(m), i.out / "x.zip", nnunet=True, label=" "),
                                   ValueError, "label name must be a non-empty text"),
    "load 0 training timesteps": (lambda i, m: _load(i.model_changed(edit_json("scheduler/scheduler_config.json",
                                                                               num_train_timesteps=0))),
                                  ModelLoadError, "'num_train_timesteps' must be a whole number"),
}


def _pair(model) -> list:
    return generate(model, _mask(), params=SamplingParams(steps=1))


def _load(folder):
    from siamese import load_model
    return load_model(folder)


@pytest.mark.parametrize("case", list(LIBRARY))
def test_library(case, tmp_path, tiny_model_dir, tiny_model):
    call, error, message = LIBRARY[case]
    inputs = Inputs(tmp_path, tiny_model_dir)
    with pytest.raises(error, match=message) as info:
        call(inputs, tiny_model)
    assert "\n" not in str(info.value)
    assert not inputs.out.exists()


# -- the app's API (the handlers /generate, /train_start and /export call) -------------------------
@pytest.fixture()
def studio(tiny_model_dir, tmp_path) -> Studio:
    return Studio(str(tiny_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                  settings=Settings(data_root=tmp_path))


def gen(**kwargs):
    args = dict(mask=_mask(), prompt="", num_images=1, steps=1, guidance_scale=3.0, seed=0, scheduler="ddim",
                model=None)
    return lambda s, i: s.generate.generate(**{**args, **kwargs})


def bad_run_model(s: Studio, i: Inputs) -> str:
    folder = i.model_with(resolution="abc")
    shutil.move(folder, s.runs_dir / "bad")  # a run of this server, offered in the selector
    return "runs/app/bad"


def start(**kwargs):
    args = dict(data_folder="data", max_steps=2, batch_size=2, resolution=64)
    return lambda s, i: (i.data(), s.train.train_start(**{**args, **kwargs}))


APP = {
    "generate prompt number": (gen(prompt=5), "prompt must be text, got int"),
    "generate steps text": (gen(steps="abc"), "steps must be a number, got 'abc'"),
    "generate steps 1.5": (gen(steps=1.5), "steps must be a whole number"),
    "generate no image count": (gen(num_images=None), "number of images is missing"),
    "generate 100 images": (gen(num_images=100), "number of images must be between 1 and 16"),
    "generate seed 2**40": (gen(seed=2**40), "seed must be between 0 and 4294967295"),
    "generate guidance nan": (gen(guidance_scale=float("nan")), "guidance scale must be a finite number"),
    "generate scheduler list": (gen(scheduler=["ddim"]), "scheduler must be text"),
    "generate 16-bit empty mask": (gen(mask=np.zeros((64, 64), np.uint16)), "the mask is empty"),
    "generate text mask": (gen(mask=np.array([["a"]])), "a mask must be an array of numbers"),
    "generate model config wrong": (lambda s, i: s.generate.generate(_mask(), "", 1, 1, 3.0, 0, "ddim",
                                                                          bad_run_model(s, i)),
                                    "'resolution' must be a whole number of pixels"),
    "train 0 steps": (start(max_steps=0), "max steps must be a whole number 1 or more"),
    "train steps text": (start(max_steps="many"), "steps must be a number, got 'many'"),
    "train resolution 100": (start(resolution=100), "resolution must be a multiple of 64"),
    "train lr -1": (start(lr=-1), "learning rate must be a positive number"),
    "train checkpoint every 0": (start(checkpoint_every=0), "checkpoint every must be a whole number 1 or more"),
    "train run name number": (start(name=5), "run name must be text, got int"),
    "train start from nonsense": (start(base_model="sd2"), "start from must be one of"),
    "train two images one name": (lambda s, i: (i.data_with(duplicate_stem),
                                                s.train.train_start(data_folder="data")),
                                  "case02.jpg and case02.png have the same name"),
    "train prompt.json not UTF-8": (lambda s, i: (i.data_with(prompt_json(NOT_UTF8)),
                                                  s.train.train_start(data_folder="data")),
                                    "prompt.json: not UTF-8 text"),
    "export nothing": (lambda s, i: s.collection.export([], False, "x"), "nothing to export"),
    "export nnU-Net label background": (lambda s, i: s.collection.export(_shots(i), True, "background"),
                                        "nnU-Net label name cannot be 'background'"),
    "generate from an empty canvas": (lambda s, i: s.generate.prepare({"background": None, "layers": []}, 0, False),
                                      "the canvas is empty"),
}


def _shots(i: Inputs) -> list:
    """One kept pair of the Keep collection, as the page holds it."""
    from studio.tabs.collection import Shot

    return [Shot(item, png="") for item in _pair(_load(i.model))]


@pytest.mark.parametrize("case", list(APP))
def test_app(case, tmp_path, tiny_model_dir, studio):
    call, message = APP[case]
    inputs = Inputs(tmp_path, tiny_model_dir)
    studio.runs_dir.mkdir()
    with pytest.raises(gr.Error, match=message) as info:
        call(studio, inputs)
    assert "\n" not in info.value.message and str(tmp_path) not in info.value.message  # one line, no server path
    assert not studio.job.running and [p.name for p in studio.runs_dir.iterdir()] in ([], ["bad"])
    assert not list(studio.scratch.path.rglob("*.png")) and not list(studio.scratch.path.rglob("*.zip"))


def test_every_number_of_a_training_run_is_checked_with_its_name():
    """Each number of TrainConfig (every one a `train` option or a library setting) refuses -1 before anything is
    read or written, with a message that names the setting."""
    named = {"lr": "learning rate", "zero_lr_scale": "zero-layer lr scale", "ema_decay": "EMA decay"}
    hints = typing.get_type_hints(TrainConfig)
    numbers = [f.name for f in dataclasses.fields(TrainConfig) if hints[f.name] in (int, float)]
    assert len(numbers) >= 20
    for name in numbers:
        with pytest.raises(ValueError, match=named.get(name, name.replace("_", " "))):
            dataclasses.replace(TrainConfig("data", "out"), **{name: -1}).validate()


# -- the fidelity threshold and the scorer (issue 15) ---------------------------------------------
def model_with_scorer(i: Inputs, damage=None) -> Path:
    """The tiny model with a fidelity scorer (2 training steps), its config.json optionally damaged."""
    from siamese.fidelity import ScorerConfig, save_scorer, train_scorer

    folder = shutil.copytree(i.model, i.tmp / "scored")
    images = np.zeros((2, 64, 64, 3), np.uint8)
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[:, 20:40, 20:40] = 1
    save_scorer(train_scorer(images, masks, ScorerConfig(resolution=64, channels=(8, 16), steps=2, batch_size=2)),
                folder)
    if damage is not None:
        (folder / "segmenter" / "config.json").write_bytes(damage)
    return folder


def decoder_args(i: Inputs, *extra: str) -> list[str]:
    return ["train-decoder", "--model", str(i.model), "--data", str(i.data()), "--output", str(i.out), "--steps", "1",
            *extra]


FIDELITY_CLI = {
    "sample min fidelity 1.5": (lambda i: sample(i, "--min-fidelity", "1.5"),
                                "minimum fidelity must be a Dice score between 0 and 1, got 1.5"),
    "sample min fidelity -0.1": (lambda i: sample(i, "--min-fidelity", "-0.1"), "between 0 and 1, got -0.1"),
    "sample min fidelity nan": (lambda i: sample(i, "--min-fidelity", "nan"), "between 0 and 1, got nan"),
    "sample keep rejected alone": (lambda i: sample(i, "--keep-rejected"), "give --min-fidelity too"),
    "sample threshold without scorer": (lambda i: sample(i, "--min-fidelity", "0.5"),
                                        "python -m siamese train-scorer --model MODEL --data DATA"),
    "sample scorer config bad JSON": (lambda i: sample(i, "--min-fidelity", "0.5", model=model_with_scorer(i, b"{")),
                                      "segmenter/config.json: not valid JSON"),
    "sample scorer config unknown key": (
        lambda i: sample(i, model=model_with_scorer(i, b'{"colour": 1}')), "config.json: unknown keys ['colour']"),
    "train-decoder holdout nan": (lambda i: decoder_args(i, "--holdout", "nan"),
                                  "holdout must be a fraction in [0, 1), got nan"),
    "train-decoder holdout 1": (lambda i: decoder_args(i, "--holdout", "1"), "holdout must be a fraction in [0, 1), got 1"),
    "train-decoder holdout -0.1": (lambda i: decoder_args(i, "--holdout", "-0.1"), "in [0, 1), got -0.1"),
    "train-scorer 0 steps": (lambda i: ["train-scorer", "--model", str(i.model), "--data", str(i.data()),
                                        "--output", str(i.out), "--steps", "0"], "scorer steps must be a whole number"),
    "train-scorer resolution 100": (lambda i: ["train-scorer", "--model", str(i.model), "--data", str(i.data()),
                                               "--output", str(i.out), "--resolution", "100"],
                                    "scorer resolution must be between 32 and 1024 and a multiple of 16"),
    "train-scorer not a model": (lambda i: ["train-scorer", "--model", str(i.data()), "--data", str(i.data()),
                                            "--output", str(i.out)], "no siamese_config.json"),
    "train scorer steps -1": (lambda i: train_args(i, "--scorer-steps", "-1"), "scorer steps must be a whole number"),
    "evaluate curation threshold 2": (lambda i: ["evaluate", "--data", str(i.data()), "--curation",
                                                 "--curation-thresholds", "0.5,2"],
                                      "expected comma-separated numbers between 0 and 1, got '0.5,2'"),
    "evaluate cache interval 0": (lambda i: ["evaluate", "--data", str(i.data()), "--cache-interval", "0"],
                                  "cache interval must be"),
}


@pytest.mark.parametrize("case", list(FIDELITY_CLI))
def test_cli_fidelity(case, tmp_path, tiny_model_dir, capsys, signal_handlers):
    inputs = _cli_error(*FIDELITY_CLI[case], tmp_path, tiny_model_dir, capsys)
    assert not inputs.out.exists()

"""The Stable Diffusion 1.5 path, offline: a tiny random model in exactly the diffusers SD 1.5 layout goes through
the commands a GPU user runs: train (bf16 mixed precision, gradient checkpointing, resumed) -> sample -> evaluate
-> convert round trip (our run -> the reference's checkpoint layout -> convert -> the same pixels)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_dataset
from reference_layout import to_reference_state_dict
from sd15_layout import UNET_WIDTHS
from siamese.cli import main
from siamese.model import load_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_fixture_is_an_sd15_folder_in_the_diffusers_layout(sd15_dir):
    from diffusers import StableDiffusionPipeline

    index = json.loads((sd15_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {k: index[k] for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler")} == {
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"]}
    unet = json.loads((sd15_dir / "unet" / "config.json").read_text())
    vae = json.loads((sd15_dir / "vae" / "config.json").read_text())
    text = json.loads((sd15_dir / "text_encoder" / "config.json").read_text())
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert (unet["layers_per_block"], unet["attention_head_dim"], unet["in_channels"]) == (2, 8, 4)
    assert unet["cross_attention_dim"] == text["hidden_size"] and unet["block_out_channels"] == list(UNET_WIDTHS)
    assert (vae["latent_channels"], vae["scaling_factor"], len(vae["block_out_channels"])) == (4, 0.18215, 4)
    scheduler = json.loads((sd15_dir / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    pipe = StableDiffusionPipeline.from_pretrained(sd15_dir)  # diffusers itself reads it as SD 1.5
    assert pipe.vae_scale_factor == 8
    model = load_model(sd15_dir)  # and so do we: no ControlNet yet, a VAE codec
    assert model.controlnet is None and model.codec.latent_channels == 4 and model.codec.downscale == 8


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "images").glob("*.png"))}


@pytest.mark.slow
def test_train_resume_sample_evaluate_convert_through_the_cli(sd15_dir, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n=12)
    run = tmp_path / "run"
    train = ["train", "--model", str(sd15_dir), "--data", str(data), "--output", str(run), "--resolution", "64",
             "--batch-size", "2", "--max-steps", "4", "--checkpoint-every", "2", "--log-every", "1", "--lr", "1e-3",
             "--mixed-precision", "bf16", "--gradient-checkpointing", "--seed", "3"]
    # 1. train as a user does: python -m siamese train --model SD15_FOLDER ... (bf16 autocast works on the CPU)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "siamese", *train], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((run / "train_config.json").read_text())
    assert (record["mixed_precision"], record["gradient_checkpointing"], record["model"]) == ("bf16", True, str(sd15_dir))
    straight = _rows(run)
    trained = load_model(run)
    assert trained.codec.to_dict() == {"type": "vae"} and trained.config.resolution == 64
    weights = {k: v.clone() for k, v in trained.controlnet.state_dict().items()}
    fresh = load_model(sd15_dir)
    fresh.add_controlnet(3)
    assert not all(torch.equal(weights[k], v) for k, v in fresh.controlnet.state_dict().items())  # it trained

    # 2. killed after the step-2 checkpoint: --resume latest redoes steps 3 and 4 to the same losses and weights
    shutil.rmtree(run / "checkpoints" / "step-0000004")
    # (in a process of its own, as a user runs it: accelerate's state is once per process, and this pytest process
    # has already trained without mixed precision)
    done = subprocess.run([sys.executable, "-m", "siamese", *train, "--resume", "latest"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = _rows(run)
    assert [r["step"] for r in resumed] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    again = load_model(run).controlnet.state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)

    # 3. sample
    masks = data / "masks"
    sample = ["sample", "--model", str(run), "--masks", str(masks), "--num-images", "1", "--steps", "2", "--seed", "5",
              "--guidance", "3", "--prompt", "a polyp"]
    assert main([*sample, "--output", str(tmp_path / "out")]) == 0
    pixels = _pixels(tmp_path / "out")
    assert len(pixels) == 12 and all(a.shape == (64, 64, 3) and a.std() > 0 for a in pixels.values())
    assert len((tmp_path / "out" / "metadata.jsonl").read_text().splitlines()) == 12

    # 4. evaluate (tiny settings)
    capsys.readouterr()
    assert main(["evaluate", "--data", str(data), "--model", str(run), "--seg-steps", "2", "--steps", "1", "--seeds", "1",
                 "--resolution", "64", "--test-fraction", "0.34", "--max-test", "2"]) == 0
    assert "Downstream benefit" in capsys.readouterr().out

    # 5. convert round trip: the run in the reference's layout (a merged ControlLDM .ckpt) -> convert -> same pixels
    torch.save({"state_dict": to_reference_state_dict(load_model(run))}, tmp_path / "merged.ckpt")
    assert main(["convert", str(tmp_path / "merged.ckpt"), str(tmp_path / "converted"), "--base", str(sd15_dir),
                 "--resolution", "64"]) == 0
    assert main([*sample, "--model", str(tmp_path / "converted"), "--output", str(tmp_path / "out2")]) == 0
    converted = _pixels(tmp_path / "out2")
    assert converted.keys() == pixels.keys()
    assert max(int(np.abs(converted[k].astype(int) - pixels[k].astype(int)).max()) for k in pixels) == 0

"""The command line: train -> sample produces valid pairs; errors end with exit code 2 and one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from siamese.cli import main
from siamese.model_config import SiameseConfig

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "siamese", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_sample_writes_pairs_and_metadata(tiny_model_dir, dataset, tmp_path):
    out = tmp_path / "out"
    code = main(["sample", "--model", str(tiny_model_dir), "--masks", str(dataset / "masks"), "--num-images", "2",
                 "--steps", "2", "--seed", "5", "--scheduler", "unipc", "--control-scale", "1.5", "--output", str(out)])
    assert code == 0
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 12
    first = lines[0]
    assert first["image"] == "images/case00_00.png" and first["mask"] == "masks/case00_00.png"
    assert first["seed"] == 5 and lines[1]["seed"] == 6 and lines[2]["seed"] == 7
    assert first["steps"] == 2 and first["scheduler"] == "unipc" and first["model"]["fingerprint"]
    assert first["source_mask"].endswith("case00.png") and "guidance_scale" in first and first["prompt"]
    image = Image.open(out / first["image"])
    mask = np.array(Image.open(out / first["mask"]))
    assert image.mode == "RGB" and image.size == mask.shape[::-1]
    assert set(np.unique(mask)) <= {0, 255}
    assert "Seed: 5" in image.text["parameters"] and "Control scale: 1.5" in image.text["parameters"]
    assert first["control_scale"] == 1.5


def test_sample_with_augmented_masks(tiny_model_dir, dataset, tmp_path):
    out = tmp_path / "aug"
    assert main(["sample", "--model", str(tiny_model_dir), "--masks", str(dataset / "masks" / "case01.png"),
                 "--num-images", "2", "--steps", "1", "--seed", "0", "--augment-masks", "--output", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert all(x["augmented_mask"] for x in lines)
    masks = [np.array(Image.open(out / x["mask"])) for x in lines]
    assert not np.array_equal(masks[0], masks[1])


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["sample", "--masks", "/no/such/dir", "--output", "x"], "no such file or folder"),
    (["train", "--data", "/no/such/dir", "--output", "x"], "no such folder"),
    (["sample", "--model", "/no/model", "--masks", ".", "--output", "x"], "no mask images"),
])
def test_errors_exit_2_with_one_clear_line(args, message, tmp_path):
    proc = _run(*args)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bad_option_exits_2():
    assert _run("sample", "--masks", "m.png", "--output", "o", "--scheduler", "euler").returncode == 2


@pytest.mark.slow
def test_missing_model_is_clear(dataset, tmp_path):
    proc = _run("sample", "--model", str(tmp_path / "none"), "--masks", str(dataset / "masks"), "--output", "o")
    assert proc.returncode == 2 and "No model folder" in proc.stderr


@pytest.mark.slow
def test_sample_without_model_uses_the_bundled_one_offline(tmp_path):
    """The bundled model (checkpoints/), its recommended control scale, a real 256x256 image; no network."""
    env = {k: v for k, v in os.environ.items() if k != "SIAMESE_MODEL"}
    mask = ROOT / "assets" / "masks" / "round.png"
    proc = subprocess.run([sys.executable, "-m", "siamese", "sample", "--masks", str(mask), "--output",
                           str(tmp_path / "out"), "--steps", "3", "--scheduler", "dpm++",
                           "--guidance", "3", "--seed", "0"],
                          env={**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "out" / "metadata.jsonl").read_text().splitlines()[0])
    assert meta["model"]["name"] == "siamese-kvasir-tiny" and meta["control_scale"] == 1.5
    assert meta["control_end"] == 1.0  # the recommended values (version 6): mask strength 1.5 in every step
    assert meta["autoguidance"] == 2.0  # version 7: autoguidance 2 with the folder's guide
    image = np.asarray(Image.open(tmp_path / "out" / meta["image"]))
    assert image.shape == (256, 256, 3) and image.std() > 10  # an image, not a flat fill


def test_bundled_model_folder_is_small_and_documented():
    folder = ROOT / "checkpoints" / "siamese-kvasir-tiny"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 50 * 2**20
    card = (folder / "README.md").read_text()
    assert "Kvasir-SEG" in card and "research and education" in card.lower() and "recipe.sh" in card
    config = SiameseConfig.load(folder)  # valid settings: a value out of range or of the wrong type is an error
    words = " ".join(card.split())  # the card states the values the folder recommends, and the guide is there
    assert f'"control_scale": {config.control_scale:g}' in words and f'"control_end": {config.control_end:.1f}' in words
    assert f"autoguidance {config.autoguidance:g}" in words
    assert config.autoguidance == 1 or (folder / "guide" / "guide.safetensors").is_file()


@pytest.mark.slow
def test_train_decoder_adds_a_learned_decoder_to_a_model_folder(tiny_model_dir, dataset, tmp_path):
    """train-decoder writes codec/decoder/ with its held-out figures; the folder loads and samples with it;
    a bad setting is one line and exit 2, before anything is written."""
    out = tmp_path / "with-decoder"
    code = main(["train-decoder", "--model", str(tiny_model_dir), "--data", str(dataset), "--output", str(out),
                 "--steps", "3", "--crop", "32", "--width", "8", "--holdout", "0.34"])
    assert code == 0
    record = json.loads((out / "codec" / "decoder" / "train_config.json").read_text())
    assert record["steps"] == 3 and record["held_out"]["images"] == 2
    assert set(record["held_out"]["psnr_db"]) == {"linear", "learned"}
    assert json.loads((out / "siamese_config.json").read_text())["codec"]["learned_decoder"] is True
    assert main(["sample", "--model", str(out), "--masks", str(dataset / "masks" / "case00.png"), "--steps", "1",
                 "--seed", "0", "--output", str(tmp_path / "s")]) == 0
    bad = _run("train-decoder", "--model", str(tiny_model_dir), "--data", str(dataset), "--output",
               str(tmp_path / "bad"), "--crop", "30")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "error: decoder crop must be a multiple of the patch size 8, got 30"
    assert not (tmp_path / "bad").exists()
    for args, message in ((["--adversarial-weight", "-1"], "adversarial weight must be between 0 and 10, got -1.0"),
                          (["--fine-tune"], f"{tiny_model_dir} has no learned decoder to fine-tune: train one first "
                                            "(without --fine-tune)")):
        bad = _run("train-decoder", "--model", str(tiny_model_dir), "--data", str(dataset), "--output",
                   str(tmp_path / "bad"), *args)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == f"error: {message}"
        assert not (tmp_path / "bad").exists()


def test_sample_again_into_the_same_folder_keeps_one_line_per_file(tiny_model_dir, dataset, tmp_path):
    out = tmp_path / "out"
    args = ["sample", "--model", str(tiny_model_dir), "--masks", str(dataset / "masks" / "case00.png"),
            "--num-images", "2", "--steps", "1", "--seed", "0", "--output", str(out)]
    assert main(args) == 0 and main(args[:-4] + ["--seed", "9", "--output", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(x["image"] for x in lines) == sorted(f"images/{p.name}" for p in (out / "images").iterdir())
    assert [x["seed"] for x in lines] == [9, 10]  # the lines of the latest run


def test_seeds_wrap_around_instead_of_failing_at_a_later_mask(tiny_model_dir, dataset, tmp_path):
    """Mask m starts at seed + m * num_images: past 2**32 - 1 it wraps to 0 (not an error after mask 0 is written)."""
    out = tmp_path / "out"
    assert main(["sample", "--model", str(tiny_model_dir), "--masks", str(dataset / "masks"), "--num-images", "1",
                 "--steps", "1", "--seed", str(2**32 - 1), "--output", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert [x["seed"] for x in lines] == [2**32 - 1, 0, 1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["sample", "--masks", "m.png", "--output", "o", "--batch-size", "0"], "error: batch size must be at least 1"),
    (["train", "--data", "d", "--output", "o", "--seed", "-1"], "error: seed must be a whole number between 0"),
    (["sample", "--masks", "m.png", "--output", "o", "--num-images", "x"], "error: argument --num-images: invalid"),
    (["sample", "--masks", "m.png", "--output", "o", "--device", "foo"], "error: argument --device: expected cpu"),
])
def test_bad_settings_in_a_real_process_exit_2_before_anything(args, message, tmp_path):
    """As a process: exit code 2, the last stderr line says what was wrong, nothing written (cwd: tmp_path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "siamese", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["build", "--data", "d", "--output", "o"],
                                     ["evaluate", "--data", "d", "--model", "m"]])
def test_build_and_evaluate_take_a_checked_device(command, capsys):
    """build and evaluate run their sampling, scorer and segmentation networks on --device (default: CUDA when
    available); a device this machine lacks is refused before anything is read."""
    with pytest.raises(SystemExit) as e:
        main([*command, "--device", "foo"])
    assert e.value.code == 2
    assert "argument --device: expected cpu, cuda, cuda:N or mps, got 'foo'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            main([*command, "--device", "cuda"])
        assert e.value.code == 2 and "CUDA is not available" in capsys.readouterr().err

"""Tests of siamese.evaluate: metrics on known inputs, and the whole evaluation on a tiny model and data."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from conftest import shared_dataset, write_dataset
from siamese.data import DataError, find_pairs
from siamese.stopping import Stopped
from siamese.evaluate import (
    STATISTICS, EvalConfig, build_segnet, codec_reconstructions, dice_iou, evaluate, flat_paintings, format_report,
    generator_data_note, image_statistics, kid, mask_use, pairwise_distances, pixel_quality, segnet_features,
    split_pairs, train_segnet,
)


def _ellipse_pair(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A random ellipse mask and a coloured, textured image with the ellipse in another colour."""
    mask = np.zeros((size, size), np.uint8)
    centre = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
    axes = tuple(int(a) for a in rng.integers(size // 8, size // 4, 2))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    image = (rng.normal(0, 12, (size, size, 3)) + (180, 90, 80)).clip(0, 255)
    image[mask > 0] = (image[mask > 0] + (40, 60, 20)).clip(0, 255)
    return image.astype(np.uint8), mask


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def pairs12(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "pairs", n=12)


def _tiny_config(data: Path, model: Path, **kw) -> EvalConfig:
    settings = dict(data=data, model=model, seg_steps=5, steps=2, seeds=2, resolution=64, max_synthetic=4,
                    kid_subsets=5, seg_channels=(8, 16, 32))
    settings.update(kw)
    return EvalConfig(**settings)


# -- metrics ------------------------------------------------------------------------------------
def test_kid_is_about_zero_for_one_distribution_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same, _ = kid(x, y, subsets=20, seed=0)
    itself, _ = kid(x, x, subsets=20, seed=0)
    near, _ = kid(x, y + 0.5, subsets=20, seed=0)
    far, _ = kid(x, y + 2.0, subsets=20, seed=0)
    assert abs(same) < 0.05
    assert abs(itself) < 0.1 * near  # slightly negative: the subsets share samples
    assert far > near > 10 * abs(same)


def test_kid_refuses_mismatched_or_tiny_sets():
    with pytest.raises(ValueError, match="same D"):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 3)), np.zeros((5, 3)))


def test_dice_iou_of_identical_disjoint_and_empty_masks():
    a = np.zeros((3, 16, 16), np.uint8)
    a[:, 4:10, 4:10] = 1
    dice, iou = dice_iou(a, a)
    np.testing.assert_allclose(dice, 1.0)
    np.testing.assert_allclose(iou, 1.0)
    b = np.zeros_like(a)
    b[:, 12:, 12:] = 1
    dice, iou = dice_iou(a, b)
    np.testing.assert_allclose(dice, 0.0)
    np.testing.assert_allclose(iou, 0.0)
    half = a.copy()
    half[:, 4:7] = 0  # half of a's 36 pixels: Dice 2*18/(18+36) = 2/3, IoU 18/36 = 1/2
    dice, iou = dice_iou(half, a)
    np.testing.assert_allclose(dice, 2 / 3, rtol=1e-5)
    np.testing.assert_allclose(iou, 0.5, rtol=1e-5)
    empty = np.zeros((1, 8, 8), np.uint8)
    assert dice_iou(empty, empty)[0][0] == 1.0


def test_texture_statistics_and_diversity_tell_a_flat_painting_from_a_textured_image():
    rng = np.random.default_rng(1)
    images, masks = (np.stack(a) for a in zip(*(_ellipse_pair(rng, 64) for _ in range(4))))
    paintings = flat_paintings(masks // 255, images, masks // 255)
    fine = STATISTICS.index("fine_detail")
    assert image_statistics(paintings)[:, fine].max() < 0.2 * image_statistics(images)[:, fine].min()
    same = pairwise_distances(np.repeat(images[:1], 3, axis=0), np.zeros((3, 4)))
    assert same == pytest.approx({"pixel_l1": 0.0, "one_minus_ssim": 0.0, "feature_distance": 0.0}, abs=1e-6)
    different = pairwise_distances(images, rng.normal(size=(4, 4)))
    assert all(v > 0.01 for v in different.values())


# -- segmentation network and split ----------------------------------------------------------------
def test_segnet_training_is_seeded_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(2)
    images, masks = (np.stack(a) for a in zip(*(_ellipse_pair(rng, 32) for _ in range(4))))
    state = torch.get_rng_state()
    nets = [train_segnet(images, masks // 255, steps=2, seed=3, batch_size=2, channels=(4, 8)) for _ in range(2)]
    assert torch.equal(state, torch.get_rng_state())
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(p, q)
    feats = segnet_features(nets[0], images)
    assert feats.shape == (4, 2 * (4 + 8)) and np.isfinite(feats).all()
    other = build_segnet((4, 8), seed=4)
    assert not all(torch.equal(p, q) for p, q in zip(nets[0].parameters(), other.parameters()))


def test_split_is_deterministic_disjoint_and_complete(pairs12):
    pairs = find_pairs(pairs12)
    train, held = split_pairs(pairs, 0.25, seed=0)
    assert (len(train), len(held)) == (9, 3)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(pairs)
    assert split_pairs(pairs, 0.25, seed=0) == (train, held)
    assert split_pairs(pairs, 0.25, seed=1)[1] != held
    with pytest.raises(DataError, match="at least 4"):
        split_pairs(pairs[:3], 0.25, seed=0)


def test_kvasir_split_sizes():
    train, held = split_pairs(find_pairs(shared_dataset("kvasir-seg")), 0.2, seed=0)
    assert (len(train), len(held)) == (720, 180)


# -- the whole evaluation ------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_reports_every_figure_and_writes_the_output(pairs12, tiny_model_dir, tmp_path):
    report = evaluate(_tiny_config(pairs12, tiny_model_dir, output=tmp_path / "out"))
    assert report["pairs"] == {"total": 12, "train": 10, "held_out": 2, "test": 2, "generated_test": 2}
    for key in ("real", "generated", "flat_painting"):
        assert 0.0 <= report["fidelity"][key]["dice"] <= 1.0
    down = report["downstream"]
    assert len(down["real"]["dice"]["per_seed"]) == len(down["real+synthetic"]["iou"]["per_seed"]) == 2
    assert (down["num_real"], down["num_synthetic"], down["num_synthetic_augmented"]) == (10, 4, 2)
    for kind in ("kid_features", "kid_statistics"):
        assert set(report["realism"][kind]) == {"real_train", "generated", "flat_painting"}
    assert set(report["diversity"]["generated_same_mask"]) == {"pixel_l1", "one_minus_ssim", "feature_distance"}
    assert report["diversity"]["masks"] == 2
    assert report["model"]["fingerprint"] and report["timings"]["total"] > 0
    assert any("capped" in note for note in report["notes"])
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(report))
    for name in ("fidelity.png", "diversity.png", "synthetic.png"):
        assert cv2.imread(str(tmp_path / "out" / name)) is not None
    use = report["mask_use"]
    assert use["pairs"] == 2 and min(use["mse_own_mask"], use["mse_other_mask"], use["mse_no_control"]) > 0
    pixels = report["pixels"]
    assert set(pixels["block_edge_ratio"]) == {"generated", "real", "reconstructed"}
    assert all(np.isfinite(v) and v > 0 for v in pixels["block_edge_ratio"].values())
    assert np.isfinite(pixels["codec_psnr_db"]) and pixels["codec_psnr_db"] > 0  # the 16-channel codec is lossy
    assert (pixels["resolution"], pixels["block"], pixels["real_images"], pixels["generated_images"]) == (64, 8, 2, 2)
    text = format_report(report)
    for heading in ("Mask fidelity", "Downstream benefit", "Realism", "Diversity", "flat painting", "Mask use",
                    "Pixels", "block-edge ratio", "codec reconstruction PSNR",
                    "control scale 1 in every step"):  # the model's recommended scale and window, as used
        assert heading in text
    assert report["settings"]["control_scale"] == 1.0 and report["settings"]["control_end"] == 1.0


class _StopAfter(threading.Event):
    """A stop event that reads as set from its (checks + 1)-th look on: a stop arriving at a known point."""

    def __init__(self, checks: int):
        super().__init__()
        self.checks = checks

    def is_set(self) -> bool:
        self.checks -= 1
        return self.checks < 0


@pytest.mark.parametrize("checks, where", [(2, "segmentation network"), (5, "generating")])
def test_a_stopped_evaluation_raises_stopped_and_writes_nothing(pairs12, tiny_model_dir, tmp_path, checks, where):
    """Stop is looked at before each step of a segmentation network and before each image: set in the first
    network's third step, or after its 5 steps (before the first image), it raises Stopped there; nothing is
    written, and the same evaluation runs whole afterwards."""
    config = _tiny_config(pairs12, tiny_model_dir, output=tmp_path / "out")
    stop = _StopAfter(checks)
    with pytest.raises(Stopped, match=where):
        evaluate(config, stop=stop)
    assert stop.checks == -1 and not (tmp_path / "out").exists()
    assert evaluate(config, stop=threading.Event())["pairs"]["generated_test"] == 2


def test_mask_use_is_zero_for_a_fresh_controlnet_and_not_for_a_trained_one(tiny_model):
    """A fresh ControlNet is a no-op (zero convolutions): own mask, other mask and no control are equal. The
    test model's (non-zero) ControlNet reacts to the mask: the three differ."""
    from siamese.model import build_tiny

    rng = np.random.default_rng(0)
    images, masks = (np.stack(a) for a in zip(*(_ellipse_pair(rng, 64) for _ in range(4))))
    masks = (masks > 0).astype(np.uint8)
    fresh = build_tiny(resolution=64, prompt="p", seed=0, block_out_channels=(16, 32, 32), norm_num_groups=8)
    fresh.add_controlnet(0)
    use = mask_use(fresh.eval(), images, masks, "p", batch_size=3)
    assert use["mse_own_mask"] == use["mse_other_mask"] == use["mse_no_control"] and use["gain_percent"] == 0
    use = mask_use(tiny_model, images, masks, "a test image", batch_size=3)
    own, other, none = use["mse_own_mask"], use["mse_other_mask"], use["mse_no_control"]
    assert own != other and own != none and other != none
    again = mask_use(tiny_model, images, masks, "a test image", batch_size=4)  # batching changes nothing
    for k in ("mse_own_mask", "mse_other_mask", "mse_no_control"):
        assert again[k] == pytest.approx(use[k], rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        mask_use(tiny_model, images[:1], masks[:1], "p")


class _ShiftCodec:
    """A codec whose latents are the images and whose decoding adds `shift` (in [-1, 1] units)."""

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return images.clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents + self.shift


def _codec_model(shift: float) -> SimpleNamespace:
    return SimpleNamespace(codec=_ShiftCodec(shift), device=torch.device("cpu"), dtype=torch.float32)


def test_codec_reconstructions_convert_to_uint8_and_pixel_quality_reports_every_figure():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 200, (5, 32, 32, 3)).astype(np.uint8)
    exact = codec_reconstructions(_codec_model(0.0), images, batch_size=2)  # 2 + 2 + 1: a partial last batch
    assert exact.dtype == np.uint8 and np.array_equal(exact, images)
    shifted = codec_reconstructions(_codec_model(0.1), images, batch_size=3)  # +0.1 = +12.75 -> +13
    assert np.array_equal(shifted, images + 13)
    assert np.array_equal(codec_reconstructions(_codec_model(2.0), images), np.full_like(images, 255))  # clamped
    generated = np.repeat(np.repeat(rng.uniform(0, 255, (2, 4, 4, 3)), 8, 1), 8, 2).astype(np.uint8)
    q = pixel_quality(_codec_model(0.1), images, generated)
    assert q["codec_psnr_db"] == pytest.approx(10 * np.log10(255**2 / 13**2))
    assert q["block_edge_ratio"]["reconstructed"] == pytest.approx(q["block_edge_ratio"]["real"])  # a shift: same
    assert q["block_edge_ratio"]["real"] == pytest.approx(1.0, abs=0.1)  # noise has no grid
    assert q["block_edge_ratio"]["generated"] > 1e6  # constant 8x8 blocks
    assert pixel_quality(_codec_model(0.0), images, generated)["codec_psnr_db"] == float("inf")
    assert (q["resolution"], q["block"], q["real_images"], q["generated_images"]) == (32, 8, 5, 2)


@pytest.mark.slow
def test_evaluate_is_reproducible(pairs12, tiny_model_dir):
    config = _tiny_config(pairs12, tiny_model_dir, seeds=1, max_synthetic=2, diversity_masks=1)
    first, second = evaluate(config), evaluate(config)
    for key in ("fidelity", "downstream", "realism", "diversity", "held_out"):
        assert first[key] == second[key]
    # ... and what is equal are measurements: scores in their ranges, images that differ from seed to seed
    assert first["fidelity"]["generated"]["n"] == first["pairs"]["generated_test"] > 0
    dice = [first["fidelity"][k]["dice"] for k in ("real", "generated", "flat_painting")]
    dice += first["downstream"]["real"]["dice"]["per_seed"] + first["downstream"]["real+synthetic"]["dice"]["per_seed"]
    assert len(dice) == 5 and all(0 <= d <= 1 for d in dice)
    kids = [v["mean"] for part in ("kid_features", "kid_statistics") for v in first["realism"][part].values()]
    assert len(kids) == 6 and all(np.isfinite(kids))
    assert first["diversity"]["generated_same_mask"]["pixel_l1"] > 0  # one mask, several seeds: several images


@pytest.mark.slow
def test_cli_evaluate_runs_and_turns_bad_data_into_exit_code_2(pairs12, tiny_model_dir, tmp_path, capsys):
    from siamese.cli import main

    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--model", str(tiny_model_dir)]) == 2
    assert "no such folder" in capsys.readouterr().err
    code = main(["evaluate", "--data", str(pairs12), "--model", str(tiny_model_dir), "--seg-steps", "2", "--steps", "1",
                 "--seeds", "1", "--resolution", "64", "--test-fraction", "0.34"])
    assert code == 0
    assert "Downstream benefit" in capsys.readouterr().out


@pytest.mark.parametrize("make", [
    lambda root: root / "missing",
    lambda root: (root / "images").mkdir(parents=True) or root,
    lambda root: write_dataset(root / "few", n=3),
])
def test_bad_data_folders_raise_data_error(make, tmp_path, tiny_model_dir):
    with pytest.raises(DataError):
        evaluate(_tiny_config(make(tmp_path), tiny_model_dir))


@pytest.mark.parametrize("bad", [dict(test_fraction=1.0), dict(seeds=0), dict(resolution=50), dict(scheduler="x"),
                                 dict(control_scale=-1.0),
                                 dict(seed=-1), dict(diversity_images=1)])
def test_bad_settings_raise_value_error(bad, pairs12, tiny_model_dir):
    with pytest.raises(ValueError):
        evaluate(_tiny_config(pairs12, tiny_model_dir, **bad))


def test_the_report_says_whether_the_generator_saw_the_evaluated_pairs(pairs12):
    config = EvalConfig(data=str(pairs12), test_fraction=0.2, seed=0)
    record = {"data": str(pairs12), "holdout": 0.2, "holdout_seed": 0}
    assert "unseen" in generator_data_note(record, config)
    assert "held-out pairs included" in generator_data_note({**record, "holdout": 0.0}, config)
    assert "held-out pairs included" in generator_data_note({**record, "holdout_seed": 1}, config)
    assert generator_data_note({**record, "data": "/elsewhere"}, config) is None
    assert "not recorded" in generator_data_note(None, config)


def test_ctrl_c_stops_cli_evaluate_cleanly_and_gives_the_handlers_back(pairs12, tiny_model_dir, tmp_path, capsys,
                                                                        monkeypatch):
    """Ctrl-C (here raised once the model is loaded) stops the evaluation before its next step: one line says so,
    no report and no output folder, exit code 0, and the handlers that were there before are back."""
    import siamese.evaluate
    from siamese.cli import main

    before = signal.getsignal(signal.SIGINT)
    load = siamese.evaluate.load_model
    monkeypatch.setattr(siamese.evaluate, "load_model",
                        lambda *a, **k: (load(*a, **k), signal.raise_signal(signal.SIGINT))[0])
    code = main(["evaluate", "--data", str(pairs12), "--model", str(tiny_model_dir), "--seg-steps", "5", "--steps",
                 "1", "--seeds", "1", "--resolution", "64", "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err and "Downstream benefit" not in captured.out
    assert "stopped while training a segmentation network" in captured.err and "starts it over" in captured.err
    assert not (tmp_path / "out").exists() and signal.getsignal(signal.SIGINT) is before

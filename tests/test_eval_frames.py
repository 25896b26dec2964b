"""Tests of siamese.eval_frames (`evaluate --frames`, issue 24): inpainted pairs in the evaluation. The section on a
tiny model and data (an untrained instrument, a stubbed downstream arm: fast), its text, and the CLI's flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import write_dataset
from siamese.data import find_pairs, read_image, read_mask, resize_pair, split_pairs
from siamese.eval_frames import evaluate_frames, lesion_crop, region_dice
from siamese.eval_report import GeneratedSets, format_frames
from siamese.evaluate import EvalConfig, evaluate
from siamese.params import SamplingParams
from siamese.sampling import generate
from siamese.segnet import build_segnet, mean_std

R = 32  # the instrument's resolution in these tests


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture(scope="module")
def pairs10(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("frames-data") / "pairs", n=10, size=64)


def test_lesion_crop_centres_a_square_around_the_lesion_inside_the_image():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :, 0] = np.arange(64, dtype=np.uint8)[None, :] * 4  # red = 4 x column
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 30:50] = 1  # a 20 px box: a 30 px crop from column 25 to 54
    crop = lesion_crop(image, mask, 30)
    assert crop.shape == (30, 30, 3) and crop[0, 0, 0] == 4 * 25 and crop[0, -1, 0] == 4 * 54
    mask[:] = 0
    mask[0:4, 60:64] = 1  # at the corner: 16 px (the least), moved inside the image
    crop = lesion_crop(image, mask, 16)
    assert crop[0, -1, 0] == 4 * 63 and crop[0, 0, 0] == 4 * 48


def test_region_dice_scores_only_the_region():
    target = np.zeros((1, 16, 16), np.uint8)
    target[0, 4:8, 4:8] = 1
    pred = target.copy()
    pred[0, 12:, 12:] = 1  # a false positive outside the region (the frame's own lesion, say)
    scored = np.zeros((1, 16, 16), bool)
    scored[0, 2:10, 2:10] = True
    assert region_dice(pred, target, scored)[0] == pytest.approx(1.0)
    assert region_dice(pred, target, np.ones_like(scored))[0] < 1.0


def _section(pairs10: Path, model_dir: Path, tmp_path: Path | None = None) -> tuple[dict, EvalConfig]:
    """evaluate_frames on 10 pairs (7 train, 3 held out) with an untrained instrument and a stubbed downstream arm."""
    from siamese.model import load_model

    config = EvalConfig(data=pairs10, model=model_dir, test_fraction=0.3, steps=2, resolution=R, kid_subsets=3,
                        seeds=2, margin=4, output=tmp_path, frames=True)
    model = load_model(model_dir)
    train, test = split_pairs(find_pairs(pairs10), 0.3, 0)
    params = SamplingParams(steps=2)
    fidelity = [generate(model, read_mask(p.mask), 1, i, params)[0] for i, p in enumerate(test)]
    synthetic_masks = [(i, read_mask(train[i].mask), 100 + i) for i in range(3)]
    synthetic = [generate(model, m, 1, s, params)[0] for _, m, s in synthetic_masks]
    generated = GeneratedSets(fidelity, [], synthetic, synthetic_masks)

    def load(pairs):
        return tuple(np.stack(a) for a in zip(*(resize_pair(read_image(p.image), read_mask(p.mask) // 255, R)
                                                 for p in pairs)))

    (train_images, train_masks), (test_images, _) = load(train), load(test)
    score = {"dice": mean_std([0.5, 0.6]), "iou": mean_std([0.4, 0.5])}
    whole = {"real": score, "real+synthetic": score, "difference": score}
    seen = []

    def arm(syn):
        seen.append(syn)
        better = {"dice": mean_std([0.55, 0.7]), "iou": mean_std([0.45, 0.5])}
        return {"real": score, "real+synthetic": better, "difference": better}

    net = build_segnet((8, 16, 32), seed=0).eval()
    section = evaluate_frames(model, net, config, test, train, generated, train_images, test_images, whole, arm)
    assert len(seen) == 1 and seen[0][0].shape == (3, R, R, 3) and set(np.unique(seen[0][1])) <= {0, 1}
    return section, config


def test_the_section_has_finite_figures_and_keeps_every_outside_pixel(pairs10, tiny_model_dir, tmp_path):
    section, _ = _section(pairs10, tiny_model_dir, tmp_path)
    assert section["pairs"] == 3 and section["skipped"] == 0
    assert section["outside_max_difference"] == 0
    assert all(m != f for m, f in zip(section["masks"], section["frames"]))  # never a mask into its own frame
    for part in ("whole_frames", "lesion_crops"):
        for key in ("kid_statistics", "kid_features"):
            assert set(section[part][key]) == {"real_train", "whole_image", "inpainted"}
            assert all(math.isfinite(v["mean"]) for v in section[part][key].values())
    for arm in ("real", "whole_image", "inpainted"):
        assert 0.0 <= section["fidelity"][arm]["dice"] <= 1.0
        assert math.isfinite(section["seam"][arm]["edge_ratio"]) and section["seam"][arm]["edge_ratio"] > 0
    assert section["seam"]["real"]["of_real"] == pytest.approx(1.0)
    down = section["downstream"]
    assert down["inpainted_minus_whole_image"]["dice"]["per_seed"] == pytest.approx([0.05, 0.1])
    assert (down["num_whole_image"], down["num_inpainted"], down["num_real"]) == (3, 3, 7)
    assert json.loads(json.dumps(section)) == section  # the report is JSON
    assert (tmp_path / "frames.png").is_file()
    text = "\n".join(format_frames({"inpainted_pairs": section}))
    for words in ("Inpainted pairs", "colour/texture KID, whole frames", "feature KID, crops around the lesion",
                  "seam / the real lesions' edges", "fidelity Dice / real ceiling",
                  "max pixel difference outside the region", "minus real, paired by seed"):
        assert words in text
    assert format_frames({}) == []


def test_cli_evaluate_frames_flags_parse_and_bad_values_exit_2_with_one_line(pairs10, tiny_model_dir, capsys):
    from siamese.cli import build_parser, main

    args = build_parser().parse_args(["evaluate", "--data", "d", "--frames", "--margin", "4"])
    assert args.frames is True and args.margin == 4
    args = build_parser().parse_args(["evaluate", "--data", "d"])
    assert args.frames is False and args.margin == 12
    for bad in ("-1", "65"):
        assert main(["evaluate", "--data", str(pairs10), "--model", str(tiny_model_dir), "--frames",
                     "--margin", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: margin must be")
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--data", str(pairs10), "--frames", "--margin", "x"])
    assert e.value.code == 2 and "--margin" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_frames_end_to_end(pairs10, tiny_model_dir, tmp_path):
    report = evaluate(EvalConfig(data=pairs10, model=tiny_model_dir, test_fraction=0.3, seg_steps=3, steps=2,
                                 seeds=2, resolution=R, max_synthetic=3, kid_subsets=3, seg_channels=(8, 16, 32),
                                 frames=True, margin=4, output=tmp_path, save_scorer=False))
    section = report["inpainted_pairs"]
    assert section["outside_max_difference"] == 0 and section["pairs"] == 3
    down = section["downstream"]
    assert down["real"] == report["downstream"]["real"]  # the same real networks
    assert down["num_inpainted"] == down["num_whole_image"] == report["downstream"]["num_synthetic"] == 3
    assert len(down["real+inpainted"]["dice"]["per_seed"]) == 2
    assert json.loads((tmp_path / "report.json").read_text())["inpainted_pairs"]["pairs"] == 3

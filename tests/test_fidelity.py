"""The fidelity scorer: it trains, scores a pair whose image shows its mask above one whose does not, travels
with the model folder (train-scorer, evaluate), a damaged one is a clear error; and the curation measurement."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import write_dataset
from siamese.cli import main
from siamese.curation import measure_curation
from siamese.fidelity import FidelityScorer, ScorerConfig, load_scorer, save_scorer, train_scorer
from siamese.folder_ops import add_scorer, scorer_split
from siamese.sampling import Generated


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def ellipses(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, size, size, 3) uint8: a bright ellipse (the lesion) on a reddish, noisy background; masks
    (n, size, size) {0, 1}."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        centre = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
        axes = tuple(int(a) for a in rng.integers(size // 8, size // 4, 2))
        cv2.ellipse(masks[k], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        image = rng.normal((150, 60, 50), 15, (size, size, 3))
        image[masks[k] > 0] = rng.normal((230, 170, 150), 15, (int(masks[k].sum()), 3))
        images[k] = image.clip(0, 255)
    return images, masks


@pytest.fixture(scope="module")
def scorer() -> FidelityScorer:
    images, masks = ellipses(32)
    config = ScorerConfig(resolution=64, channels=(8, 16, 32), steps=120, batch_size=8, lr=5e-3)
    return train_scorer(images, masks, config)


def test_the_right_mask_scores_higher_than_a_wrong_one(scorer):
    images, masks = ellipses(8, seed=1)  # unseen pairs
    right = scorer.score(images, masks * 255)
    wrong = scorer.score(images, np.roll(masks, 1, axis=0) * 255)  # another image's mask
    assert right.shape == (8,) and right.dtype == np.float64 and ((right >= 0) & (right <= 1)).all()
    assert right.mean() > 0.7 and right.mean() > wrong.mean() + 0.4
    # any mask encoding and any image size: the scorer resizes to its own resolution
    np.testing.assert_allclose(scorer.score(images, masks.astype(bool)), right)
    big = np.stack([cv2.resize(im, (96, 96), interpolation=cv2.INTER_NEAREST) for im in images])
    big_masks = np.stack([cv2.resize(m, (96, 96), interpolation=cv2.INTER_NEAREST) for m in masks])
    assert scorer.score(big, big_masks * 255).mean() > 0.7
    assert scorer.score(images[:0], masks[:0]).shape == (0,)


def test_bad_arrays_are_refused_with_the_shapes(scorer):
    images, masks = ellipses(2)
    with pytest.raises(ValueError, match=r"images must be an \(N, H, W, 3\) uint8"):
        scorer.score(images.astype(np.float32), masks)
    with pytest.raises(ValueError, match="masks must be"):
        scorer.score(images, masks[:1])


def test_scorer_saves_and_loads_to_the_same_scores(scorer, tmp_path):
    images, masks = ellipses(4, seed=2)
    assert load_scorer(tmp_path) is None  # no segmenter/: no scorer
    folder = save_scorer(scorer, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not (tmp_path / "segmenter.tmp").exists()
    loaded = load_scorer(tmp_path)
    assert loaded.config == scorer.config
    np.testing.assert_array_equal(loaded.score(images, masks), scorer.score(images, masks))
    assert load_scorer("owner/not-cached") is None


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "config.json").write_text("{"), "config.json: not valid JSON"),
    (lambda f: (f / "config.json").write_text('{"resolution": 100}'), "scorer resolution must be between 32"),
    (lambda f: (f / "config.json").write_text('{"colour": 1}'), "unknown keys"),
    (lambda f: (f / "config.json").unlink(), "config.json is missing"),
    (lambda f: (f / "model.safetensors").write_bytes(b"junk"), "model.safetensors could not be read"),
    (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda f: (f / "config.json").write_text('{"resolution": 64, "channels": [8, 16]}'),
     "does not fit the network"),
])
def test_damaged_scorer_is_a_clear_error(scorer, tmp_path, damage, message):
    damage(save_scorer(scorer, tmp_path))
    with pytest.raises(ValueError, match=message) as info:
        load_scorer(tmp_path)
    assert "train-scorer" in str(info.value) and "\n" not in str(info.value)


def test_train_scorer_leaves_out_the_models_held_out_split(tiny_model_dir, dataset, tmp_path):
    """Without a training record: evaluate's split (0.2, seed 0); with one naming this data: its split."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    assert scorer_split(folder, dataset) == (0.2, 0)
    (folder / "train_config.json").write_text(json.dumps({"data": str(dataset), "holdout": 0.5, "holdout_seed": 3}))
    assert scorer_split(folder, dataset) == (0.5, 3)
    assert scorer_split(folder, tmp_path / "other-data") == (0.2, 0)
    out = add_scorer(folder, dataset, ScorerConfig(resolution=64, channels=(8, 16, 32), steps=3, batch_size=2))
    assert out == folder
    record = json.loads((folder / "segmenter" / "config.json").read_text())
    split = (record["holdout"], record["holdout_seed"], record["train_pairs"], record["held_out_pairs"])
    assert split == (0.5, 3, 3, 3)
    assert 0 <= record["held_out_dice"] <= 1 and record["steps"] == 3 and record["data"] == str(dataset)
    assert load_scorer(folder).config.resolution == 64


def test_cli_train_scorer_in_place_or_into_a_copy(tiny_model_dir, dataset, tmp_path, capsys):
    out = tmp_path / "with-scorer"
    assert main(["train-scorer", "--model", str(tiny_model_dir), "--data", str(dataset), "--output", str(out),
                 "--steps", "2", "--resolution", "64"]) == 0
    assert "fidelity scorer saved in" in capsys.readouterr().out
    assert (out / "segmenter" / "model.safetensors").is_file() and (out / "unet").is_dir()
    assert not (tiny_model_dir / "segmenter").exists()  # the source model is untouched
    code = main(["train-scorer", "--model", str(out), "--data", str(dataset), "--steps", "0"])
    assert code == 2 and "scorer steps must be a whole number 1 or more, got 0" in capsys.readouterr().err
    assert main(["train-scorer", "--model", str(tiny_model_dir), "--data", str(dataset), "--output", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err


# -- curation ------------------------------------------------------------------------------------
def test_curation_accepts_the_pairs_that_follow_their_mask(scorer):
    """A pool of 12 pairs, 6 of them with their mask moved away from the lesion: the scorer accepts the faithful
    ones, and filtered and unfiltered training sets have the same number of pairs."""
    images, masks = ellipses(12, seed=3)
    wrong = np.arange(12) % 2 == 1
    pool_masks = np.where(wrong[:, None, None], np.roll(masks, (32, 32), axis=(1, 2)), masks)  # the lesion elsewhere
    pool = [Generated(im, m * 255, k, {}) for k, (im, m) in enumerate(zip(images, pool_masks))]
    real, test = ellipses(16, seed=4), ellipses(6, seed=5)
    seg_kw = dict(steps=4, batch_size=4, channels=(8, 16, 32))
    result = measure_curation(scorer, pool, (images, pool_masks), real, test, [0.5, 0.5], (0.0, 0.5, 0.99), (0.5,),
                              seeds=2, seed=0, seg_kw=seg_kw)
    acceptance = {a["threshold"]: a for a in result["acceptance"]}
    assert acceptance[0.0]["rate"] == 1.0 and acceptance[0.99]["accepted"] <= acceptance[0.5]["accepted"]
    assert 5 <= acceptance[0.5]["accepted"] <= 7  # about the 6 faithful pairs
    (row,) = result["comparison"]
    assert row["pairs"] == acceptance[0.5]["accepted"]
    assert row["fidelity"]["filtered"] > row["fidelity"]["unfiltered"] + 0.2
    assert len(row["difference"]["dice"]["per_seed"]) == 2
    np.testing.assert_allclose(row["difference"]["dice"]["per_seed"],
                               np.subtract(row["filtered"]["dice"]["per_seed"], row["unfiltered"]["dice"]["per_seed"]))


@pytest.mark.slow
def test_evaluate_saves_its_network_as_the_scorer_of_a_model_trained_on_its_split(tiny_model_dir, tmp_path):
    from siamese.evaluate import EvalConfig, evaluate, format_report

    data = write_dataset(tmp_path / "pairs", n=12)
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = EvalConfig(data=data, model=folder, seg_steps=3, steps=1, seeds=1, resolution=64, max_synthetic=4,
                        kid_subsets=2, seg_channels=(8, 16, 32), curation=True, curation_thresholds=(0.0, 1.0))
    report = evaluate(config)  # no training record: the generator may have seen the test pairs, no scorer saved
    assert not (folder / "segmenter").exists() and "run train-scorer" in report["fidelity_scorer"]
    assert [a["rate"] for a in report["curation"]["acceptance"]][0] == 1.0
    assert "7. Curation" in format_report(report)
    (folder / "train_config.json").write_text(json.dumps({"data": str(data), "holdout": 0.2, "holdout_seed": 0}))
    report = evaluate(EvalConfig(**{**config.__dict__, "curation": False}))
    assert "curation" not in report and "saved as the model's scorer" in report["fidelity_scorer"]
    saved = load_scorer(folder)
    assert saved.config.held_out_dice == report["fidelity"]["real"]["dice"] and saved.config.steps == 3
    assert "the model's own scorer" in evaluate(config)["fidelity_scorer"]


@pytest.mark.slow
def test_train_ends_with_a_scorer_on_its_own_training_pairs(dataset, tmp_path):
    from siamese.train import TrainConfig, train

    settings = dict(data=str(dataset), model="tiny", resolution=64, batch_size=2, max_steps=1, lr=1e-3,
                    checkpoint_every=1, holdout=0.34, scorer_steps=2)
    out = train(TrainConfig(output=str(tmp_path / "run"), **settings))
    scorer = load_scorer(out)
    assert scorer.config.steps == 2 and scorer.config.resolution == 64
    assert (scorer.config.holdout, scorer.config.train_pairs, scorer.config.held_out_pairs) == (0.34, 4, 2)
    unscored = train(TrainConfig(output=str(tmp_path / "none"), **{**settings, "scorer_steps": 0}))
    assert not (unscored / "segmenter").exists()
    with pytest.raises(ValueError, match="scorer steps must be a whole number 0 or more"):
        train(TrainConfig(output=str(tmp_path / "bad"), **{**settings, "scorer_steps": -1}))

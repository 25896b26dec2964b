"""Data: layouts, binarisation, resizing, batching, augmentation, and clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from conftest import shared_dataset, write_dataset
from siamese.data import (
    DataError, PairDataset, augment_mask, binarize_mask, default_prompt, find_pairs, list_masks, read_image,
    read_mask,
)


def test_folder_layout_matches_by_stem(tmp_path):
    root = write_dataset(tmp_path / "d", n=3, mask_ext=".bmp")
    (root / "images" / "orphan.jpg").write_bytes((root / "images" / "case00.jpg").read_bytes())
    pairs = find_pairs(root)
    assert [p.image.stem for p in pairs] == ["case00", "case01", "case02"]
    assert all(p.mask.suffix == ".bmp" for p in pairs)


def test_reference_prompt_json_layout(tmp_path):
    root = write_dataset(tmp_path / "d", n=2)
    lines = [{"source": f"masks/case0{i}.png", "target": f"images/case0{i}.jpg", "prompt": f"p{i}"} for i in range(2)]
    (root / "prompt.json").write_text("\n".join(json.dumps(x) for x in lines))
    ds = PairDataset(root, 64)
    assert [ds[i]["prompt"] for i in range(2)] == ["p0", "p1"]


def test_bad_folders_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        find_pairs(tmp_path / "missing")
    (tmp_path / "only" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no masks/ folder"):
        find_pairs(tmp_path / "only")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "prompt.json").write_text('{"source": "m.png"}\n')
    with pytest.raises(DataError, match="line 1"):
        find_pairs(tmp_path / "bad")


@pytest.mark.parametrize("entry", ["../outside/secret.png", "/etc/passwd", "masks/../../outside/secret.png"])
def test_prompt_json_entries_stay_inside_the_dataset(tmp_path, entry):
    """prompt.json may only name files inside its folder: a '..' or absolute entry is refused by name,
    even when the file it names exists."""
    root = write_dataset(tmp_path / "d", n=1)
    write_dataset(tmp_path / "outside", n=1)
    (tmp_path / "outside" / "secret.png").write_bytes((root / "masks" / "case00.png").read_bytes())
    for key in ("source", "target"):
        item = {"source": "masks/case00.png", "target": "images/case00.jpg", "prompt": "p", key: entry}
        (root / "prompt.json").write_text(json.dumps(item) + "\n")
        with pytest.raises(DataError, match=f"line 1: .*'{entry}'.*inside"):
            find_pairs(root)


def test_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="not a readable image"):
        read_image(bad)
    with pytest.raises(DataError, match="no such file"):
        read_mask(tmp_path / "nope.png")


def test_binarize_threshold_and_canvas_alpha():
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    assert binarize_mask(gray).tolist() == [[0, 0, 1, 1]]
    assert binarize_mask(np.array([[0, 1]], np.uint8)).tolist() == [[0, 1]]  # already binary
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 1] = (255, 255, 255, 255)  # painted white
    rgba[0, 2] = (255, 255, 255, 0)  # white but transparent: not painted
    assert binarize_mask(rgba).tolist() == [[0, 1, 0]]


def test_dataset_resizes_identically_and_batches(tmp_path):
    root = write_dataset(tmp_path / "d", n=4, size=100)
    ds = PairDataset(root, 64)
    assert ds.images.shape == (4, 64, 64, 3) and ds.masks.shape == (4, 64, 64)
    assert set(np.unique(ds.masks)) <= {0, 1}
    b = ds.batch([0, 1, 2], torch.Generator().manual_seed(0), flip=True, prompt_dropout=1.0)
    assert b["image"].shape == (3, 3, 64, 64) and -1 <= b["image"].min() and b["image"].max() <= 1
    assert b["prompts"] == ["", "", ""]
    # flips are applied to image and mask together: the bright ellipse stays under the mask
    inside = b["image_hint"][:, 0][b["mask_hint"][:, 0] > 0].mean()
    outside = b["image_hint"][:, 0][b["mask_hint"][:, 0] == 0].mean()
    assert inside > outside + 0.1


def test_default_prompts():
    assert "colonoscopy" in default_prompt("/x/kvasir-seg")
    assert "dermoscopy" in default_prompt("data/PH2")
    assert default_prompt("elsewhere") == "a medical image"


def test_augment_mask_keeps_a_region_and_is_seeded():
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (32, 32), 12, 1, -1)
    a = augment_mask(mask, np.random.default_rng(3))
    b = augment_mask(mask, np.random.default_rng(3))
    assert np.array_equal(a, b) and set(np.unique(a)) <= {0, 1}
    assert a.sum() >= mask.sum() / 4
    assert any(not np.array_equal(augment_mask(mask, np.random.default_rng(s)), mask) for s in range(5))


def test_list_masks(tmp_path):
    root = write_dataset(tmp_path / "d", n=2)
    assert len(list_masks(root / "masks")) == 2
    assert list_masks(root / "masks" / "case00.png") == [root / "masks" / "case00.png"]
    with pytest.raises(DataError):
        list_masks(tmp_path / "none")


def test_real_kvasir_pairs_load():
    root = shared_dataset("kvasir-seg")
    pairs = find_pairs(root)
    assert len(pairs) == 900
    mask = read_mask(pairs[0].mask)
    assert mask.shape == read_image(pairs[0].image).shape[:2] and 0 < mask.mean() < 1

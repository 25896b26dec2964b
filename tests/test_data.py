"""Data: layouts, binarisation, resizing, batching, augmentation, and clear errors."""

from __future__ import annotations

import json
import logging
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_dataset, write_dataset
from siamese import data as data_module
from siamese.data import (
    MAX_PIXELS, DataError, PairDataset, augment_mask, binarize_mask, default_prompt, find_pairs, list_masks,
    read_image, read_mask,
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


# -- the one mask rule ------------------------------------------------------------------------------
LESION = np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], np.uint8)


def _as(kind: str) -> np.ndarray:
    """LESION as a mask of another kind: the same lesion, by the documented rule."""
    on, off = LESION > 0, LESION == 0
    if kind == "8-bit 0/255":
        return LESION * 255
    if kind == "8-bit 0/1":
        return LESION.copy()
    if kind == "8-bit gray levels":
        return np.where(on, 128, np.where(off, 127, 0)).astype(np.uint8)
    if kind == "16-bit 0/1":
        return LESION.astype(np.uint16)
    if kind == "16-bit 0/65535":
        return LESION.astype(np.uint16) * 65535
    if kind == "16-bit gray levels":
        return np.where(on, 32768, 32767).astype(np.uint16)
    if kind == "float 0/1":
        return LESION.astype(np.float32)
    if kind == "float gray levels":
        return np.where(on, 0.75, 0.25).astype(np.float32)
    if kind == "RGB 0/255":
        return np.repeat(LESION[..., None] * 255, 3, 2)
    if kind == "RGBA transparent white background":
        rgba = np.full((4, 4, 4), 255, np.uint8)
        rgba[..., 3] = LESION * 255
        return rgba
    raise KeyError(kind)


KINDS = ["8-bit 0/255", "8-bit 0/1", "8-bit gray levels", "16-bit 0/1", "16-bit 0/65535", "16-bit gray levels",
         "float 0/1", "float gray levels", "RGB 0/255", "RGBA transparent white background"]


@pytest.mark.parametrize("kind", KINDS)
def test_one_mask_rule_for_arrays_and_files(tmp_path, kind):
    """Every kind of mask gives the same lesion, as an array (the app, the API) and as a file (the CLI,
    training): a 16-bit 0/1 label mask is not 'empty', a float TIFF reads, a PNG's transparency counts."""
    arr = _as(kind)
    np.testing.assert_array_equal(binarize_mask(arr), LESION)
    ext = ".tiff" if kind.startswith("float") else ".png"
    path = tmp_path / f"mask{ext}"
    if arr.ndim == 3:
        cv2.imwrite(str(path), arr[..., [2, 1, 0, 3][:arr.shape[2]]])  # cv2 writes BGR(A)
    else:
        cv2.imwrite(str(path), arr)
    np.testing.assert_array_equal(read_mask(path), LESION)


def test_bool_int64_and_palette_masks():
    np.testing.assert_array_equal(binarize_mask(LESION > 0), LESION)
    np.testing.assert_array_equal(binarize_mask(LESION.astype(np.int64) * 255), LESION)
    with pytest.raises(DataError, match="array of numbers"):
        binarize_mask(np.array([["a"]]))
    with pytest.raises(DataError, match="shape"):
        binarize_mask(np.zeros((2, 2, 2, 2)))


def test_palette_png_mask(tmp_path):
    image = Image.fromarray(LESION, "P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), LESION)


def _png_header(width: int, height: int) -> bytes:
    """A small PNG file whose header says width x height (1-bit gray); its pixel data is a few rows only."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\0" * ((width + 7) // 8 + 1) * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(20000, 20000), (8001, 8000)])
def test_huge_images_are_refused_from_their_header(tmp_path, monkeypatch, width, height):
    """A 20000x20000 PNG of a few KB is refused before it is decoded (it would take 400 MB and more): the size
    comes from the header; nothing reaches the decoder."""
    assert width * height > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height))
    assert path.stat().st_size < 10_000

    def no_decoding(*args):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(data_module.cv2, "imdecode", no_decoding)
    for read in (read_mask, read_image):
        with pytest.raises(DataError, match="too large: at most 64,000,000 pixels") as info:
            read(path)
        assert str(path) in str(info.value)
        if width * height < 2 * Image.MAX_IMAGE_PIXELS:  # PIL's own limit hides the size beyond
            assert f"{width}x{height}" in str(info.value)


# -- datasets: problems named, not skipped --------------------------------------------------------
def test_two_files_with_one_name_are_an_error(tmp_path):
    root = write_dataset(tmp_path / "d", n=2)
    (root / "images" / "case00.png").write_bytes((root / "masks" / "case00.png").read_bytes())
    with pytest.raises(DataError, match="case00.jpg and case00.png have the same name"):
        find_pairs(root)
    with pytest.raises(DataError, match="case00.jpg and case00.png have the same name"):
        list_masks(root / "images")  # sample names its outputs by stem: one would overwrite the other


def test_image_and_mask_of_different_sizes_are_an_error(tmp_path):
    root = write_dataset(tmp_path / "d", n=2)
    cv2.imwrite(str(root / "masks" / "case01.png"), np.zeros((40, 50), np.uint8))
    with pytest.raises(DataError, match=r"case01.jpg is 80x80 pixels but its mask .*case01.png is 50x40"):
        PairDataset(root, 64)


def test_empty_masks_all_an_error_some_a_warning(tmp_path, caplog):
    root = write_dataset(tmp_path / "d", n=3)
    cv2.imwrite(str(root / "masks" / "case01.png"), np.zeros((80, 80), np.uint8))
    with caplog.at_level(logging.WARNING, logger="siamese.data"):
        assert len(PairDataset(root, 64)) == 3
    assert "1 of 3 masks are empty" in caplog.text and "case01.png" in caplog.text
    for i in (0, 2):
        cv2.imwrite(str(root / "masks" / f"case0{i}.png"), np.zeros((80, 80), np.uint8))
    with pytest.raises(DataError, match="all 3 masks are empty"):
        PairDataset(root, 64)


def test_unmatched_files_are_skipped_with_a_warning(tmp_path, caplog):
    root = write_dataset(tmp_path / "d", n=2)
    (root / "masks" / "case00.png").rename(root / "masks" / "other.png")
    with caplog.at_level(logging.WARNING, logger="siamese.data"):
        assert [p.image.stem for p in find_pairs(root)] == ["case01"]
    assert "images/case00.jpg" in caplog.text and "masks/other.png" in caplog.text


def test_prompt_json_problems_name_the_file(tmp_path):
    root = write_dataset(tmp_path / "d", n=1)
    (root / "prompt.json").write_bytes(b'{"source": "masks/case00.png", "target": "images/case00.jpg", '
                                       b'"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match="prompt.json: not UTF-8 text"):
        find_pairs(root)
    (root / "prompt.json").write_text('{"source": "masks/case00.png", "target": "images/case00.jpg", "prompt": 5}')
    with pytest.raises(DataError, match="prompt.json line 1: the prompt must be text, got 5"):
        find_pairs(root)


# -- batches: what the objective receives ---------------------------------------------------------
def test_image_hint_is_the_same_flipped_sample_in_0_1(tmp_path):
    """image_hint = (image + 1) / 2 of the same sample after the same flips, and the mask follows the flips."""
    root = write_dataset(tmp_path / "d", n=4, size=64)
    ds = PairDataset(root, 64)
    gen = torch.Generator().manual_seed(0)
    b = ds.batch([0, 1, 2, 3], gen, flip=True)
    torch.testing.assert_close(b["image_hint"], (b["image"] + 1) / 2, atol=1e-6, rtol=0)
    flipped = 0
    for i in range(4):
        image = torch.from_numpy(ds.images[i]).permute(2, 0, 1).float() / 255
        mask = torch.from_numpy(ds.masks[i]).float()
        matches = [(dims, torch.equal(b["image_hint"][i], image.flip(dims) if dims else image)
                    and torch.equal(b["mask_hint"][i, 0], mask.flip([d - 1 for d in dims]) if dims else mask))
                   for dims in ([], [1], [2], [1, 2])]
        assert any(ok for _, ok in matches), i
        flipped += matches[0][1] is False
    assert flipped, "the seed flips some samples"


def test_prompt_dropout_replaces_five_percent_of_prompts(tmp_path):
    ds = PairDataset(write_dataset(tmp_path / "d", n=2, size=64), 64, prompt="a polyp")
    from siamese.train import TrainConfig

    rate = TrainConfig(data="", output="").prompt_dropout
    assert rate == 0.05  # METHOD.md
    gen = torch.Generator().manual_seed(0)
    prompts = [p for _ in range(200) for p in ds.batch([0, 1] * 50, gen, prompt_dropout=rate)["prompts"]]
    dropped = prompts.count("") / len(prompts)
    assert set(prompts) == {"", "a polyp"}
    assert 0.045 < dropped < 0.055, dropped  # 20000 draws: 5% +- 0.15% (one standard deviation)
    assert ds.batch([0, 1], gen)["prompts"] == ["a polyp", "a polyp"]  # off by default

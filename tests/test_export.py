"""Export: PNG parameters text, pair folders, zip with metadata and the nnU-Net v2 layout."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from siamese.export import export_zip, parameters_text, write_pairs
from siamese.files import check_writable
from siamese.sampling import Generated


def _items(n=2):
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:24] = 255
    params = {"prompt": "a polyp", "steps": 20, "guidance_scale": 3.0, "scheduler": "dpm++", "seed": 0,
              "resolution": 32, "eta": 0.0, "model": {"name": "m", "fingerprint": "abc"}}
    return [Generated(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), mask, i, {**params, "seed": i})
            for i in range(n)]


def test_parameters_text_follows_the_sd_convention():
    text = parameters_text(_items(1)[0].params)
    first, second = text.split("\n")
    assert first == "a polyp"
    assert "Steps: 20" in second and "Sampler: dpm++" in second and "CFG scale: 3.0" in second
    assert "Seed: 0" in second and "Model hash: abc" in second


def test_write_pairs(tmp_path):
    names = write_pairs(_items(), tmp_path)
    assert names == ["00000_seed0", "00001_seed1"]
    lines = [json.loads(x) for x in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert lines[1]["image"] == "images/00001_seed1.png" and lines[1]["seed"] == 1
    assert Image.open(tmp_path / "images" / "00000_seed0.png").text["parameters"].startswith("a polyp")


def test_zip_with_nnunet_layout(tmp_path):
    path = export_zip(_items(), tmp_path / "pairs.zip", nnunet=True, label="polyp")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert {"images/00000_seed0.png", "masks/00000_seed0.png", "metadata.jsonl", "README.txt",
                "nnunet/imagesTr/00000_seed0_0000.png", "nnunet/labelsTr/00000_seed0.png",
                "nnunet/dataset.json"} <= names
        mask = np.array(Image.open(io.BytesIO(zf.read("masks/00000_seed0.png"))))
        label = np.array(Image.open(io.BytesIO(zf.read("nnunet/labelsTr/00000_seed0.png"))))
        assert set(np.unique(mask)) == {0, 255} and set(np.unique(label)) == {0, 1}
        dataset = json.loads(zf.read("nnunet/dataset.json"))
        assert dataset["labels"] == {"background": 0, "polyp": 1} and dataset["numTraining"] == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_empty_export_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing to export"):
        export_zip([], tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_writing_again_keeps_one_metadata_line_per_file(tmp_path):
    """A re-run into the same folder replaces its pairs' lines; the lines of other pairs stay."""
    write_pairs(_items(2), tmp_path, ["a", "b"])
    write_pairs(_items(1), tmp_path, ["c"])
    again = _items(2)
    again[1].params["steps"] = 7
    write_pairs(again, tmp_path, ["a", "b"])
    lines = [json.loads(x) for x in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert sorted(x["image"] for x in lines) == ["images/a.png", "images/b.png", "images/c.png"]
    assert [x["steps"] for x in lines if x["image"] == "images/b.png"] == [7]
    assert not list(tmp_path.glob(".*tmp"))


def test_check_writable_leaves_nothing_behind(tmp_path):
    (tmp_path / "file").write_text("x")
    check_writable(tmp_path / "new" / "deeper")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    with pytest.raises(ValueError, match="it is a file, not a folder"):
        check_writable(tmp_path / "file")
    with pytest.raises(ValueError, match="file is a file, not a folder"):
        check_writable(tmp_path / "file" / "out")

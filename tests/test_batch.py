"""Batch synthesis: run_batch's seeds, stop and resume (the same pixels as an uninterrupted run), a split batch,
and the CLI's sample with a fidelity threshold (accepted pairs in OUTPUT, rejected ones in rejected/) that
resumes without making again the pairs it finds."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from siamese.batch import ScoredPair, finished_pairs, run_batch
from siamese.cli import main
from siamese.data import read_mask
from siamese.fidelity import load_scorer
from siamese.sampling import SamplingParams

PARAMS = SamplingParams(steps=2, guidance_scale=3.0, scheduler="dpm++")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


@pytest.fixture
def masks(dataset) -> list[tuple[str, np.ndarray]]:
    return [(p.stem, read_mask(p)) for p in sorted((dataset / "masks").iterdir())[:3]]


def _same(a: list[ScoredPair], b: list[ScoredPair]) -> None:
    assert [p.name for p in a] == [p.name for p in b]
    for x, y in zip(a, b):
        assert np.array_equal(x.item.image, y.item.image) and np.array_equal(x.item.mask, y.item.mask), x.name
        assert x.item.params == y.item.params and x.fidelity == y.fidelity and x.accepted == y.accepted


def test_seeds_names_and_scores(tiny_model, masks, scored_model_dir):
    scorer = load_scorer(scored_model_dir)
    pairs = list(run_batch(tiny_model, masks, 3, 7, PARAMS, scorer=scorer, batch_size=2))
    assert [p.name for p in pairs] == [f"{stem}_{i:02d}" for stem, _ in masks for i in range(3)]
    assert [p.item.seed for p in pairs] == list(range(7, 16))  # seed + m * num_images + i
    assert all(0 <= p.fidelity <= 1 and p.item.params["fidelity"] == p.fidelity and p.accepted for p in pairs)
    threshold = float(np.median([p.fidelity for p in pairs]))
    again = list(run_batch(tiny_model, masks, 3, 7, PARAMS, scorer=scorer, min_fidelity=threshold, batch_size=2))
    assert [p.accepted for p in again] == [p.fidelity >= threshold for p in pairs]
    plain = list(run_batch(tiny_model, masks[:1], 1, 7, PARAMS))
    assert plain[0].fidelity is None and plain[0].accepted and "fidelity" not in plain[0].item.params
    assert np.array_equal(plain[0].item.image, pairs[0].item.image)  # scoring changes no pixel


def test_stop_then_resume_makes_the_same_pairs(tiny_model, masks):
    full = list(run_batch(tiny_model, masks, 3, 0, PARAMS, augment=True, batch_size=2))
    stop = threading.Event()
    first = []
    for pair in run_batch(tiny_model, masks, 3, 0, PARAMS, augment=True, batch_size=2, stop=stop):
        first.append(pair)
        if len(first) == 4:
            stop.set()  # during mask 1's first group (its images 0 and 1): that group is finished, then it stops
    assert [p.name for p in first] == [p.name for p in full[:5]]
    rest = list(run_batch(tiny_model, masks, 3, 0, PARAMS, augment=True, batch_size=2,
                          skip={p.name for p in first}))
    assert {p.name for p in first}.isdisjoint(p.name for p in rest)
    _same(sorted(first + rest, key=lambda p: p.name), full)


def test_resume_inside_a_group_samples_the_same_batches(tiny_model, masks, monkeypatch):
    """A run killed inside a group (image 1 of mask 0's group 0..3 written, 0, 2 and 3 not): the resumed run samples
    that group whole, as the uninterrupted run did, and keeps the missing images. A batch of 3 instead of 4 rounds
    differently (the bundled model: +-1 in up to 0.05% of the pixels), so the same batches are the only exact way."""
    import siamese.batch

    calls = []

    def recorded(model, mask, num_images, seed, *args, **kwargs):
        calls.append((num_images, seed))
        return generate(model, mask, num_images, seed, *args, **kwargs)

    generate = siamese.batch.generate
    monkeypatch.setattr(siamese.batch, "generate", recorded)
    full = list(run_batch(tiny_model, masks[:2], 6, 0, PARAMS, batch_size=4))
    assert calls == [(4, 0), (2, 4), (4, 6), (2, 10)]
    calls.clear()
    done = {"case00_01", "case00_04", "case00_05", "case01_00", "case01_01", "case01_02", "case01_03"}
    rest = list(run_batch(tiny_model, masks[:2], 6, 0, PARAMS, batch_size=4, skip=done))
    assert calls == [(4, 0), (2, 10)]  # the groups of the uninterrupted run, never a batch of 3 from seed 2
    assert [p.name for p in rest] == ["case00_00", "case00_02", "case00_03", "case01_04", "case01_05"]
    _same(rest, [p for p in full if p.name not in done])


def test_a_split_batch_makes_the_same_pairs(tiny_model, masks):
    full = list(run_batch(tiny_model, masks, 2, 11, PARAMS))
    split = list(run_batch(tiny_model, masks[:1], 2, 11, PARAMS)) + list(run_batch(tiny_model, masks[1:], 2, 11,
                                                                                   PARAMS, offset=1))
    _same(split, full)


def test_bad_settings_are_refused_before_any_image(tiny_model, masks):
    with pytest.raises(ValueError, match="needs the model's fidelity scorer.*train-scorer"):
        next(run_batch(tiny_model, masks, 1, 0, PARAMS, min_fidelity=0.5))
    with pytest.raises(ValueError, match="minimum fidelity must be a Dice score between 0 and 1, got 2"):
        next(run_batch(tiny_model, masks, 1, 0, PARAMS, min_fidelity=2))
    with pytest.raises(ValueError, match="number of images"):
        next(run_batch(tiny_model, masks, 0, 0, PARAMS))


# -- the CLI ------------------------------------------------------------------------------------------
def _sample(model: Path, masks: Path, out: Path, *extra: str) -> int:
    return main(["sample", "--model", str(model), "--masks", str(masks), "--num-images", "2", "--steps", "2",
                 "--guidance", "3", "--scheduler", "dpm++", "--seed", "3", "--batch-size", "2", "--output", str(out),
                 *extra])


def _lines(folder: Path) -> dict[str, dict]:
    path = folder / "metadata.jsonl"
    return {json.loads(x)["image"]: json.loads(x) for x in path.read_text().splitlines()} if path.exists() else {}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_cli_threshold_writes_accepted_pairs_and_keeps_rejected_ones_apart(scored_model_dir, dataset, tmp_path, capsys):
    all_out = tmp_path / "all"
    assert _sample(scored_model_dir, dataset / "masks", all_out) == 0
    scores = {k: v["fidelity"] for k, v in _lines(all_out).items()}
    assert len(scores) == 12 and all(0 <= s <= 1 for s in scores.values())  # every pair scored
    assert "12 accepted, 0 rejected (no --min-fidelity)" in capsys.readouterr().out
    threshold = float(np.median(list(scores.values())))
    accepted = {k for k, s in scores.items() if s >= threshold}
    assert 0 < len(accepted) < 12

    out = tmp_path / "curated"
    assert _sample(scored_model_dir, dataset / "masks", out, "--min-fidelity", str(threshold)) == 0
    assert set(_lines(out)) == accepted and not (out / "rejected").exists()
    assert sorted(f"images/{p.name}" for p in (out / "images").iterdir()) == sorted(accepted)
    assert f"wrote {len(accepted)} pairs" in capsys.readouterr().out

    kept = tmp_path / "kept"
    assert _sample(scored_model_dir, dataset / "masks", kept, "--min-fidelity", str(threshold), "--keep-rejected") == 0
    rejected = _lines(kept / "rejected")
    assert set(_lines(kept)) == accepted and set(rejected) == set(scores) - accepted
    assert all(r["fidelity"] < threshold for r in rejected.values())
    assert all((kept / "rejected" / r["image"]).is_file() and (kept / "rejected" / r["mask"]).is_file()
               for r in rejected.values())
    out_line = capsys.readouterr().out
    assert f"{len(accepted)} accepted, {12 - len(accepted)} rejected (fidelity >= {threshold:g})" in out_line
    # the same files (pixels, scores) whether or not a threshold was given
    assert all(_files(kept)[name] == _files(all_out)[name] for name in accepted)


def _drop(folder: Path, names: set[str], files: bool = True) -> None:
    """Remove pairs as an interrupted run would have left them: never written (files and line), or (files=False)
    files written but no metadata line yet."""
    path = folder / "metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for k, r in _lines(folder).items() if Path(k).stem not in names))
    for name in names if files else ():
        for sub in ("images", "masks"):
            (folder / sub / f"{name}.png").unlink(missing_ok=True)


def test_cli_resumes_without_making_pairs_again_and_ends_as_an_uninterrupted_run(scored_model_dir, dataset, tmp_path,
                                                                                capsys):
    masks = dataset / "masks"
    args = ("--min-fidelity", "0.05", "--keep-rejected")
    whole = tmp_path / "whole"
    assert _sample(scored_model_dir, masks, whole, *args) == 0
    # interrupted after mask case01 (masks case02.. never made), case01_01 written but without its metadata line
    out = shutil.copytree(whole, tmp_path / "resumed")
    later = {f"case{m:02d}_{i:02d}" for m in range(2, 6) for i in range(2)}
    for folder in (out, out / "rejected"):
        if folder.is_dir():
            _drop(folder, later)
            _drop(folder, {"case01_01"}, files=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    capsys.readouterr()
    assert _sample(scored_model_dir, masks, out, *args) == 0
    assert "3 already there, kept" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert {p.name for p in before if after[p] != before[p]} == {"case01_01.png"}  # the others were not made again
    assert _files(out) == _files(whole)  # byte for byte
    for folder in ("", "rejected"):
        assert _lines(out / folder) == _lines(whole / folder)
    # other settings make another batch: its pairs replace the old ones of the same names
    assert _sample(scored_model_dir, masks, out, *args, "--steps", "1") == 0
    assert "already there" not in capsys.readouterr().out


def test_finished_pairs_needs_the_same_model_and_settings(tiny_model, scored_model_dir, dataset, tmp_path):
    out = tmp_path / "o"
    mask = dataset / "masks" / "case00.png"
    assert main(["sample", "--model", str(scored_model_dir), "--masks", str(mask), "--num-images", "2", "--steps", "2",
                 "--guidance", "3", "--scheduler", "dpm++", "--seed", "3", "--output", str(out)]) == 0
    from siamese.model import load_model

    model = load_model(scored_model_dir)
    assert finished_pairs(out, model, ["case00"], 2, 3, PARAMS, scored=True) == {"case00_00", "case00_01"}
    assert finished_pairs(out, model, ["case00"], 2, 4, PARAMS, scored=True) == set()  # other seeds
    assert finished_pairs(out, model, ["case00"], 2, 3, PARAMS, augment=True, scored=True) == set()
    other = SamplingParams(steps=2, guidance_scale=5.0, scheduler="dpm++")
    assert finished_pairs(out, model, ["case00"], 2, 3, other, scored=True) == set()
    with torch.no_grad():
        next(model.unet.parameters()).add_(1.0)  # another model
    assert finished_pairs(out, model, ["case00"], 2, 3, PARAMS, scored=True) == set()

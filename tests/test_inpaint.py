"""Inpainting (issue 24): lesions painted into real frames. Every pixel outside the region stays the frame's, the
pair's mask is the exact union (or the new lesion alone after clear_frame_lesions), every scheduler and speed setting
samples through the same blended loop, the CLI paints a folder of frames and refuses bad input with one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import write_dataset
from siamese.batch import finished_pairs, frame_choices, run_batch
from siamese.cli import main
from siamese.data import DataError, mask_to_hint
from siamese.carried.pipeline_siamese import SiameseDiffusionPipeline
from siamese.inpaint import (DEFAULT_MARGIN, Frame, composite, edge_ratio, full_size_mask, harmonize_colors,
                             latent_region, lesion_region, list_frames, paste, picture_mask, prepare_frame, read_frames)
from siamese.model import load_model
from siamese.sampling import SamplingParams, encode_frames, generate, prepare_mask, sample

PARAMS = SamplingParams(steps=3, guidance_scale=3.0)


def _frame(h: int = 80, w: int = 96, seed: int = 0) -> np.ndarray:
    """A textured frame with a black surround in its corners (as an endoscope's picture)."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal([150, 70, 60], 25, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    image[((yy - h / 2) / (0.62 * h)) ** 2 + ((xx - w / 2) / (0.62 * w)) ** 2 > 1] = 0
    return image


def _lesion(h: int, w: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """A rectangle lesion (uint8 0/255) at fractions (top, bottom, left, right) of an (h, w) mask."""
    mask = np.zeros((h, w), np.uint8)
    mask[int(box[0] * h):int(box[1] * h), int(box[2] * w):int(box[3] * w)] = 255
    return mask


NEW = (0.45, 0.7, 0.2, 0.45)  # the new lesion, left of centre
OWN = (0.25, 0.45, 0.6, 0.8)  # the frame's own lesion, upper right


def _reach(lesion: np.ndarray, margin: int, resolution: int) -> np.ndarray:
    """Every pixel of a frame (H, W) a painting may change: its lesion (H, W) at the frame's size dilated by the
    margin scaled to the frame's size (the larger scale of the two sides), plus 2 pixels (the resizing's reach)."""
    h, w = lesion.shape
    r = int(np.ceil(margin * max(h, w) / resolution)) + 2
    return cv2.dilate((lesion > 0).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                                (2 * r + 1, 2 * r + 1))) > 0


def _setup(model, margin: int = DEFAULT_MARGIN):
    """A non-square frame (80 x 96, the model square): (frame, its lesion, the new lesion's mask (40 x 48, the
    frame's aspect), the Frame, the new lesion at the model resolution, the region at the frame's size (`_reach`))."""
    frame, own, new = _frame(), _lesion(80, 96, OWN), _lesion(40, 48, NEW)
    f = prepare_frame(frame, model.config.resolution, own)
    binary = prepare_mask(model, new)
    return frame, own, new, f, binary, _reach(full_size_mask(new, (80, 96)), margin, model.config.resolution)


def test_region_alpha_and_composite_keep_outside_pixels_exact():
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 24:40] = 1
    region, alpha = lesion_region(mask, 5)
    assert region[mask > 0].all() and region.sum() > mask.sum()
    assert (alpha[mask > 0] == 1).all() and (alpha[~region] == 0).all() and 0 < alpha[region & (mask == 0)].max() < 1
    assert region[25, 44] and not region[25, 46]  # 4 px from the lesion's edge (x = 39) is in, 6 px is not
    hard_region, hard_alpha = lesion_region(mask, 0)
    assert (hard_region == mask.astype(bool)).all() and (hard_alpha == mask).all()
    soft = latent_region(region, 8)
    assert soft.shape == (8, 8) and soft.max() == 1 and soft.min() == 0 and ((soft > 0) & (soft < 1)).any()
    frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    other = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = composite(frame, other, alpha)
    assert np.abs(out.astype(int) - frame)[~region].max() == 0
    assert (out[mask > 0] == other[mask > 0]).all()


def test_picture_mask_and_seam_measure():
    image = _frame(64, 64)
    image[30:34, 30:34] = 0  # a dark spot inside the picture stays picture
    picture = picture_mask(image)
    assert not picture[0, 0] and picture[32, 32] and picture[32, 5]
    flat = np.full((64, 64, 3), 120, np.uint8)
    region = np.zeros((64, 64), bool)
    region[16:48, 16:48] = True
    stepped = flat.copy()
    stepped[region] = 200  # a hard seam at the region's edge
    flat_noise = np.clip(flat + np.random.default_rng(0).normal(0, 8, flat.shape), 0, 255).astype(np.uint8)
    stepped_noise = np.clip(stepped + np.random.default_rng(0).normal(0, 8, flat.shape), 0, 255).astype(np.uint8)
    assert edge_ratio(stepped_noise, region) > 3 * edge_ratio(flat_noise, region)


def test_generate_into_a_frame_keeps_every_outside_pixel_and_returns_the_union_mask(tiny_model):
    frame, own, new, f, binary, region = _setup(tiny_model)
    items = generate(tiny_model, new, 2, seed=4, params=PARAMS, frame=frame, frame_mask=own)
    lesion = full_size_mask(new, (80, 96)) > 0
    assert (~region).sum() > 1000  # the comparison below covers much of the frame
    for item in items:
        assert item.image.shape == (80, 96, 3) and item.mask.shape == (80, 96)  # the frame's own size
        diff = np.abs(item.image.astype(int) - frame)
        assert diff[~region].max() == 0  # every pixel outside the region is the frame's, at full size
        assert diff[lesion].mean() > 5  # and the lesion was painted
        assert np.array_equal(item.mask, np.maximum(lesion, own > 0) * 255)  # the exact union, at full size
        p = item.params
        assert p["frame_mask"] == "known" and p["margin"] == DEFAULT_MARGIN and p["clear_frame_lesions"] is False
        assert p["harmonize"] is False
        assert p["new_lesion_area"] == pytest.approx(binary.mean(), abs=1e-6)
        assert p["frame_lesion_area"] == pytest.approx(f.mask.mean(), abs=1e-6)
    assert not np.array_equal(items[0].image, items[1].image)
    # one image alone from its seed: the same pixels (batching does not change an image)
    alone = generate(tiny_model, new, 1, seed=5, params=PARAMS, frame=frame, frame_mask=own)[0]
    assert np.abs(alone.image.astype(int) - items[1].image).max() <= 1


def test_blended_sampling_with_the_whole_image_as_region_is_plain_sampling(tiny_model):
    binary = prepare_mask(tiny_model, _lesion(64, 64, NEW))
    hint = mask_to_hint(binary)[None]
    s = tiny_model.latent_size
    frame = _frame(64, 64)[None]
    plain = sample(tiny_model, hint, ["x"], [torch.Generator().manual_seed(1)], steps=3, guidance_scale=3.0)
    blended = sample(tiny_model, hint, ["x"], [torch.Generator().manual_seed(1)], steps=3, guidance_scale=3.0,
                     frame_latents=encode_frames(tiny_model, frame), region=torch.ones(1, 1, s, s))
    assert torch.equal(plain, blended)
    kept = sample(tiny_model, hint, ["x"], [torch.Generator().manual_seed(1)], steps=3, guidance_scale=3.0,
                  frame_latents=encode_frames(tiny_model, frame), region=torch.zeros(1, 1, s, s))
    decoded = (tiny_model.codec.decode(encode_frames(tiny_model, frame)).float() / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(kept, decoded, atol=1e-5)  # region 0: the frame's own latents, decoded


def test_clear_frame_lesions_paints_the_frames_lesion_away_and_keeps_the_new_mask_alone(tiny_model):
    frame, own, new, f, binary, region = _setup(tiny_model, margin=4)
    own_region = _reach(own, 4, 64)
    union = generate(tiny_model, new, 1, seed=2, params=PARAMS, frame=frame, frame_mask=own, margin=4)[0]
    cleared = generate(tiny_model, new, 1, seed=2, params=PARAMS, frame=frame, frame_mask=own, margin=4,
                       clear_frame_lesions=True)[0]
    assert np.array_equal(cleared.mask, full_size_mask(new, (80, 96)) * 255)
    assert cleared.params["clear_frame_lesions"] is True
    diff = np.abs(cleared.image.astype(int) - frame)
    assert diff[~(region | own_region)].max() == 0
    assert diff[own > 0].mean() > 5  # the frame's own lesion was repainted
    assert np.abs(union.image.astype(int) - frame)[own_region & ~region].max() == 0  # and not without clearing


def test_a_frame_without_its_mask_is_accepted_as_unknown(tiny_model):
    frame, _, new, _, binary, _ = _setup(tiny_model)
    item = generate(tiny_model, new, 1, seed=0, params=PARAMS, frame=frame, clear_frame_lesions=True)[0]
    assert item.params["frame_mask"] == "unknown" and item.params["frame_lesion_area"] is None
    assert np.array_equal(item.mask, full_size_mask(new, (80, 96)) * 255)


@pytest.mark.parametrize("settings", [
    dict(scheduler="ddim", eta=0.5), dict(scheduler="dpm++"), dict(scheduler="unipc"),
    dict(scheduler="dpm++", guidance_scale=1.0), dict(scheduler="unipc", control_end=0.5),
    dict(scheduler="dpm++", steps=4, cache_interval=2), dict(scheduler="ddim", precision="bfloat16"),
])
def test_every_scheduler_and_speed_setting_keeps_the_frame(tiny_model, settings):
    frame, own, new, f, binary, region = _setup(tiny_model)
    params = SamplingParams(**{"steps": 3, "guidance_scale": 3.0, **settings})
    item = generate(tiny_model, new, 1, seed=1, params=params, frame=frame, frame_mask=own)[0]
    diff = np.abs(item.image.astype(int) - frame)
    assert diff[~region].max() == 0 and diff[full_size_mask(new, (80, 96)) > 0].mean() > 5


def test_autoguidance_keeps_the_frame(guided_model_dir):
    model = load_model(guided_model_dir)
    frame, own, new, f, binary, region = _setup(model)
    item = generate(model, new, 1, seed=1, params=PARAMS, frame=frame, frame_mask=own)[0]
    assert item.params["autoguidance"] == 2.0
    assert np.abs(item.image.astype(int) - frame)[~region].max() == 0


def test_a_vae_model_paints_through_the_same_code(tmp_path):
    from test_pipeline import build_sd15_tiny

    model = build_sd15_tiny()
    frame, own, new, f, binary, region = _setup(model)
    item = generate(model, new, 1, seed=1, params=PARAMS, frame=frame, frame_mask=own)[0]
    assert np.abs(item.image.astype(int) - frame)[~region].max() == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(frame=_frame(80, 160)), "differ in aspect"),
    (dict(frame=_frame(), frame_mask=np.zeros((50, 50), np.uint8)), "the frame's mask"),
    (dict(frame=_frame(), margin=-1), "margin must be a whole number"),
    (dict(frame=_frame(), margin=2.5), "margin must be a whole number"),
    (dict(frame_mask=np.zeros((80, 96), np.uint8)), "given without a frame"),
    (dict(frame=np.zeros((80, 96), np.float32)), "uint8 RGB"),
])
def test_bad_frames_are_refused_with_one_line(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        generate(tiny_model, _lesion(40, 48, NEW), 1, seed=0, params=PARAMS, **kwargs)
    assert "\n" not in str(e.value)


def test_a_mask_on_the_black_border_is_refused(tiny_model):
    corner = _lesion(80, 96, (0.0, 0.12, 0.0, 0.12))
    with pytest.raises(DataError, match="outside the frame"):
        generate(tiny_model, corner, 1, seed=0, params=PARAMS, frame=_frame())


# -- batch and CLI -------------------------------------------------------------------------------------------------
def _frames_folder(root: Path, n: int = 3, with_masks: bool = True) -> Path:
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / f"frame{i}.jpg"), _frame(seed=i)[..., ::-1])
        if with_masks and i != 1:  # frame1 has no mask: unknown
            cv2.imwrite(str(root / "masks" / f"frame{i}.png"), _lesion(80, 96, OWN))
    return root


def _masks_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for i, box in enumerate([NEW, (0.4, 0.6, 0.4, 0.6)]):
        cv2.imwrite(str(root / f"m{i}.png"), _lesion(40, 48, box))
    return root


def test_frame_choices_are_drawn_by_the_seed_among_fitting_frames(tiny_model, tmp_path):
    frames = read_frames(list_frames(_frames_folder(tmp_path / "f")), 64)
    wide = prepare_frame(_frame(80, 160), 64, None, "wide.png")
    masks = [("a", _lesion(40, 48, NEW)), ("b", _lesion(40, 48, (0.4, 0.6, 0.4, 0.6)))]
    choices = frame_choices([*frames, wide], masks, 8, 3, 64)
    assert choices == frame_choices([*frames, wide], masks, 8, 3, 64)
    assert all(c != 3 for row in choices for c in row)  # never the wide frame
    assert len({c for row in choices for c in row}) > 1
    assert frame_choices([*frames, wide], masks[1:], 8, 3, 64, offset=1) == choices[1:]  # a split batch chooses alike
    with pytest.raises(DataError, match="fits none of the 1 frames"):
        frame_choices([wide], masks, 1, 0, 64)


def test_run_batch_paints_into_chosen_frames_and_scores_the_new_region(tiny_model, scored_model_dir, tmp_path):
    from siamese.fidelity import load_scorer

    frames = read_frames(list_frames(_frames_folder(tmp_path / "f")), 64)
    masks = [("a", _lesion(40, 48, NEW))]
    pairs = list(run_batch(tiny_model, masks, 3, 7, PARAMS, frames=frames, scorer=load_scorer(scored_model_dir),
                           batch_size=2))
    choices = frame_choices(frames, masks, 3, 7, 64)[0]
    assert [p.item.params["frame"] for p in pairs] == [frames[c].name for c in choices]
    region = _reach(full_size_mask(masks[0][1], (80, 96)), DEFAULT_MARGIN, 64)
    for p, c in zip(pairs, choices):
        full, own = frames[c].original()  # read again from its file: the pair has the frame's size
        assert p.item.image.shape == (80, 96, 3) and p.item.mask.shape == (80, 96)
        assert np.abs(p.item.image.astype(int) - full)[~region].max() == 0
        assert 0 <= p.fidelity <= 1 and p.item.params["fidelity"] == p.fidelity
        assert p.item.params["frame_mask"] == ("unknown" if frames[c].mask is None else "known")


def _lines(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]


def test_cli_paints_a_folder_of_frames_and_resumes(tiny_model_dir, tmp_path, capsys):
    frames, masks, out = _frames_folder(tmp_path / "frames"), _masks_folder(tmp_path / "masks"), tmp_path / "out"
    args = ["sample", "--model", str(tiny_model_dir), "--masks", str(masks), "--frames", str(frames), "--num-images",
            "2", "--steps", "2", "--guidance", "3", "--seed", "1", "--margin", "6", "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 pairs" in printed and "painted into frames" in printed
    lines = _lines(out)
    assert len(lines) == 4 and all(x["frame"].startswith("frame") and x["margin"] == 6 for x in lines)
    by_name = {f.name: f for f in read_frames(list_frames(frames), 64)}
    model = load_model(tiny_model_dir)
    for x in lines:
        image = cv2.imread(str(out / x["image"]))[..., ::-1]
        mask = cv2.imread(str(out / x["mask"]), cv2.IMREAD_GRAYSCALE)
        new = full_size_mask(cv2.imread(x["source_mask"], cv2.IMREAD_GRAYSCALE), (80, 96))
        full, own = by_name[x["frame"]].original()
        assert image.shape == (80, 96, 3) and mask.shape == (80, 96)  # full-size pairs
        assert np.abs(image.astype(int) - full)[~_reach(new, 6, 64)].max() == 0
        assert np.array_equal(mask, (new if own is None else np.maximum(new, own)) * 255)
    # the same command again: every pair already there
    assert main(args) == 0
    assert "4 already there, kept" in capsys.readouterr().out
    # a dataset folder (images/ + masks/) as frames, with the frames' lesions cleared
    data = write_dataset(tmp_path / "data", n=3, size=64)
    out2 = tmp_path / "out2"
    square = write_dataset(tmp_path / "square", n=2, size=48, seed=1) / "masks"  # the frames' aspect
    assert main([*args[:4], str(square), "--frames", str(data), *args[7:-1], str(out2), "--clear-frame-lesions"]) == 0
    assert all(x["clear_frame_lesions"] and x["frame_mask"] == "known" for x in _lines(out2))
    assert not finished_pairs(out2, model, ["m0"], 2, 1, PARAMS)  # whole-image pairs are not painted ones


@pytest.mark.parametrize("case, message", [
    ("empty frames", "no frame images"),
    ("unreadable frame", "not a readable image"),
    ("other aspect", "fits none of the"),
    ("margin without frames", "give --frames too"),
    ("bad margin", "margin must be a whole number"),
    ("outside", "fits none of the"),
])
def test_cli_bad_frames_exit_2_with_one_line(case, message, tiny_model_dir, tmp_path, capsys):
    frames, masks, out = tmp_path / "frames", _masks_folder(tmp_path / "masks"), tmp_path / "out"
    extra = ["--frames", str(frames)]
    if case == "empty frames":
        frames.mkdir()
    elif case == "unreadable frame":
        _frames_folder(frames)
        (frames / "frame0.jpg").write_bytes(b"not an image")
    elif case == "other aspect":
        frames.mkdir()
        cv2.imwrite(str(frames / "wide.png"), _frame(80, 200))
    elif case == "margin without frames":
        extra = ["--margin", "4"]
    elif case == "bad margin":
        _frames_folder(frames)
        extra += ["--margin", "-3"]
    elif case == "outside":
        frames.mkdir()
        cv2.imwrite(str(frames / "f.png"), _frame())
        for p in masks.iterdir():
            cv2.imwrite(str(p), _lesion(40, 48, (0.0, 0.12, 0.0, 0.12)))
    capsys.readouterr()
    code = main(["sample", "--model", str(tiny_model_dir), "--masks", str(masks), "--steps", "1", "--output", str(out),
                 *extra])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (after the model's loading bar, when the model was loaded)
    assert code == 2 and last.startswith("error: ") and message in last and "Traceback" not in err, err
    assert not (out / "metadata.jsonl").exists()


def test_frames_of_a_dataset_folder_carry_their_masks(tmp_path):
    data = write_dataset(tmp_path / "d", n=3, size=64)
    frames = read_frames(list_frames(data), 64)
    assert [f.name for f in frames] == ["case00.jpg", "case01.jpg", "case02.jpg"]
    assert all(isinstance(f, Frame) and f.mask is not None and f.mask.any() for f in frames)


def test_harmonize_matches_the_frames_colours_in_the_ring_and_paste_keeps_the_frame_at_its_size():
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 24:40] = 1
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal([150, 70, 60], 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    pale = np.clip(rng.normal([200, 150, 140], 12, (64, 64, 3)), 0, 255).astype(np.uint8)  # too pale and too flat
    out = harmonize_colors(frame, pale, mask, 12)
    d = cv2.distanceTransform((1 - mask).astype(np.uint8), cv2.DIST_L2, 5)
    ring = (d >= 6) & (d <= 12)
    assert np.abs(out[ring].mean(0) - frame[ring].mean(0)).max() < 2  # the frame's colour in the ring
    assert np.abs(out[ring].std(0) - frame[ring].std(0)).max() < 3  # and its contrast
    assert harmonize_colors(frame, pale, mask, 1) is pale  # no ring: unchanged
    full = np.clip(rng.normal(128, 30, (90, 130, 3)), 0, 255).astype(np.uint8)  # a non-square frame
    region, alpha = lesion_region(mask, 12)
    pasted = paste(full, out, alpha)
    assert pasted.shape == full.shape
    assert np.abs(pasted.astype(int) - full)[~_reach(full_size_mask(mask, (90, 130)), 12, 64)].max() == 0
    assert np.array_equal(paste(frame, out, alpha), composite(frame, out, alpha))  # at the model size: composite


def test_the_seam_defaults_margin_12_without_harmonisation_everywhere(tiny_model):
    """The measured best (the card's evaluation): margin 12, no colour harmonisation (it lowered the seam measure and
    cost realism); generate, run_batch and the carried pipeline share the defaults, and harmonize=True changes the
    painted region only."""
    import inspect

    assert DEFAULT_MARGIN == 12
    for fn in (generate, run_batch, SiameseDiffusionPipeline.__call__):
        sig = inspect.signature(fn).parameters
        assert sig["margin"].default == DEFAULT_MARGIN and sig["harmonize"].default is False, fn
    frame, own, new, f, binary, region = _setup(tiny_model)
    off = generate(tiny_model, new, 1, seed=3, params=PARAMS, frame=frame, frame_mask=own)[0]
    on = generate(tiny_model, new, 1, seed=3, params=PARAMS, frame=frame, frame_mask=own, harmonize=True)[0]
    assert on.params["harmonize"] is True and not np.array_equal(on.image, off.image)
    assert np.abs(on.image.astype(int) - frame)[~region].max() == 0
    with pytest.raises(ValueError, match="harmonize must be True or False"):
        generate(tiny_model, new, 1, seed=3, params=PARAMS, frame=frame, harmonize="yes")


def test_a_frame_kept_at_the_model_resolution_paints_at_it(tiny_model):
    frame, own, new, _, binary, _ = _setup(tiny_model)
    small = prepare_frame(frame, 64, own, keep_full=False)
    assert small.original() is None
    item = generate(tiny_model, new, 1, seed=3, params=PARAMS, frame=small)[0]
    assert item.image.shape == (64, 64, 3) and np.array_equal(item.mask, np.maximum(binary, small.mask) * 255)
    assert np.abs(item.image.astype(int) - small.image)[~lesion_region(binary, DEFAULT_MARGIN)[0]].max() == 0

"""On-screen overlays: the detector on synthetic frames, the loss weights, batches, the setting."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict

import cv2
import numpy as np
import pytest
import torch

from siamese.build import BuildConfig
from siamese.cli import build_parser
from siamese.cli_options import config_from_args
from siamese.data import PairDataset
from siamese.objective import base_losses, controlnet_losses, mse, siamese_losses
from siamese.overlay import MIN_IMAGES, attach_overlay, find_overlay, keep_weights, stroke_share, text_zone
from siamese.schedule import trainable_parameters
from siamese.train_config import TrainConfig

from conftest import write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

R = 128
TEXT = (slice(20, 60), slice(4, 40))  # rows, columns of the planted text block
BOX = (slice(100, 124), slice(4, 28))  # the planted static box


def _frames(n: int = 24, seed: int = 0, text: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n smooth reddish frames with specular highlights anywhere; with `text`, white text that differs per frame
    in a fixed block and a constant green box. Returns (images (n, R, R, 3) uint8, the planted pixels (n, R, R))."""
    rng = np.random.default_rng(seed)
    images, planted = [], []
    for _ in range(n):
        low = rng.normal(0, 1, (8, 8, 3)).astype(np.float32)
        im = np.clip(cv2.resize(low, (R, R), interpolation=cv2.INTER_CUBIC) * 25 + (170, 80, 70), 0, 255)
        im = im.astype(np.uint8)
        for _ in range(6):  # highlights: small bright blobs anywhere
            cv2.circle(im, tuple(int(v) for v in rng.integers(0, R, 2)), int(rng.integers(1, 3)), (255, 255, 255), -1)
        drawn = np.zeros((R, R), np.uint8)
        if text:
            for row in range(3):
                word = "".join(rng.choice(list("0123456789/:ABC"), 5))
                cv2.putText(drawn, word, (TEXT[1].start, TEXT[0].start + 10 + 13 * row), cv2.FONT_HERSHEY_PLAIN,
                            0.8, 1, 1)
            drawn[BOX] = 2
            im[drawn == 1] = (240, 240, 240)
            im[drawn == 2] = (40, 200, 60)
        images.append(im)
        planted.append(drawn > 0)
    return np.stack(images), np.stack(planted)


def test_the_text_zone_and_the_stroke_share_of_frames_with_and_without_text():
    """The zone lies on the planted text block; frames with text have strokes there, frames without have almost
    none (what the overlay A/B measures of generated images)."""
    images, _ = _frames()
    zone = text_zone(images)
    block = np.zeros((R, R), bool)
    block[TEXT] = True
    assert zone.any() and (zone & block).sum() / zone.sum() > 0.8
    with_text, clean = stroke_share(images, zone), stroke_share(_frames(8, seed=1, text=False)[0], zone)
    assert with_text.shape == (24,) and clean.shape == (8,)
    assert with_text.min() > 0.05 and clean.max() < 0.02
    assert not text_zone(images[:MIN_IMAGES - 1]).any() and not stroke_share(images, ~zone & False).any()


def test_finds_planted_text_and_box_and_little_else():
    images, planted = _frames()
    found = find_overlay(images)
    assert found.shape == planted.shape and found.dtype == bool
    assert found[planted].mean() > 0.9, "the text strokes and the box"
    assert found[:, BOX[0], BOX[1]].mean() > 0.95
    outside = np.ones((R, R), bool)
    outside[TEXT[0].start - 4:TEXT[0].stop + 4, TEXT[1].start - 4:TEXT[1].stop + 4] = False
    outside[BOX] = False
    assert found[:, outside].mean() < 0.002, "highlights elsewhere are image content"


def test_nothing_in_plain_frames_or_noise():
    images, _ = _frames(text=False)
    assert not find_overlay(images).any()
    noise = np.random.default_rng(1).integers(0, 256, (MIN_IMAGES, R, R, 3), dtype=np.uint8)
    assert not find_overlay(noise).any()
    assert not find_overlay(_frames(n=MIN_IMAGES - 1)[0]).any(), "too few frames to tell"


def test_a_lesion_in_the_same_place_is_not_a_static_label():
    images, _ = _frames(text=False)
    lesions = np.zeros(images.shape[:3], np.uint8)
    lesions[:, 50:80, 50:80] = 1
    images[:, 50:80, 50:80] = (230, 160, 140)  # flat and in every frame: only the masks tell it from a label
    assert find_overlay(images)[:, 50:80, 50:80].all()
    assert not find_overlay(images, lesions).any()


def test_keep_weights_leave_out_every_latent_an_overlay_touches():
    overlay = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    overlay[0, 0, 9, 17] = True  # latent (1, 2) of 8x8
    weights = keep_weights(overlay, (8, 8))
    assert weights.shape == (2, 1, 8, 8)
    assert weights[0, 0, 1, 2] == 0 and weights.sum() == 2 * 64 - 1


def test_attach_overlay_sets_none_when_nothing_is_found(tmp_path):
    ds = PairDataset(write_dataset(tmp_path / "d", n=MIN_IMAGES, size=64), 64)
    assert attach_overlay(ds, 8) == 0.0 and ds.overlay is None
    assert "overlay" not in ds.batch([0, 1], torch.Generator().manual_seed(0), flip=True)


def test_flips_keep_overlay_and_image_aligned(tmp_path):
    ds = PairDataset(write_dataset(tmp_path / "d", n=4, size=64), 64)
    ds.overlay = ds.images[..., 0] > 150  # a pattern of each image itself
    b = ds.batch([0, 1, 2, 3], torch.Generator().manual_seed(0), flip=True)
    assert b["overlay"].shape == (4, 1, 64, 64) and b["overlay"].dtype == torch.bool
    assert torch.equal(b["overlay"][:, 0], b["image_hint"][:, 0] * 255 > 150.5)
    plain = ds.batch([0, 1, 2, 3], torch.Generator().manual_seed(0), flip=False)
    assert not torch.equal(plain["overlay"], b["overlay"]), "the seed flips some samples"


def test_weighted_mse_is_the_mean_over_kept_latents():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    w = (torch.rand(2, 1, 8, 8, generator=g) > 0.3).float()
    w[1] = 0  # a sample with nothing kept counts 0
    keep = w[0, 0].bool()
    expected = (a[0] - b[0]).pow(2)[:, keep].mean()
    torch.testing.assert_close(mse(a, b, w), torch.stack([expected, torch.tensor(0.0)]))


def _inputs(model, B=4, ts=(5, 150, 600, 999)):
    g = torch.Generator().manual_seed(0)
    r = model.config.resolution
    images = torch.rand(B, 3, r, r, generator=g) * 2 - 1
    masks = (torch.rand(B, 1, r, r, generator=g) > 0.5).float().expand(-1, 3, -1, -1)
    x0 = model.codec.encode(images)
    return dict(x0=x0, mask_hint=masks, image_hint=(images + 1) / 2, t=torch.tensor(ts[:B]),
                prompt_embeds=model.encode_prompt(["a test image"] * B),
                noise=torch.randn(x0.shape, generator=g), alphas_cumprod=model.alphas_cumprod)


def _losses_and_grads(model, objective, params, **kw):
    losses = objective(model.unet, controlnet=model.controlnet, progress=0.6, backward=lambda l: l.backward(), **kw)
    grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    return losses, grads


@pytest.mark.parametrize("objective,name", [(siamese_losses, "siamese"), (controlnet_losses, "controlnet"),
                                            (base_losses, "base")])
def test_no_overlay_gives_exactly_the_plain_losses(tiny_model, objective, name):
    """An all-zero overlay mask: every loss term and every gradient bit-identical to the unweighted ones."""
    model = copy.deepcopy(tiny_model)
    params = trainable_parameters(model, name, unlock_decoder=True)
    inputs = _inputs(model)
    weight = keep_weights(torch.zeros(4, 1, *inputs["image_hint"].shape[-2:]), inputs["x0"].shape[-2:])
    plain, g_plain = _losses_and_grads(model, objective, params, **inputs)
    weighted, g_weighted = _losses_and_grads(model, objective, params, weight=weight, **inputs)
    for k in plain:
        assert torch.equal(plain[k], weighted[k]), k
    assert g_plain.keys() == g_weighted.keys() and g_plain
    for n in g_plain:
        assert torch.equal(g_plain[n], g_weighted[n]), n


def test_masked_latents_send_no_gradient(tiny_model):
    """Every prediction the Siamese terms compare (both branches, the regularisation pass) gets zero gradient at the
    latents an overlay touches, and some elsewhere."""
    model = copy.deepcopy(tiny_model)
    params = trainable_parameters(model, "siamese", unlock_decoder=True)
    inputs = _inputs(model)
    h, w = inputs["x0"].shape[-2:]
    weight = torch.ones(4, 1, h, w)
    weight[:, :, : h // 2, : w // 4] = 0  # the left top: an overlay
    out_grads = []

    def keep_grad(module, args, out):
        if out.requires_grad:
            out.register_hook(lambda g: out_grads.append(g.detach().clone()))

    hook = model.unet.conv_out.register_forward_hook(keep_grad)
    try:
        losses, _ = _losses_and_grads(model, siamese_losses, params, weight=weight, **inputs)
    finally:
        hook.remove()
    assert float(losses["loss_regularization"]) > 0
    assert len(out_grads) == 3, "mask branch, image branch, regularisation"
    for g in out_grads:
        keep = weight[: len(g)].expand_as(g).bool()  # the regularisation pass: the samples with t <= 200, first
        assert g[~keep].abs().max() == 0
        assert g[keep].abs().max() > 0


def test_setting_round_trips_and_a_bad_value_is_one_clear_error(tmp_path):
    config = TrainConfig(data="d", output="o", overlay="off")
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(asdict(config)))
    assert TrainConfig.from_json(path).overlay == "off"
    assert TrainConfig(data="d", output="o").overlay == "auto"
    args = build_parser().parse_args(["train", "--data", "d", "--output", "o", "--overlay", "off"])
    assert config_from_args(TrainConfig, args).overlay == "off"
    with pytest.raises(ValueError, match="^overlay must be one of auto, off, got 'on'$"):
        TrainConfig(data="d", output="o", overlay="on").validate()
    build = BuildConfig(data="d", output="o", overlay="off")
    assert build.train_config("2-siamese", {}).overlay == "off"
    with pytest.raises(ValueError, match="^overlay must be one of auto, off"):
        BuildConfig(data="d", output="o", overlay="yes").validate()
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["build", "--data", "d", "--output", "o", "--overlay", "on"])
    assert e.value.code == 2

"""The sampler: same images as a plain diffusers-style loop, per-image seeds, DHI once, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from siamese.data import DataError
from siamese.networks import unet_head
from siamese.sampling import SamplingParams, describe_mask, generate, make_scheduler, sample


def _mask(size=64):
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 3), size // 5, 255, -1)
    return mask


def _hint(model, n=2):
    m = torch.from_numpy(_mask(model.config.resolution) > 0).float()
    return m.expand(n, 3, -1, -1)


@torch.no_grad()
def _plain_loop(model, hint, prompts, seeds, steps, guidance, scheduler, control_scale=1.0, control_end=1.0):
    """The diffusers ControlNet pipeline's loop with stock forwards (DHI run inside every call); after
    `control_end` of the steps the ControlNet runs at scale 0 (its `controlnet_keep`)."""
    sched = make_scheduler(scheduler, model.scheduler_config)
    sched.set_timesteps(steps)
    B = hint.shape[0]
    cond = model.encode_prompt(prompts)
    uncond = model.encode_prompt([""] * B)
    c, s = model.codec.latent_channels, model.latent_size
    latents = randn_tensor((B, c, s, s), generator=[torch.Generator().manual_seed(x) for x in seeds])
    latents = latents * sched.init_noise_sigma
    n = len(sched.timesteps)
    for i, t in enumerate(sched.timesteps):
        x = sched.scale_model_input(torch.cat([latents, latents]), t)
        emb = torch.cat([uncond, cond])
        keep = 1.0 - float((i + 1) / n > control_end)
        down, mid = model.controlnet(x, t, emb, torch.cat([hint, hint]), conditioning_scale=control_scale * keep,
                                     return_dict=False)
        eps = model.unet(x, t, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        e_u, e_c = eps.chunk(2)
        latents = sched.step(e_u + guidance * (e_c - e_u), t, latents).prev_sample
    return (model.codec.decode(latents) / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("scheduler, control_scale, control_end", [
    ("ddim", 1.0, 1.0), ("dpm++", 1.0, 1.0), ("unipc", 1.0, 1.0), ("dpm++", 2.5, 1.0), ("dpm++", 2.0, 0.5)])
def test_same_images_as_plain_pipeline_loop(tiny_model, scheduler, control_scale, control_end):
    hint = _hint(tiny_model)
    prompts = ["a test image"] * 2
    ours = sample(tiny_model, hint, prompts, [torch.Generator().manual_seed(s) for s in (3, 4)], steps=4,
                  guidance_scale=5.0, scheduler=scheduler, control_scale=control_scale, control_end=control_end)
    ref = _plain_loop(tiny_model, hint, prompts, (3, 4), 4, 5.0, scheduler, control_scale, control_end)
    assert ours.shape == (2, 3, 64, 64)
    assert (ours - ref).abs().max() < 1e-4


def test_hint_embedding_computed_once_per_image(tiny_model, monkeypatch):
    calls = []
    original = tiny_model.controlnet.embed_hint
    monkeypatch.setattr(tiny_model.controlnet, "embed_hint", lambda h: calls.append(h.shape[0]) or original(h))
    sample(tiny_model, _hint(tiny_model, 3), ["x"] * 3, [torch.Generator().manual_seed(i) for i in range(3)],
           steps=5, guidance_scale=3.0)
    # once for the 5 steps, on the batch the ControlNet sees: both guidance halves keep the mask, as in diffusers'
    # ControlNet forward (so that the diffusers pipelines make the same pixels with several threads too)
    assert calls == [6]


def test_each_image_reproduces_alone_from_its_seed(tiny_model):
    params = SamplingParams(steps=3, guidance_scale=3.0, scheduler="ddim", eta=0.5)
    batch = generate(tiny_model, _mask(), num_images=3, seed=100, params=params, batch_size=3)
    assert [g.seed for g in batch] == [100, 101, 102]
    alone = generate(tiny_model, _mask(), num_images=1, seed=101, params=params)[0]
    assert np.abs(alone.image.astype(int) - batch[1].image.astype(int)).max() <= 1
    assert np.abs(batch[0].image.astype(int) - batch[1].image.astype(int)).mean() > 1  # different seeds differ


def test_control_scale_sets_how_strongly_the_mask_acts(tiny_model):
    other = np.zeros((64, 64), np.uint8)
    other[40:60, 5:30] = 255

    def image(mask, scale):
        params = SamplingParams(steps=3, guidance_scale=3.0, control_scale=scale)
        return generate(tiny_model, mask, seed=4, params=params)[0].image.astype(int)

    assert np.array_equal(image(_mask(), 0.0), image(other, 0.0))  # 0: the mask is ignored
    weak = np.abs(image(_mask(), 1.0) - image(other, 1.0)).mean()
    strong = np.abs(image(_mask(), 3.0) - image(other, 3.0)).mean()
    assert 0 < weak < strong


@pytest.mark.parametrize("steps, control_end, runs", [(20, 1.0, 20), (20, 0.5, 10), (25, 0.5, 12), (20, 0.01, 1)])
def test_control_end_runs_the_controlnet_in_the_first_steps_only(tiny_model, monkeypatch, steps, control_end, runs):
    """As diffusers' control_guidance_end: the first floor(end * steps) steps (at least one); the mask then still
    shapes the image, and a different window makes a different image."""
    from siamese import sampling

    calls = []
    original = sampling.controlnet_residuals
    monkeypatch.setattr(sampling, "controlnet_residuals", lambda *a: calls.append(a[2][0].item()) or original(*a))
    params = SamplingParams(steps=steps, guidance_scale=3.0, scheduler="dpm++", control_end=control_end)
    image = generate(tiny_model, _mask(), seed=4, params=params)[0]
    sched = make_scheduler("dpm++", tiny_model.scheduler_config)
    sched.set_timesteps(steps)
    assert calls == sched.timesteps[:runs].tolist()  # the noisiest steps
    assert image.params["control_end"] == control_end
    if control_end < 1:
        full = generate(tiny_model, _mask(), seed=4, params=SamplingParams(steps=steps, guidance_scale=3.0,
                                                                           scheduler="dpm++"))[0]
        assert np.abs(full.image.astype(int) - image.image.astype(int)).max() > 0


def test_the_mask_window_in_words():
    assert describe_mask(1.5, 1.0) == "1.5 in every step"
    assert describe_mask(2.0, 0.5) == "2 in the first 50% of the steps"


def test_generated_pair_and_metadata(tiny_model):
    calls = []
    out = generate(tiny_model, _mask(200), num_images=2, seed=7, batch_size=1,
                   params=SamplingParams(steps=2, guidance_scale=1.0), callback=lambda d, n: calls.append((d, n)))
    g = out[0]
    assert g.image.shape == (64, 64, 3) and g.image.dtype == np.uint8
    assert g.mask.shape == (64, 64) and set(np.unique(g.mask)) <= {0, 255}
    assert g.params["seed"] == 7 and g.params["steps"] == 2 and g.params["scheduler"] == "ddim"
    assert g.params["control_scale"] == 1.0 and g.params["control_end"] == 1.0
    assert g.params["prompt"] == "a test image" and g.params["model"]["fingerprint"]
    assert calls[-1] == (4, 4)


def test_bad_inputs(tiny_model):
    with pytest.raises(DataError, match="empty"):
        generate(tiny_model, np.zeros((64, 64), np.uint8))
    with pytest.raises(DataError, match="all white"):
        generate(tiny_model, np.full((64, 64), 255, np.uint8))
    with pytest.raises(ValueError, match="scheduler"):
        generate(tiny_model, _mask(), params=SamplingParams(scheduler="euler"))
    with pytest.raises(ValueError, match="steps"):
        generate(tiny_model, _mask(), params=SamplingParams(steps=0))
    with pytest.raises(ValueError, match="control scale must be between 0 and 10"):
        generate(tiny_model, _mask(), params=SamplingParams(control_scale=-1))
    with pytest.raises(ValueError, match="number of images"):
        generate(tiny_model, _mask(), num_images=0)
    with pytest.raises(ValueError, match="batch size must be at least 1, got 0"):
        generate(tiny_model, _mask(), batch_size=0)
    with pytest.raises(ValueError, match="seed must be between 0 and 4294967295, got -1"):
        generate(tiny_model, _mask(), seed=-1)
    with pytest.raises(ValueError, match="prompt must be text, got int"):
        generate(tiny_model, _mask(), params=SamplingParams(prompt=5))


@pytest.mark.parametrize("mask", [
    np.array([[0, 1], [1, 0]], np.uint16),  # a 16-bit label mask
    np.array([[0, 65535], [40000, 0]], np.uint16),
    np.array([[0.0, 1.0], [0.9, 0.2]], np.float32),
    np.array([[False, True], [True, False]]),
    np.array([[0, 255], [200, 0]], np.int64),
])
def test_every_mask_type_gives_the_same_pairs(tiny_model, mask):
    """16-bit, floating point, boolean and int64 masks mean what an 8-bit 0/255 mask means (binarize_mask's one
    rule), so they generate the same image from the same seed."""
    big = cv2.resize(mask.astype(np.float32), (64, 64), interpolation=cv2.INTER_NEAREST).astype(mask.dtype)
    eight_bit = cv2.resize(np.array([[0, 255], [255, 0]], np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST)
    params = SamplingParams(steps=1, guidance_scale=1.0)
    a = generate(tiny_model, big, 1, 3, params)[0]
    b = generate(tiny_model, eight_bit, 1, 3, params)[0]
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.image, b.image)


def test_a_model_in_memory_samples_on_the_timesteps_of_its_saved_copy(tiny_model, tiny_model_dir):
    """The schedule a model is built with and the one its folder holds give every sampler the same timesteps
    (a built model's schedule names its timestep_spacing, 'trailing'; DPM-Solver++ and UniPC default to 'linspace')."""
    from siamese.model import load_model
    from siamese.sampling import SCHEDULERS, make_scheduler

    saved = load_model(tiny_model_dir).scheduler_config
    for name in SCHEDULERS:
        a, b = make_scheduler(name, tiny_model.scheduler_config), make_scheduler(name, saved)
        a.set_timesteps(20)
        b.set_timesteps(20)
        assert a.timesteps.tolist() == b.timesteps.tolist(), name


def test_sampling_starts_at_the_last_training_timestep(tiny_model):
    """Steps are spaced "trailing": every sampler's first step is t = 999 (with "leading", 20 steps began at 941-951,
    from pure noise that the model had learned to expect at 999, and images came out low in contrast)."""
    from siamese.sampling import SCHEDULERS, make_scheduler

    for name in SCHEDULERS:
        scheduler = make_scheduler(name, tiny_model.scheduler_config)
        scheduler.set_timesteps(20)
        assert int(scheduler.timesteps[0]) == 999 and int(scheduler.timesteps[-1]) < 60, name


def test_under_bfloat16_the_unets_output_layers_run_in_float32(tiny_model):
    """The noise prediction is not rounded to bfloat16 (guidance multiplies its small cond - uncond difference):
    under autocast the output layers take the last block's bfloat16 features in float32 and return float32."""
    unet = tiny_model.unet
    h = torch.randn(2, unet.conv_out.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet_head(unet, h.bfloat16())
        rounded = unet.conv_out(unet.conv_act(unet.conv_norm_out(h.bfloat16())))  # what autocast alone gives
    exact = unet_head(unet, h.bfloat16().float())
    assert out.dtype == torch.float32 and torch.equal(out, exact)
    assert rounded.dtype == torch.bfloat16 and not torch.equal(rounded.float(), exact)

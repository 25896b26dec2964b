"""The Siamese objective: parity with the naive reference, and the semantics of METHOD.md."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from diffusers import DDPMScheduler

from siamese import objective, reference
from siamese.model import SCHEDULE
from siamese.networks import UNET_DECODER_PREFIXES
from siamese.objective import LOSS_KEYS, controlnet_losses, siamese_losses
from siamese.reference import naive_siamese_losses
from siamese.schedule import trainable_parameters


def _batch(model, B=4, seed=0, dtype=torch.float32, ts=(5, 150, 600, 999)):
    g = torch.Generator().manual_seed(seed)
    R = model.config.resolution
    images = torch.rand(B, 3, R, R, generator=g, dtype=dtype) * 2 - 1
    masks = (torch.rand(B, 1, R // 8, R // 8, generator=g) > 0.5).to(dtype)
    masks = torch.nn.functional.interpolate(masks, size=(R, R)).expand(-1, 3, -1, -1)
    x0 = model.codec.encode(images)
    return dict(
        x0=x0, mask_hint=masks, image_hint=(images + 1) / 2,
        prompt_embeds=model.encode_prompt(["a test image", "", "a test image", "x"][:B]),
        t=torch.tensor(ts[:B]), noise=torch.randn(x0.shape, generator=g, dtype=dtype),
        alphas_cumprod=model.alphas_cumprod,
    )


@pytest.fixture
def model64(tiny_model):
    model = copy.deepcopy(tiny_model)
    model.to(dtype=torch.float64)
    return model


def _grads(params):
    out = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
    for p in params.values():
        p.grad = None
    return out


@pytest.mark.parametrize("use_backward,checkpointing", [(False, False), (True, False), (True, True), (False, True)])
def test_parity_with_naive_reference(model64, use_backward, checkpointing):
    """Same four losses and same gradient on every trainable parameter, progress > 1/3, some t <= 200;
    also with the networks' gradient checkpointing on (the SD1.5 recipe)."""
    params = trainable_parameters(model64, "siamese", unlock_decoder=True)
    batch = _batch(model64, dtype=torch.float64)
    args = (model64.unet, model64.controlnet)

    ref = naive_siamese_losses(*args, progress=0.6, **batch)
    ref["loss"].backward()
    g_ref = _grads(params)

    if checkpointing:
        for net in args:
            net.enable_gradient_checkpointing()
            net.train()

    if use_backward:
        ours = siamese_losses(*args, progress=0.6, backward=lambda loss: loss.backward(), **batch)
    else:
        ours = siamese_losses(*args, progress=0.6, **batch)
        ours["loss"].backward()
    g_ours = _grads(params)

    assert float(ref["loss_regularization"].detach()) > 0
    for k in LOSS_KEYS:
        torch.testing.assert_close(ours[k].detach(), ref[k].detach(), rtol=1e-10, atol=1e-12)
    assert len(g_ref) > 100
    worst = max((g_ours[n] - g_ref[n]).abs().max().item() for n in params)
    assert worst < 1e-12, worst
    # the gradient is not trivially zero: both ControlNet and decoder receive some
    assert any(g_ref[n].abs().sum() > 0 for n in params if n.startswith("controlnet."))
    assert any(g_ref[n].abs().sum() > 0 for n in params if n.startswith("unet.up_blocks"))


def test_naive_reference_runs_the_controlnet_as_the_authors_code(tiny_model, monkeypatch):
    """The benchmark's baseline does what cldm.py does, no more: the ControlNet runs with a graph on the
    mask hint, on the image hint and in the regularisation pass, and once more without a graph, as a frozen
    copy, for sg(c_m); with no sample at t <= 200 the regularisation pass is skipped, and ours agrees."""
    model = copy.deepcopy(tiny_model)
    trainable_parameters(model, "siamese", unlock_decoder=True)
    calls = []
    forward = type(model.controlnet).forward

    def record(self, *args, **kwargs):
        calls.append((self is model.controlnet, torch.is_grad_enabled(),
                      any(p.requires_grad for p in self.parameters())))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.controlnet), "forward", record)
    args = (model.unet, model.controlnet)
    naive_siamese_losses(*args, progress=0.6, **_batch(model))
    assert calls == [(True, True, True), (True, True, True), (False, False, False), (True, True, True)]

    calls.clear()
    late = _batch(model, ts=(300, 400, 600, 999))
    ref = naive_siamese_losses(*args, progress=0.6, **late)
    assert len(calls) == 3 and float(ref["loss_regularization"]) == 0.0
    ours = siamese_losses(*args, progress=0.6, **late)
    for k in LOSS_KEYS:
        torch.testing.assert_close(ours[k].detach(), ref[k].detach(), rtol=1e-5, atol=1e-7)


def test_consistency_zero_at_progress_zero(tiny_model):
    """At progress 0 the image branch is sg(c_m): eps_image equals eps_mask, so L_consistency = 0."""
    batch = _batch(tiny_model)
    out = siamese_losses(tiny_model.unet, tiny_model.controlnet, progress=0.0, **batch)
    assert float(out["loss_consistency"]) == pytest.approx(0.0, abs=1e-10)
    assert float(out["loss_image"]) == pytest.approx(float(out["loss_mask"]), rel=1e-5)
    assert float(out["loss_regularization"]) == 0.0


def test_regularization_zero_before_one_third(tiny_model):
    batch = _batch(tiny_model)  # contains t = 5 and 150 <= 200
    before = siamese_losses(tiny_model.unet, tiny_model.controlnet, progress=0.33, **batch)
    after = siamese_losses(tiny_model.unet, tiny_model.controlnet, progress=0.34, **batch)
    assert float(before["loss_regularization"]) == 0.0
    assert float(after["loss_regularization"]) > 0.0
    late = _batch(tiny_model, ts=(300, 400, 600, 999))  # no t <= 200: nothing to regularise
    assert float(siamese_losses(tiny_model.unet, tiny_model.controlnet, progress=0.9, **late)
                 ["loss_regularization"]) == 0.0


def test_no_unet_gradient_from_loss_image_and_frozen_parts_get_none(tiny_model):
    model = copy.deepcopy(tiny_model)
    params = trainable_parameters(model, "siamese", unlock_decoder=True)
    batch = _batch(model)
    out = siamese_losses(model.unet, model.controlnet, progress=0.6, **batch)
    out["loss_image"].backward()
    unet_grads = [p.grad for n, p in model.unet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert unet_grads == [], "loss_image must not reach any UNet weight"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.controlnet.parameters())

    # the full loss: frozen parts (UNet encoder, middle block, time embedding, text encoder) get nothing
    for p in params.values():
        p.grad = None
    out = siamese_losses(model.unet, model.controlnet, progress=0.6, **batch)
    out["loss"].backward()
    for name, p in model.unet.named_parameters():
        trainable = name.startswith(UNET_DECODER_PREFIXES)
        assert (p.grad is not None) == trainable, name
    assert all(p.grad is None for p in model.text_encoder.parameters())


def test_locked_decoder_trains_controlnet_only(tiny_model):
    model = copy.deepcopy(tiny_model)
    params = trainable_parameters(model, "siamese", unlock_decoder=False)
    assert all(n.startswith("controlnet.") for n in params)
    out = siamese_losses(model.unet, model.controlnet, progress=0.6, **_batch(model))
    out["loss"].backward()
    assert all(p.grad is None for p in model.unet.parameters())


def test_mask_only_baseline_equals_loss_mask(tiny_model):
    batch = _batch(tiny_model)
    full = siamese_losses(tiny_model.unet, tiny_model.controlnet, progress=0.6, **batch)
    only = controlnet_losses(tiny_model.unet, tiny_model.controlnet, **batch)
    torch.testing.assert_close(only["loss"], full["loss_mask"])
    assert float(only["loss_image"]) == 0.0


# -- the reference checks, it does not copy ---------------------------------------------------------
def test_reference_has_its_own_constants_and_arithmetic():
    """The parity reference owns METHOD.md's constants and its diffusion arithmetic, so a mistake in
    siamese.objective cannot hide in both."""
    assert reference.REG_T_MAX == 200 and reference.REG_START == 1 / 3  # METHOD.md
    for name in ("q_sample", "predict_x0", "mse"):
        assert getattr(reference, name).__module__ == "siamese.reference", name
    assert "objective" not in inspect.getsource(reference).split('"""', 2)[2]  # no import from what it checks


@pytest.mark.parametrize("module", [reference, objective])
def test_q_sample_is_diffusers_add_noise_and_predict_x0_inverts_it(module):
    scheduler = DDPMScheduler.from_config(SCHEDULE)  # METHOD.md: 1000 steps, scaled_linear 0.00085..0.012
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 200, 201, 999])
    alphas_cumprod = scheduler.alphas_cumprod.double()
    x_t = module.q_sample(x0, t, noise, alphas_cumprod)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, noise, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(module.predict_x0(x_t, t, noise, alphas_cumprod), x0, rtol=1e-9, atol=1e-9)
    a, b = x0[:2].float(), noise[:2].float()
    torch.testing.assert_close(module.mse(a, b), torch.stack([((a[i] - b[i]) ** 2).mean() for i in range(2)]))


@pytest.mark.parametrize("losses", [siamese_losses, naive_siamese_losses], ids=["ours", "reference"])
def test_regularisation_gates_exactly_at_t_200_and_progress_one_third(tiny_model, losses):
    """METHOD.md: L_reg for samples with t <= 200 (200 in, 201 out), when progress > 1/3 (exactly 1/3: out)."""
    def reg(ts, progress):
        with torch.no_grad():
            out = losses(tiny_model.unet, tiny_model.controlnet, progress=progress, **_batch(tiny_model, ts=ts))
        return float(out["loss_regularization"])

    assert reg((200, 600, 700, 999), 0.5) > 0  # the t = 200 sample counts
    assert reg((201, 600, 700, 999), 0.5) == 0.0  # the same batch with t = 201: nothing counts
    assert reg((200, 600, 700, 999), 1 / 3) == 0.0  # progress exactly 1/3 (step 1 of 3, 100 of 300): not yet
    assert 1 / 3 == 100 / 300 == 1.0 / 3.0
    assert reg((200, 600, 700, 999), math.nextafter(1 / 3, 1)) > 0

"""The Siamese-Diffusion training objective (METHOD.md), computed efficiently.

Same losses and gradients as the reference code, with less work:
- the mask ControlNet residuals are reused, detached, in the image branch (no deep copies);
- the frozen UNet encoder and middle block run once: both branches share them, only the decoder runs
  twice; the image branch's decoder runs with detached weights (`functional_call`), so its gradient
  reaches the ControlNet through the image residuals and never the UNet;
- mask and image hints go through the DHI and the ControlNet as one batch, and the DHI runs once per
  hint: the regularisation pass reuses the mask embedding;
- the regularisation term runs only on the samples that count (t <= 200, after 1/3 of training) and,
  when a `backward` function is given, after the main graph has been freed;
- it runs under the networks' gradient checkpointing (the Stable Diffusion 1.5 recipe).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .networks import (
    DHIControlNetModel,
    UNetDecoder,
    controlnet_residuals,
    unet_decode,
    unet_encode,
)

__all__ = ["siamese_losses", "controlnet_losses", "base_losses", "q_sample", "predict_x0", "LOSS_KEYS"]

LOSS_KEYS = ("loss_mask", "loss_image", "loss_consistency", "loss_regularization", "loss")
REG_T_MAX = 200
REG_START = 1.0 / 3.0


def _expand(a: Tensor, t: Tensor, x: Tensor) -> Tensor:
    return a.to(x.device)[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0, noise: (B, C, h, w); t: (B,)."""
    ab = _expand(alphas_cumprod, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def predict_x0(x_t: Tensor, t: Tensor, eps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    ab = _expand(alphas_cumprod, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def mse(a: Tensor, b: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per-sample mean squared error over C, H, W: (B, C, h, w) -> (B,).

    With `weight` (B, 1, h, w) in {0, 1} (`overlay.keep_weights`): the mean over the kept latents only, i.e. the
    squared error times the weight, summed, over C times the kept count (0 for a sample with none kept); with all
    weights 1 it is bit-identical to the plain mean."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    err = (a.to(dtype) - b.to(dtype)).pow(2)
    if weight is None:
        return err.flatten(1).mean(1)
    weight = weight.to(dtype)
    return (err * weight).flatten(1).mean(1) / weight.flatten(1).mean(1).clamp_min(1e-12)


def _mask_branch_eps(unet, controlnet, x_t, t, prompt_embeds, mask_hint) -> Tensor:
    down, mid = controlnet_residuals(controlnet, x_t, t, prompt_embeds, controlnet.embed_hint(mask_hint))
    with torch.no_grad():
        enc = unet_encode(unet, x_t, t, prompt_embeds)
    return unet_decode(unet, enc, prompt_embeds, down, mid)


def _decode_frozen(unet, enc, prompt_embeds: Tensor, down: list[Tensor], mid: Tensor) -> Tensor:
    """The UNet decoder with detached weights: gradient reaches the residuals, never the weights.

    Under gradient checkpointing the blocks' own checkpoints would be recomputed in the backward pass
    with the real weights, outside `functional_call`, and torch refuses the mismatch ("Recomputed values
    ... have different metadata"); so the whole call is checkpointed once instead, by a function that
    detaches the weights again when it is recomputed."""
    inner = [m for m in unet.up_blocks.modules() if getattr(m, "gradient_checkpointing", False) is True]

    def run(mid: Tensor, *down: Tensor) -> Tensor:
        frozen = {n: p.detach() for n, p in UNetDecoder(unet).named_parameters()}
        for m in inner:
            m.gradient_checkpointing = False
        try:
            return functional_call(UNetDecoder(unet), frozen, (enc, prompt_embeds, list(down), mid))
        finally:
            for m in inner:
                m.gradient_checkpointing = True

    if inner and torch.is_grad_enabled():
        return checkpoint(run, mid, *down, use_reentrant=False)
    return run(mid, *down)


def siamese_losses(
    unet,
    controlnet: DHIControlNetModel,
    x0: Tensor,
    mask_hint: Tensor,
    image_hint: Tensor,
    prompt_embeds: Tensor,
    t: Tensor,
    noise: Tensor,
    progress: float,
    alphas_cumprod: Tensor,
    backward: Callable[[Tensor], None] | None = None,
    weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """The four Siamese terms, batch means (weight 1 each), and their sum `loss`.

    x0, noise: (B, C, h, w) latents; mask_hint, image_hint: (B, 3, H, W) in [0, 1];
    prompt_embeds: (B, L, D); t: (B,) int64 in [0, 1000); progress = step / max_steps.
    loss_regularization is summed over the samples with t <= 200 and divided by B (0 before 1/3).
    With `backward` (e.g. `accelerator.backward`), gradients are accumulated here, the main graph is
    freed before the regularisation graph is built, and the returned terms are detached.
    `weight` (B, 1, h, w), 0 on the latents of on-screen overlays (`overlay.keep_weights`), multiplies every
    term's squared error before its mean (`mse`); None: all latents count.
    """
    B = x0.shape[0]
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    sel = (t <= REG_T_MAX).nonzero().squeeze(1) if progress > REG_START else t.new_zeros(0)

    # 1. DHI once for both hints, reused by the regularisation pass. With a separate backward per
    #    graph, a leaf collects the gradient of both passes and the DHI backward runs once, at the end.
    hint_emb = controlnet.embed_hint(torch.cat([mask_hint, image_hint]))  # (2B, C0, h, w)
    split = backward is not None and sel.numel() > 0
    hint_in = hint_emb.detach().requires_grad_() if split else hint_emb

    # 2. ControlNet on mask and image hints as one batch (same weights, same x_t, t, prompt)
    down2, mid2 = controlnet_residuals(controlnet, torch.cat([x_t, x_t]), torch.cat([t, t]),
                                       torch.cat([prompt_embeds, prompt_embeds]), hint_in)
    down_m, down_i = zip(*(r.chunk(2) for r in down2))
    mid_m, mid_i = mid2.chunk(2)

    # 3. Frozen UNet encoder + middle block, once for both branches
    with torch.no_grad():
        enc = unet_encode(unet, x_t, t, prompt_embeds)

    # 4. Mask-Diffusion: the decoder with its own (trainable) weights
    eps_mask = unet_decode(unet, enc, prompt_embeds, list(down_m), mid_m)

    # 5. Image-Diffusion: residuals sg(c_m) + progress * c_i, decoder weights detached
    down_img = [m.detach() + progress * i for m, i in zip(down_m, down_i)]
    mid_img = mid_m.detach() + progress * mid_i
    eps_image = _decode_frozen(unet, enc, prompt_embeds, down_img, mid_img)

    loss_mask = mse(eps_mask, noise, weight).mean()
    loss_image = mse(eps_image, noise, weight).mean()
    loss_consistency = mse(eps_mask, eps_image.detach(), weight).mean()
    main = loss_mask + loss_image + loss_consistency
    if backward is not None:
        backward(main)
        loss_mask, loss_image, loss_consistency = loss_mask.detach(), loss_image.detach(), loss_consistency.detach()

    # 6. Regularisation on the samples that count: x_t' = sg(q_sample(x0_hat, t, same noise)), from the
    #    mask embedding of step 1
    loss_reg = torch.zeros((), device=x0.device)
    if sel.numel() > 0:
        with torch.no_grad():
            x0_hat = predict_x0(x_t[sel], t[sel], eps_image[sel].to(x_t.dtype), alphas_cumprod)
            x_t_reg = q_sample(x0_hat, t[sel], noise[sel], alphas_cumprod)
            enc_reg = unet_encode(unet, x_t_reg, t[sel], prompt_embeds[sel])
        down, mid = controlnet_residuals(controlnet, x_t_reg, t[sel], prompt_embeds[sel], hint_in[:B][sel])
        eps_reg = unet_decode(unet, enc_reg, prompt_embeds[sel], down, mid)
        loss_reg = mse(eps_reg, noise[sel], None if weight is None else weight[sel]).sum() / B
        if backward is not None:
            backward(loss_reg)
            loss_reg = loss_reg.detach()
    if split:  # the one DHI backward, with the gradient both passes left on the leaf
        hint_emb.backward(hint_in.grad)

    loss = loss_mask + loss_image + loss_consistency + loss_reg
    return {"loss_mask": loss_mask, "loss_image": loss_image, "loss_consistency": loss_consistency,
            "loss_regularization": loss_reg, "loss": loss}


def controlnet_losses(
    unet, controlnet: DHIControlNetModel, x0: Tensor, mask_hint: Tensor, prompt_embeds: Tensor, t: Tensor,
    noise: Tensor, alphas_cumprod: Tensor, backward: Callable[[Tensor], None] | None = None,
    weight: Tensor | None = None, **_: object,
) -> dict[str, Tensor]:
    """The mask-only ControlNet baseline: loss_mask alone (the paper's comparison at equal budget); `weight` as in
    `siamese_losses`."""
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    loss = mse(_mask_branch_eps(unet, controlnet, x_t, t, prompt_embeds, mask_hint), noise, weight).mean()
    if backward is not None:
        backward(loss)
        loss = loss.detach()
    zero = torch.zeros((), device=x0.device)
    return {"loss_mask": loss, "loss_image": zero, "loss_consistency": zero, "loss_regularization": zero,
            "loss": loss}


def base_losses(
    unet, x0: Tensor, prompt_embeds: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor,
    backward: Callable[[Tensor], None] | None = None, weight: Tensor | None = None, **_: object,
) -> dict[str, Tensor]:
    """Plain text-to-image diffusion loss for pre-training a base UNet from scratch (no ControlNet); `weight` as
    in `siamese_losses`."""
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    loss = mse(unet_decode(unet, unet_encode(unet, x_t, t, prompt_embeds), prompt_embeds), noise, weight).mean()
    if backward is not None:
        backward(loss)
        loss = loss.detach()
    return {"loss": loss}

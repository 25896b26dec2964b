"""A faithful, naive port of the reference code's objective: the baseline for parity tests and benchmarks.

Written the way the authors' code computes it: stock ControlNet and UNet forwards (the DHI runs inside
every ControlNet call, the frozen UNet encoder runs in every UNet call), a deep copy of the ControlNet
and of the whole UNet inside the image branch, and the regularisation term on the whole batch, masked
afterwards. Never used for training: `siamese.objective.siamese_losses` gives the same losses and
gradients with less work.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .objective import REG_START, REG_T_MAX, mse, predict_x0, q_sample

__all__ = ["naive_siamese_losses"]


def _eps(unet, controlnet, x_t, t, prompt_embeds, hint) -> Tensor:
    down, mid = controlnet(x_t, t, prompt_embeds, hint, return_dict=False)
    return unet(x_t, t, prompt_embeds, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample


def naive_siamese_losses(
    unet, controlnet, x0: Tensor, mask_hint: Tensor, image_hint: Tensor, prompt_embeds: Tensor, t: Tensor,
    noise: Tensor, progress: float, alphas_cumprod: Tensor,
) -> dict[str, Tensor]:
    """Same signature and result as `siamese_losses` (without `backward`)."""
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    eps_mask = _eps(unet, controlnet, x_t, t, prompt_embeds, mask_hint)

    # Image branch: copies of both networks; the copy's mask control stands in for sg(c_m)
    controlnet_copy, unet_copy = copy.deepcopy(controlnet), copy.deepcopy(unet)
    down_m, mid_m = controlnet_copy(x_t, t, prompt_embeds, mask_hint, return_dict=False)
    down_i, mid_i = controlnet(x_t, t, prompt_embeds, image_hint, return_dict=False)
    eps_image = unet_copy(
        x_t, t, prompt_embeds,
        down_block_additional_residuals=[m + progress * i for m, i in zip(down_m, down_i)],
        mid_block_additional_residual=mid_m + progress * mid_i,
    ).sample

    loss_mask = mse(eps_mask, noise)
    loss_image = mse(eps_image, noise)
    loss_consistency = mse(eps_mask, eps_image.detach())

    # Regularisation on the whole batch, weighted by [progress > 1/3] * [t <= 200]
    x0_hat = predict_x0(x_t, t, eps_image.detach(), alphas_cumprod)
    x_t_reg = q_sample(x0_hat, t, noise, alphas_cumprod).detach()
    weight = (t <= REG_T_MAX).float() * float(progress > REG_START)
    loss_reg = mse(_eps(unet, controlnet, x_t_reg, t, prompt_embeds, mask_hint), noise) * weight

    terms = {"loss_mask": loss_mask.mean(), "loss_image": loss_image.mean(),
             "loss_consistency": loss_consistency.mean(), "loss_regularization": loss_reg.mean()}
    terms["loss"] = (loss_mask + loss_image + loss_consistency + loss_reg).mean()
    return terms

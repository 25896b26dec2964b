"""A faithful, naive port of the reference code's objective: the baseline for parity tests and benchmarks.

Written the way the authors' code (`cldm/cldm.py`: `apply_model`, `p_losses`) computes it: stock
ControlNet and UNet forwards (the DHI runs inside every ControlNet call, the frozen UNet encoder runs in
every UNet call); inside the image branch a deep copy of the ControlNet, frozen, recomputes the mask
control without a graph, and a deep copy of the whole UNet (its decoder still trainable, so its weight
gradients are computed and thrown away) predicts the noise; the regularisation term runs on the whole
batch, masked afterwards, whenever it counts for any sample (after 1/3 of training, some t <= 200).
Never used for training: `siamese.objective.siamese_losses` gives the same losses and gradients with
less work.

It shares nothing with the module it checks: its constants are METHOD.md's and its diffusion arithmetic is
written here, as the reference code's `ldm/models/diffusion/ddpm.py` writes it (`q_sample` from the
precomputed sqrt(abar) and sqrt(1 - abar) tables, `predict_start_from_noise` from sqrt(1/abar) and
sqrt(1/abar - 1), the loss as `mse_loss(reduction="none")` averaged over C, H, W), so that an error in
`siamese.objective` shows as a parity failure instead of being copied into its own reference.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["naive_siamese_losses", "q_sample", "predict_x0", "mse", "REG_T_MAX", "REG_START"]

# METHOD.md: L_reg "only when progress > 1/3, and only for samples with t <= 200"
REG_T_MAX = 200
REG_START = 1 / 3


def _extract(table: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """ldm's extract_into_tensor: table[t] shaped (B, 1, 1, 1) to broadcast over x."""
    return table.to(x.device).gather(-1, t.to(x.device)).to(x.dtype).reshape(t.shape[0], *((1,) * (x.dim() - 1)))


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (ldm DDPM.q_sample)."""
    sqrt_alphas_cumprod = torch.sqrt(alphas_cumprod)
    sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - alphas_cumprod)
    return _extract(sqrt_alphas_cumprod, t, x0) * x0 + _extract(sqrt_one_minus_alphas_cumprod, t, x0) * noise


def predict_x0(x_t: Tensor, t: Tensor, eps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x0 = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps (ldm DDPM.predict_start_from_noise)."""
    sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / alphas_cumprod)
    sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / alphas_cumprod - 1)
    return _extract(sqrt_recip_alphas_cumprod, t, x_t) * x_t - _extract(sqrt_recipm1_alphas_cumprod, t, x_t) * eps


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error over C, H, W (ldm get_loss with mean=False, then mean over [1, 2, 3]),
    in at least float32."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    return F.mse_loss(pred.to(dtype), target.to(dtype), reduction="none").mean(dim=[1, 2, 3])


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

    # Image branch: copies of both networks; the frozen copy's mask control, computed without a graph,
    # stands in for sg(c_m)
    controlnet_copy, unet_copy = copy.deepcopy(controlnet).requires_grad_(False), copy.deepcopy(unet)
    down_i, mid_i = controlnet(x_t, t, prompt_embeds, image_hint, return_dict=False)
    with torch.no_grad():
        down_m, mid_m = controlnet_copy(x_t, t, prompt_embeds, mask_hint, return_dict=False)
    eps_image = unet_copy(
        x_t, t, prompt_embeds,
        down_block_additional_residuals=[m + progress * i for m, i in zip(down_m, down_i)],
        mid_block_additional_residual=mid_m + progress * mid_i,
    ).sample

    loss_mask = mse(eps_mask, noise)
    loss_image = mse(eps_image, noise)
    loss_consistency = mse(eps_mask, eps_image.detach())

    # Regularisation on the whole batch, weighted by [t <= 200], when it counts for any sample
    weight = (t <= REG_T_MAX).float()
    loss_reg = torch.zeros_like(loss_mask)
    if progress > REG_START and bool(weight.any()):
        x0_hat = predict_x0(x_t, t, eps_image.detach(), alphas_cumprod)
        x_t_reg = q_sample(x0_hat, t, noise, alphas_cumprod).detach()
        loss_reg = mse(_eps(unet, controlnet, x_t_reg, t, prompt_embeds, mask_hint), noise) * weight

    terms = {"loss_mask": loss_mask.mean(), "loss_image": loss_image.mean(),
             "loss_consistency": loss_consistency.mean(), "loss_regularization": loss_reg.mean()}
    terms["loss"] = (loss_mask + loss_image + loss_consistency + loss_reg).mean()
    return terms

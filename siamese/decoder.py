"""A learned decoder for the patch codec's latents, and its training.

The PCA patch codec (`codec.PatchCodec`) decodes linearly, patch by patch: every error in a generated
latent becomes an additive 8x8 basis pattern with steps at the patch borders (block-edge ratio 1.7 on
its own reconstructions, 3.4 on samples; real images 0.99). `PatchDecoder` is diffusers' `DecoderTiny`
(the TAESD decoder: 3x3 convolutions, ReLU residual blocks, nearest-neighbour x2 upsampling) over the
same whitened latents, so its receptive field spans the borders. It is trained on image crops with
noise added to the latents (`train_decoder`), so that it decodes a generator's imperfect latents
cleanly; the PCA encoder stays, and with it the latent space the generator was trained on.

An L1 loss alone makes the decoder regress to the mean where latents are ambiguous (noisy generated
latents especially): fine texture, specular highlights and the black frame come out smooth and grey. With
`adversarial_weight > 0` a PatchGAN critic (MONAI's `PatchDiscriminator`, least-squares loss as in MONAI's
autoencoder recipes) judges the decoded crops against real ones and the decoder minimises L1 plus the
weighted adversarial term (the LDM/TAESD way of training decoders, without the perceptual term, whose
pretrained weights cannot be downloaded here).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .carried.patch_codec import PatchDecoder  # one class: model folders carry the same file for diffusers

logger = logging.getLogger(__name__)

__all__ = ["PatchDecoder", "DecoderTrainConfig", "train_decoder", "config_dict"]


@dataclass
class DecoderTrainConfig:
    """Training of a `PatchDecoder` on random crops (it is convolutional: crops teach it whole images)."""

    steps: int = 4000
    batch_size: int = 8
    crop: int = 96  # pixels, a multiple of the patch size
    lr: float = 1e-3
    weight_decay: float = 1e-4
    latent_noise: float = 0.3  # each sample's latents get N(0, s^2) noise, s ~ U(0, latent_noise)
    width: int = 48
    num_blocks: tuple[int, ...] = (3, 1, 1, 0)
    seed: int = 0
    log_every: int = 100
    adversarial_weight: float = 0.0  # 0: L1 only; else L1 + weight * least-squares PatchGAN loss
    adversarial_start: int = 0  # step from which the critic trains and the adversarial term counts
    critic_lr: float = 2e-4
    critic_channels: int = 32

    def validate(self, patch_size: int) -> None:
        for name in ("steps", "batch_size", "crop", "width", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"decoder {name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.crop % patch_size:
            raise ValueError(f"decoder crop must be a multiple of the patch size {patch_size}, got {self.crop}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"decoder learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.adversarial_weight <= 10 or not math.isfinite(self.adversarial_weight):
            raise ValueError(f"adversarial weight must be between 0 and 10, got {self.adversarial_weight}")
        if not 0 <= self.adversarial_start < self.steps:
            raise ValueError(f"adversarial start must be a step from 0 to {self.steps - 1}, got {self.adversarial_start}")
        if not self.critic_lr > 0 or not math.isfinite(self.critic_lr) or self.critic_channels < 1:
            raise ValueError(f"critic learning rate must be positive and critic channels at least 1, got "
                             f"{self.critic_lr} and {self.critic_channels}")
        if not 0 <= self.latent_noise <= 2:
            raise ValueError(f"latent noise must be between 0 and 2, got {self.latent_noise}")
        if 2 ** (len(self.num_blocks) - 1) != patch_size:
            raise ValueError(f"a decoder with {len(self.num_blocks)} levels upsamples x{2 ** (len(self.num_blocks) - 1)}; "
                             f"the codec's patches are {patch_size} pixels")


def _lr_at(step: int, config: DecoderTrainConfig, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_decoder(
    codec, images: np.ndarray, config: DecoderTrainConfig, device: torch.device | str = "cpu",
    callback: Callable[[dict], None] | None = None, init: PatchDecoder | None = None,
) -> PatchDecoder:
    """Train a decoder for `codec` (a fitted PatchCodec) on images (N, R, R, 3) uint8; returns it in eval mode.

    The whole images (and their mirror images: the PCA basis is not flip-symmetric, so flipped images
    are encoded, not flipped latents) are encoded once; each step takes random crops aligned to the
    patch grid, adds latent noise and minimises the L1 error of the decoded crop (plus the adversarial
    term from `adversarial_start` when `adversarial_weight` > 0). `init`: a decoder to fine-tune (its
    width and levels replace the config's) instead of a fresh one. `callback` gets {"step", "loss", "lr",
    "elapsed_s"} (and "adversarial", "critic" while the critic trains) every `log_every` steps.
    """
    p = codec.config.patch_size
    config.validate(p)
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < config.crop:
        raise ValueError(f"decoder training needs images (N, H, W, 3) of at least {config.crop} pixels, got {images.shape}")
    gen = torch.Generator("cpu").manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if init is None:
            decoder = PatchDecoder(codec.latent_channels, config.width, tuple(config.num_blocks))
        else:
            if init.config.latent_channels != codec.latent_channels or init.upscale != p:
                raise ValueError(f"the decoder to fine-tune decodes {init.config.latent_channels} channels x"
                                 f"{init.upscale}; this codec has {codec.latent_channels} channels of {p}-pixel patches")
            decoder = PatchDecoder.from_config(init.config)
            decoder.load_state_dict(init.state_dict())
            config.width, config.num_blocks = init.config.width, tuple(init.config.num_blocks)
        decoder = decoder.float().to(device)
        critic = _critic(config).to(device) if config.adversarial_weight > 0 else None
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # N, 3, R, R
    x = torch.cat([x, x.flip(-1)])
    with torch.no_grad():
        # encoded where the codec is, kept on the CPU (the crops are drawn there with the CPU generator)
        latents = torch.cat([codec.encode(x[i:i + 64].to(codec.mean.device)).cpu()
                             for i in range(0, len(x), 64)])  # 2N, C, R/p, R/p
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if critic is not None:
        from monai.losses import PatchAdversarialLoss

        adversarial = PatchAdversarialLoss(criterion="least_squares")
        critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=config.critic_lr, betas=(0.5, 0.9))
    c, h, w = config.crop // p, latents.shape[-2], latents.shape[-1]
    decoder.train()
    t0, totals = time.perf_counter(), {"loss": 0.0, "adversarial": 0.0, "critic": 0.0, "critic_steps": 0}
    for step in range(config.steps):
        # 1. random crops on the patch grid
        idx = torch.randint(0, len(latents), (config.batch_size,), generator=gen)
        top = torch.randint(0, h - c + 1, (config.batch_size,), generator=gen)
        left = torch.randint(0, w - c + 1, (config.batch_size,), generator=gen)
        z = torch.stack([latents[i, :, a:a + c, b:b + c] for i, a, b in zip(idx, top, left)])
        target = torch.stack([x[i, :, a * p:(a + c) * p, b * p:(b + c) * p] for i, a, b in zip(idx, top, left)])
        # 2. latent noise: the decoder must cope with a generator's errors, not only with exact codes
        sigma = torch.rand((config.batch_size, 1, 1, 1), generator=gen) * config.latent_noise
        z = z + sigma * torch.randn(z.shape, generator=gen)
        # 3. step
        lr = _lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        target = target.to(device)
        decoded = decoder(z.to(device))
        loss = F.l1_loss(decoded, target)
        gan = critic is not None and step >= config.adversarial_start
        if gan:  # the decoder is scored by the critic as it is now (its parameters get no gradient here)
            critic.requires_grad_(False)
            fooled = adversarial(critic(decoded)[-1], target_is_real=True, for_discriminator=False)
            critic.requires_grad_(True)
            totals["adversarial"] += float(fooled.detach())
            loss = loss + config.adversarial_weight * fooled
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals["loss"] += float(loss.detach())
        if gan:  # 4. the critic: real crops vs the decoded ones (detached)
            critic_loss = 0.5 * (adversarial(critic(target)[-1], target_is_real=True, for_discriminator=True)
                                 + adversarial(critic(decoded.detach())[-1], target_is_real=False, for_discriminator=True))
            critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_optimizer.step()
            totals["critic"] += float(critic_loss.detach())
            totals["critic_steps"] += 1
        # 5. log
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            n = (step % config.log_every) + 1
            event = {"step": step + 1, "loss": totals["loss"] / n, "lr": lr, "elapsed_s": time.perf_counter() - t0}
            if gan:  # averaged over the steps the critic trained in this window
                k = totals["critic_steps"]
                event.update(adversarial=totals["adversarial"] / k, critic=totals["critic"] / k)
            logger.info("decoder step %d loss %.4f", event["step"], event["loss"])
            if callback is not None:
                callback(event)
            totals = dict.fromkeys(totals, 0)
    return decoder.eval().requires_grad_(False)


def _critic(config: DecoderTrainConfig) -> torch.nn.Module:
    """MONAI's PatchGAN critic (3 strided levels, batch norm): real/decoded logits per ~70-pixel patch."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=2, channels=config.critic_channels, in_channels=3, out_channels=1,
                              num_layers_d=3)


def config_dict(config: DecoderTrainConfig) -> dict:
    """The training config as JSON-ready data."""
    d = asdict(config)
    d["num_blocks"] = list(config.num_blocks)
    return d

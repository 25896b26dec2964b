"""The evaluation's measuring instrument: a small segmentation network (a MONAI UNet) trained on real pairs.

`train_segnet` trains one, `predict_masks` segments images with it, `dice_iou` scores masks, and
`segnet_features` reads its encoder's feature statistics (the realism and diversity features).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.layers import Norm
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from torch import nn
from tqdm.auto import tqdm

from .stopping import check_stop

logger = logging.getLogger(__name__)

__all__ = ["build_segnet", "train_segnet", "predict_masks", "dice_iou", "segnet_features", "mean_std"]


def build_segnet(channels: Sequence[int] = (8, 16, 32, 64, 128), seed: int = 0) -> UNet:
    """A small MONAI UNet (3 -> 1 channels, stride 2 per level, one residual unit, batch norm), seeded.

    Batch norm rather than MONAI's default instance norm: instance norm removes each image's feature
    statistics, which the realism features (`segnet_features`) need.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=tuple(channels),
                    strides=(2,) * (len(channels) - 1), num_res_units=1, norm=Norm.BATCH)


def _to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, R, R, 3) -> float (B, 3, R, R) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _seg_lr(step: int, steps: int, lr: float, warmup: int = 20) -> float:
    """Linear warmup, then cosine decay to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_segnet(
    images: np.ndarray,
    masks: np.ndarray,
    steps: int,
    seed: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    channels: Sequence[int] = (8, 16, 32, 64, 128),
    progress_bar: bool = False,
    desc: str = "segmentation",
    device: torch.device | str = "cpu",
    stop: threading.Event | None = None,
) -> UNet:
    """Train a segmentation network on (N, R, R, 3) uint8 images and (N, R, R) {0, 1} masks, on `device`.

    Adam, Dice + BCE loss, random horizontal and vertical flips; batches and flips come from a CPU generator
    seeded with `seed`, which also seeds the weights (the same batches on every device). Returns the network in
    eval mode, on `device`. Setting `stop` raises `Stopped` before the next step.
    """
    net = build_segnet(channels, seed).to(device)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for step in tqdm(range(steps), desc=desc, disable=not progress_bar, leave=False):
        check_stop(stop, f"stopped while training a segmentation network ({desc})")
        # 1. learning rate
        for group in opt.param_groups:
            group["lr"] = _seg_lr(step, steps, lr)
        # 2. batch with the same random flips for image and mask
        idx = torch.randint(len(x_all), (batch_size,), generator=gen)
        x, y = _to_input(x_all[idx]), y_all[idx].float()
        for dim in (2, 3):
            flip = torch.rand(batch_size, generator=gen) < 0.5
            x[flip], y[flip] = x[flip].flip(dim), y[flip].flip(dim)
        x, y = x.to(device), y.to(device)
        # 3. forward, backward, step
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def predict_masks(net: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, R, R, 3) uint8 -> predicted masks (N, R, R) uint8 in {0, 1} (sigmoid > 0.5)."""
    net.eval()
    device = next(net.parameters()).device
    out = [(net(_to_input(torch.from_numpy(images[i:i + batch_size])).to(device)) > 0).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)[:, 0].numpy().astype(np.uint8)


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of (N, R, R) {0, 1} masks (MONAI metrics); two empty masks score 1."""
    p = torch.from_numpy(np.asarray(pred, np.float32))[:, None]
    t = torch.from_numpy(np.asarray(target, np.float32))[:, None]
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p, t)
    return dice[:, 0].numpy().astype(np.float64), iou[:, 0].numpy().astype(np.float64)


# -- features ----------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> dict:
    """Scores of several seeds -> {"mean", "std" (sample standard deviation; 0 for one seed), "per_seed"}."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "per_seed": v.tolist()}


def _encoder_modules(net: UNet) -> list[nn.Module]:
    """The down path of a MONAI UNet: one module per level, the bottom (bottleneck) last."""
    mods, block = [], net.model
    while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        mods.append(block[0])
        block = block[1].submodule
    mods.append(block)
    return mods


@torch.no_grad()
def segnet_features(net: UNet, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, R, R, 3) uint8 -> (N, D) float64: mean and std over positions of every encoder level's output."""
    net.eval()
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in _encoder_modules(net)]
    rows = []
    device = next(net.parameters()).device
    try:
        for i in range(0, len(images), batch_size):
            captured.clear()
            net(_to_input(torch.from_numpy(images[i:i + batch_size])).to(device))
            rows.append(torch.cat([torch.cat([f.mean((2, 3)), f.std((2, 3))], 1) for f in captured], 1).cpu())
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(rows).double().numpy()

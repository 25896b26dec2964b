"""What the benchmarks run on: model presets, seeded inputs, and how the networks are prepared.

Every benchmark builds its model and inputs here, so ours and the baseline always see the same weights,
the same batch and the same memory format. Nothing is downloaded: the presets are built from config
(`siamese.model.build_tiny`, or Stable Diffusion 1.5's UNet config with random weights), the bundled
model is used when it exists, and Stable Diffusion 1.5's weights only when a folder or hub id is named
on the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from siamese.codec import PatchCodec, PatchCodecConfig
from siamese.model import SCHEDULE, SiameseModel, build_tiny, load_model, tiny_text_encoder, tiny_tokenizer
from siamese.model_config import DHI_WIDTHS, SiameseConfig
from siamese.schedule import trainable_parameters

__all__ = [
    "Preset", "PRESETS", "build_preset", "build_sd15_architecture", "default_model", "activate_controlnet",
    "prepare_networks", "TrainBatch", "train_batch", "mask_hints", "reg_timesteps", "count_parameters",
    "parse_dtype",
]

PROMPT = "a colonoscopy image with a polyp"
REG_FRACTION = 0.2  # P(t <= 200) for t ~ U{0..999}: the share of samples the regularisation term sees


@dataclass(frozen=True)
class Preset:
    """A model size for the benchmarks: UNet widths, DHI widths and the hint resolution; `architecture`
    "sd15" takes Stable Diffusion 1.5's UNet instead of the tiny one (the widths are then unused)."""

    name: str
    block_out_channels: tuple[int, ...] = (48, 96, 192)
    dhi_widths: tuple[int, ...] | None = None  # None: the preset's own (build_tiny's)
    norm_num_groups: int = 16
    resolution: int = 256
    architecture: str = "tiny"

    def describe(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


PRESETS = {
    # the app's default model: build_tiny as is (UNet 48-96-192, DHI 4-8-16-32-64)
    "tiny": Preset("tiny"),
    # the orientation figure: a 16M-parameter UNet, with the DHI widths of METHOD.md
    "mid": Preset("mid", (64, 128, 256), dhi_widths=(16, 32, 64, 128, 256)),
    # Stable Diffusion 1.5's UNet (860 M) and its DHI ControlNet, random weights: the reference architecture
    "sd15": Preset("sd15", dhi_widths=DHI_WIDTHS, architecture="sd15"),
    # for the test suite and --smoke: seconds, not minutes; figures meaningless
    "smoke": Preset("smoke", (16, 32, 32), norm_num_groups=8, resolution=64),
}


def parse_dtype(name: str) -> torch.dtype:
    aliases = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
    if name not in aliases:
        raise ValueError(f"dtype must be one of {', '.join(aliases)}, got '{name}'")
    return aliases[name]


def count_parameters(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def build_sd15_architecture(resolution: int = 256, seed: int = 0) -> SiameseModel:
    """Stable Diffusion 1.5's UNet (its published config, `bench.estimate.SD15_UNET`) with random weights,
    for timing on any machine without downloading: a 4-channel linear patch codec stands in for the VAE
    and a one-layer 768-wide text encoder for CLIP ViT-L/14 (both outside the timed training step)."""
    from diffusers import UNet2DConditionModel

    from .estimate import SD15_UNET

    tokenizer = tiny_tokenizer()
    codec = PatchCodec(PatchCodecConfig(channels=SD15_UNET["in_channels"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{**SD15_UNET, "sample_size": resolution // codec.downscale})
        text_encoder = tiny_text_encoder(tokenizer, SD15_UNET["cross_attention_dim"], num_hidden_layers=1)
    config = SiameseConfig(resolution=resolution, codec=codec.to_dict(), dhi_widths=DHI_WIDTHS,
                           name="bench-sd15-architecture")
    return SiameseModel(config, unet, codec, text_encoder, tokenizer, SCHEDULE, source="sd15 architecture")


def build_preset(preset: Preset, resolution: int | None = None, seed: int = 0) -> SiameseModel:
    """The preset's model with its DHI ControlNet, float32 on the CPU, every path active."""
    if preset.architecture == "sd15":
        model = build_sd15_architecture(resolution or preset.resolution, seed)
    else:
        model = build_tiny(resolution or preset.resolution, seed=seed, name=f"bench-{preset.name}",
                           block_out_channels=preset.block_out_channels, norm_num_groups=preset.norm_num_groups)
    if preset.dhi_widths is not None:
        model.config.dhi_widths = tuple(preset.dhi_widths)
    model.add_controlnet(seed)
    activate_controlnet(model, seed + 1)
    return model


def default_model(seed: int = 0) -> tuple[SiameseModel, str]:
    """The app's default model if it has been trained and shipped, else the same architecture built
    from config (same speed, random weights). Returns (model, a sentence saying which)."""
    from siamese import default_model as default_path

    path = Path(default_path())
    if (path / "siamese_config.json").is_file() and (path / "controlnet").is_dir():
        return load_model(path), f"bundled model {path}"
    model = build_preset(PRESETS["tiny"], seed=seed)
    return model, (f"build_tiny + add_controlnet (random weights; {path} not trained yet: same architecture, "
                   "so same speed)")


@torch.no_grad()
def activate_controlnet(model: SiameseModel, seed: int) -> None:
    """Give the zero-initialised layers (DHI output conv, zero convs) small seeded values.

    A fresh ControlNet is a no-op by design; with every path carrying signal, gradients and images
    depend on all of it, so the parity checks mean something. Costs nothing in speed.
    """
    g = torch.Generator().manual_seed(seed)
    for p in model.controlnet.parameters():
        if not p.abs().sum():
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))


def prepare_networks(
    model: SiameseModel,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    compile: bool = False,
    gradient_checkpointing: bool = False,
    train: bool = False,
) -> dict[str, torch.nn.Parameter]:
    """Move the model, set the memory format, optionally compile, and (train=True) set the trainable
    parameters of the siamese objective (ControlNet + UNet decoder). Returns them (empty dict if not
    training). The trainer (siamese/train.py) uses channels_last too."""
    model.to(device=device, dtype=None if dtype == model.dtype else dtype)
    for net in (model.unet, model.controlnet):
        if channels_last:
            net.to(memory_format=torch.channels_last)
        if gradient_checkpointing:
            net.enable_gradient_checkpointing()
        net.train(train)
    if compile:
        compile_blocks(model)
    if not train:
        for m in model.modules().values():
            m.requires_grad_(False)
        return {}
    return trainable_parameters(model, "siamese", unlock_decoder=True)


def compile_blocks(model: SiameseModel) -> None:
    """torch.compile every block in place (`nn.Module.compile`), so that both our split forwards
    (which call the blocks one by one) and the stock forwards of the baselines run compiled code.
    Static shapes: a step calls the same block at several batch sizes (2B, B, the regularised subset),
    and dynamic-shape graphs of these blocks fail in inductor (torch 2.13: "cannot determine truth
    value of Relational"); each size is compiled once instead."""
    for net in (model.unet, model.controlnet):
        for block in [*net.down_blocks, net.mid_block, *getattr(net, "up_blocks", [])]:
            block.compile(dynamic=False)
    model.controlnet.controlnet_cond_embedding.compile(dynamic=False)


def mask_hints(batch: int, resolution: int, seed: int) -> Tensor:
    """(B, 3, R, R) binary mask hints: one ellipse per image, at a seeded place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
    masks = []
    for _ in range(batch):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        ry, rx = rng.uniform(0.1, 0.25, 2)
        masks.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)
    m = torch.from_numpy(np.stack(masks)).float()
    return m[:, None].expand(-1, 3, -1, -1).contiguous()


def reg_timesteps(batch: int, generator: torch.Generator, regularised: int | None = None) -> Tensor:
    """(B,) timesteps of which `regularised` are <= 200, the rest in 201..999. Default round(0.2 B), at
    least one: the expected share under t ~ U{0..999}, so the regularisation term runs on a
    representative subset (for B = 8: 2 samples, where the expectation is 1.6)."""
    k = max(1, round(REG_FRACTION * batch)) if regularised is None else regularised
    if not 0 <= k <= batch:
        raise ValueError(f"regularised samples must be between 0 and the batch size {batch}, got {k}")
    low = torch.randint(0, 201, (k,), generator=generator)
    high = torch.randint(201, 1000, (batch - k,), generator=generator)
    return torch.cat([low, high])[torch.randperm(batch, generator=generator)]


@dataclass
class TrainBatch:
    """The arguments of `siamese_losses` besides the networks and `progress`."""

    x0: Tensor
    mask_hint: Tensor
    image_hint: Tensor
    prompt_embeds: Tensor
    t: Tensor
    noise: Tensor
    alphas_cumprod: Tensor

    def kwargs(self) -> dict[str, Tensor]:
        return dict(vars(self))

    def describe(self) -> dict:
        return {"x0": list(self.x0.shape), "hints": list(self.mask_hint.shape), "t": self.t.tolist(),
                "samples_t_le_200": int((self.t <= 200).sum())}


@torch.no_grad()
def train_batch(model: SiameseModel, batch: int, seed: int = 0, channels_last: bool = True,
                regularised: int | None = None) -> TrainBatch:
    """A seeded batch on the model's device: smooth random images, ellipse masks, one prompt;
    `regularised` samples with t <= 200 (see `reg_timesteps`)."""
    g = torch.Generator().manual_seed(seed)
    R, device, dtype = model.config.resolution, model.device, model.dtype
    coarse = torch.rand(batch, 3, R // 16, R // 16, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(R, R), mode="bilinear", align_corners=False)
    masks = mask_hints(batch, R, seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x0 = model.codec.encode((images * 2 - 1).to(device))
    t = reg_timesteps(batch, g, regularised)
    noise = torch.randn(x0.shape, generator=g)
    return TrainBatch(
        x0=x0.to(device, dtype),
        mask_hint=masks.to(device, dtype).contiguous(memory_format=fmt),
        image_hint=images.to(device, dtype).contiguous(memory_format=fmt),
        prompt_embeds=model.encode_prompt([PROMPT] * batch).to(device, dtype),
        t=t.to(device),
        noise=noise.to(device, dtype),
        alphas_cumprod=model.alphas_cumprod.to(device),
    )

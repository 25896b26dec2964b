"""Networks of Siamese-Diffusion: the DHI hint encoder, the DHI ControlNet, and a split UNet forward.

The UNet and ControlNet are stock diffusers classes (`UNet2DConditionModel`, `ControlNetModel`), so the
tiny CPU preset and Stable Diffusion 1.5 share every line here. What this module adds:

- `DenseHintInput`: the dense hint input (DHI) of METHOD.md, replacing ControlNet's hint block.
- `DHIControlNetModel`: a `ControlNetModel` whose `controlnet_cond_embedding` is a `DenseHintInput`;
  its stock `forward` (hint in, residuals out) still works, e.g. inside diffusers pipelines.
- `controlnet_residuals`: the ControlNet forward from a precomputed hint embedding (the DHI runs once
  per image at sampling time, not once per step).
- `unet_encode` / `unet_decode`: the UNet forward split at the middle block. The encoder is frozen and
  does not depend on the control residuals, so the Siamese objective runs it once for both branches.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import Tensor, nn

__all__ = [
    "DenseHintInput",
    "DHIControlNetModel",
    "UNetEncoding",
    "controlnet_residuals",
    "unet_encode",
    "unet_decode",
    "unet_head",
    "unet_forward",
    "check_supported",
    "UNET_DECODER_PREFIXES",
]

# the parameters of the UNet's decoder (what `unet_decode` runs): what the Siamese stages train besides the
# ControlNet, and all a guide from an earlier stage may change while sharing the model's encoding
UNET_DECODER_PREFIXES = ("up_blocks.", "conv_norm_out.", "conv_out.")


class ResidualBlock(nn.Module):
    """conv3x3 -> SiLU -> conv3x3, plus identity (1x1 conv if channels change), then SiLU."""

    def __init__(self, in_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.conv2(F.silu(self.conv1(x))) + self.skip(x))


class PatchMerging(nn.Module):
    """Swin-style 2x downsampling: 2x2 neighbours concatenated (4C), LayerNorm(4C), Linear(4C -> out).

    `bias`: the Linear has a bias, as in the reference code's `cldm/dhi.py` (models converted from it)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out, H/2, W/2)."""
        x = F.pixel_unshuffle(x, 2).permute(0, 2, 3, 1)  # B, H/2, W/2, 4C
        return self.reduction(self.norm(x)).permute(0, 3, 1, 2)


class DenseHintInput(nn.Module):
    """DHI: a dense hint encoder from a (B, 3, H, W) hint to (B, out_channels, H/8, W/8).

    `widths` = (w0, w1, w2, w3, w4); METHOD.md uses (16, 32, 64, 128, 256). The last conv is zero
    initialised, so a fresh ControlNet starts as a no-op on the UNet. `merge_bias`: PatchMerging with a bias.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], out_channels: int, merge_bias: bool = False) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"DHI needs 5 widths (full res x2, /2, /4, /8), got {tuple(widths)}")
        w0, w1, w2, w3, w4 = widths
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, w0, 3, padding=1), ResidualBlock(w0),
            nn.Conv2d(w0, w1, 3, padding=1), ResidualBlock(w1),
        ]
        for c_in, c_out in ((w1, w2), (w2, w3), (w3, w4)):
            layers += [PatchMerging(c_in, c_out, merge_bias), nn.Conv2d(c_out, c_out, 3, padding=1), ResidualBlock(c_out)]
        self.blocks = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(w4, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, hint: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, out_channels, H/8, W/8)."""
        return self.conv_out(self.blocks(hint))


class DHIControlNetModel(ControlNetModel):
    """A diffusers `ControlNetModel` whose hint block is the DHI.

    `conditioning_embedding_out_channels` holds the five DHI widths. Saved and loaded with the usual
    `save_pretrained` / `from_pretrained`; `from_unet` copies the UNet encoder as in ControlNet.
    `dhi_merge_bias` (in config.json only when true): the DHI's PatchMerging layers have a bias, as in models
    converted from the reference code (`siamese.convert`).
    """

    def __init__(self, dhi_merge_bias: bool = False, **kwargs) -> None:
        kwargs.setdefault("conditioning_embedding_out_channels", (16, 32, 64, 128, 256))
        super().__init__(**kwargs)
        if dhi_merge_bias:
            self.register_to_config(dhi_merge_bias=True)
        self.controlnet_cond_embedding = DenseHintInput(
            self.config.conditioning_channels,
            tuple(self.config.conditioning_embedding_out_channels),
            self.config.block_out_channels[0],
            merge_bias=dhi_merge_bias,
        )

    # diffusers reads a model's config keys from its __init__ signature: expose the parent's, plus dhi_merge_bias.
    __init__.__signature__ = inspect.signature(ControlNetModel.__init__).replace(  # type: ignore[attr-defined]
        parameters=[*inspect.signature(ControlNetModel.__init__).parameters.values(),
                    inspect.Parameter("dhi_merge_bias", inspect.Parameter.KEYWORD_ONLY, default=False)])

    def embed_hint(self, hint: Tensor) -> Tensor:
        """(B, 3, H, W) hint in [0, 1] -> (B, C0, H/8, W/8) hint embedding (depends on the hint only)."""
        return self.controlnet_cond_embedding(hint)


def check_supported(model: nn.Module) -> None:
    """Refuse a UNet with embeddings this module's split forward does not run (class, addition, encoder hidden)."""
    cfg = model.config
    unsupported = {
        k: getattr(cfg, k, None)
        for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "num_class_embeds")
        if getattr(cfg, k, None) is not None
    }
    if unsupported:
        raise ValueError(f"Only SD-1.x style UNets are supported; these options are not: {unsupported}")


def _time_embedding(model: nn.Module, t: Tensor, dtype: torch.dtype) -> Tensor:
    """(B,) integer timesteps -> (B, 4*C0) time embedding (UNet and ControlNet share the recipe)."""
    return model.time_embedding(model.time_proj(t).to(dtype))


def _encoder(model: nn.Module, h: Tensor, emb: Tensor, prompt_embeds: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Down blocks and middle block of a UNet or ControlNet: returns (mid output, skip features)."""
    skips = [h]
    for block in model.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=prompt_embeds)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips.extend(res)
    if getattr(model.mid_block, "has_cross_attention", False):
        h = model.mid_block(h, emb, encoder_hidden_states=prompt_embeds)
    else:
        h = model.mid_block(h, emb)
    return h, skips


def controlnet_residuals(
    controlnet: DHIControlNetModel, x_t: Tensor, t: Tensor, prompt_embeds: Tensor, hint_embedding: Tensor,
    conditioning_scale: float = 1.0,
) -> tuple[list[Tensor], Tensor]:
    """ControlNet forward from a precomputed hint embedding.

    x_t: (B, C, h, w) noisy latents; t: (B,) timesteps; prompt_embeds: (B, L, D);
    hint_embedding: (B, C0, h, w) from `controlnet.embed_hint`. Returns (down residuals, mid residual),
    identical to `controlnet(x_t, t, prompt_embeds, hint, conditioning_scale=...)`: every residual is
    multiplied by `conditioning_scale` (1 in training; a sampling knob for how strongly the mask acts).
    """
    emb = _time_embedding(controlnet, t, x_t.dtype)
    h = controlnet.conv_in(x_t) + hint_embedding
    h, skips = _encoder(controlnet, h, emb, prompt_embeds)
    down = [zero_conv(s) for s, zero_conv in zip(skips, controlnet.controlnet_down_blocks)]
    mid = controlnet.controlnet_mid_block(h)
    if conditioning_scale != 1.0:
        down, mid = [d * conditioning_scale for d in down], mid * conditioning_scale
    return down, mid


@dataclass
class UNetEncoding:
    """What the UNet decoder needs from the encoder: time embedding, mid-block output, skip features."""

    emb: Tensor
    hidden: Tensor
    skips: list[Tensor]

    def select(self, index: Tensor | slice) -> UNetEncoding:
        """The same encoding for a subset of the batch (a slice gives views, no copy)."""
        return UNetEncoding(self.emb[index], self.hidden[index], [s[index] for s in self.skips])


def unet_encode(unet: UNet2DConditionModel, x_t: Tensor, t: Tensor, prompt_embeds: Tensor) -> UNetEncoding:
    """UNet time embedding, conv_in, down blocks and middle block. x_t: (B, C, h, w), t: (B,)."""
    emb = _time_embedding(unet, t, x_t.dtype)
    hidden, skips = _encoder(unet, unet.conv_in(x_t), emb, prompt_embeds)
    return UNetEncoding(emb, hidden, skips)


def unet_decode(
    unet: UNet2DConditionModel,
    enc: UNetEncoding,
    prompt_embeds: Tensor,
    down_residuals: list[Tensor] | None = None,
    mid_residual: Tensor | None = None,
) -> Tensor:
    """UNet decoder with ControlNet residuals added to the skips and the mid output -> (B, C, h, w)."""
    skips = list(enc.skips)
    h = enc.hidden
    if down_residuals is not None:
        skips = [s + r for s, r in zip(skips, down_residuals)]
        h = h + mid_residual
    size_mismatch = any(d % (2**unet.num_upsamplers) for d in skips[0].shape[-2:])
    for i, block in enumerate(unet.up_blocks):
        res = tuple(skips[-len(block.resnets):])
        skips = skips[: -len(block.resnets)]
        upsample_size = skips[-1].shape[2:] if size_mismatch and i < len(unet.up_blocks) - 1 else None
        if getattr(block, "has_cross_attention", False):
            h = block(hidden_states=h, temb=enc.emb, res_hidden_states_tuple=res,
                      encoder_hidden_states=prompt_embeds, upsample_size=upsample_size)
        else:
            h = block(hidden_states=h, temb=enc.emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
    return unet_head(unet, h)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta tensors: the memory estimate)
        return False


def unet_head(unet: UNet2DConditionModel, h: Tensor) -> Tensor:
    """The UNet's output layers (norm, activation, conv_out): (B, C0, h, w) -> noise prediction (B, C, h, w).

    Under autocast they run in the weights' dtype: a prediction rounded to bfloat16 loses what classifier-free
    guidance multiplies (eps_cond - eps_uncond is small beside eps), and sampling with it drifted brighter (issue 27:
    mean brightness +0.019 over 12 images of the bundled model's fast preset; -0.004 with this)."""
    if _autocast_on(h.device.type):
        with torch.autocast(h.device.type, enabled=False):
            return unet_head(unet, h.to(unet.conv_out.weight.dtype))
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def unet_forward(
    unet: UNet2DConditionModel,
    x_t: Tensor,
    t: Tensor,
    prompt_embeds: Tensor,
    down_residuals: list[Tensor] | None = None,
    mid_residual: Tensor | None = None,
) -> Tensor:
    """The whole UNet: noise prediction (B, C, h, w), equal to `unet(...).sample`."""
    return unet_decode(unet, unet_encode(unet, x_t, t, prompt_embeds), prompt_embeds, down_residuals, mid_residual)


class UNetDecoder(nn.Module):
    """`unet_decode` as a module, so `torch.func.functional_call` can run it with detached weights."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, enc: UNetEncoding, prompt_embeds: Tensor, down: list[Tensor], mid: Tensor) -> Tensor:
        return unet_decode(self.unet, enc, prompt_embeds, down, mid)

"""Feature reuse across denoising steps (DeepCache, Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for
Free"), training-free.

A UNet's deep features (everything below its first level: the lower down blocks, the middle block and all up
blocks but the last) change slowly from one denoising step to the next; its shallow ones (conv_in, the first down
block's layers and the last up block, at full latent resolution) carry the detail. A *refresh* step runs the whole
network and keeps the input of the last up block; the *cached* steps after it run the shallow part alone on the
new latents, with the kept deep features:

    refresh:  conv_in -> down_blocks[0] -> ... -> mid -> up_blocks[:-1] -> (keep h) -> up_blocks[-1] -> out
    cached:   conv_in -> down_blocks[0] (its layers, not its downsampler)   -> (h kept) -> up_blocks[-1] -> out

The last up block consumes exactly the skips of conv_in and of the first down block's layers, so the shallow
part is closed. The ControlNet is cut at the same place: a cached step runs its conv_in (with the precomputed hint
embedding) and first-block layers, and only the zero convolutions of those skips.

`decode_deep` followed by `decode_last` runs the same operations, in the same order, as `networks.unet_decode`:
a refresh step's prediction is the plain one, bit for bit.
"""

from __future__ import annotations

from torch import Tensor, nn

from .networks import UNetEncoding, unet_head

__all__ = ["shallow_skips", "encode_shallow", "controlnet_residuals_shallow", "decode_deep", "decode_last"]


def _time_embedding(model: nn.Module, t: Tensor, dtype) -> Tensor:
    """(B,) timesteps -> (B, 4*C0) time embedding, as `networks.unet_encode` computes it."""
    return model.time_embedding(model.time_proj(t).to(dtype))


def shallow_skips(unet: nn.Module) -> int:
    """How many skip features the last up block consumes (conv_in's and the first down block's layers)."""
    return len(unet.up_blocks[-1].resnets)


def _first_level(model: nn.Module, h: Tensor, emb: Tensor, prompt_embeds: Tensor) -> list[Tensor]:
    """conv_in's output `h` through the first down block's layers (resnet, then attention where it has one), without
    its downsampler: the skip features of the first level, [h, layer 1, ..., layer L]."""
    block = model.down_blocks[0]
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    skips = [h]
    for resnet, attention in zip(block.resnets, attentions):
        h = resnet(h, emb)
        if attention is not None:
            h = attention(h, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
        skips.append(h)
    return skips


def encode_shallow(unet: nn.Module, x_t: Tensor, t: Tensor, prompt_embeds: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The UNet's first level only: time embedding, conv_in, the first down block's layers. x_t: (B, C, h, w).
    Returns (time embedding (B, 4*C0), the first `shallow_skips(unet)` skip features), equal to those of
    `networks.unet_encode`."""
    emb = _time_embedding(unet, t, x_t.dtype)
    skips = _first_level(unet, unet.conv_in(x_t), emb, prompt_embeds)
    if len(skips) != shallow_skips(unet):
        raise ValueError(f"the UNet's first level has {len(skips)} skips but its last up block takes "
                         f"{shallow_skips(unet)}: feature reuse needs a standard UNet")
    return emb, skips


def controlnet_residuals_shallow(controlnet: nn.Module, x_t: Tensor, t: Tensor, prompt_embeds: Tensor,
                                 hint_embedding: Tensor, conditioning_scale: float = 1.0) -> list[Tensor]:
    """The ControlNet's residuals for the first level's skips (the first `shallow_skips` of
    `networks.controlnet_residuals`' down residuals, equal to them), from its first level only."""
    emb = _time_embedding(controlnet, t, x_t.dtype)
    skips = _first_level(controlnet, controlnet.conv_in(x_t) + hint_embedding, emb, prompt_embeds)
    down = [zero_conv(s) for s, zero_conv in zip(skips, controlnet.controlnet_down_blocks)]
    return [d * conditioning_scale for d in down] if conditioning_scale != 1.0 else down


def _size_mismatch(unet: nn.Module, skips: list[Tensor]) -> bool:
    return any(d % (2**unet.num_upsamplers) for d in skips[0].shape[-2:])


def decode_deep(unet: nn.Module, enc: UNetEncoding, prompt_embeds: Tensor, down_residuals: list[Tensor] | None = None,
                mid_residual: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """`networks.unet_decode` up to the last up block: returns (its input h (B, C0', h, w), the first level's skips
    with the residuals added), for `decode_last`."""
    skips = list(enc.skips)
    h = enc.hidden
    if down_residuals is not None:
        skips = [s + r for s, r in zip(skips, down_residuals)]
        h = h + mid_residual
    size_mismatch = _size_mismatch(unet, skips)
    for i, block in enumerate(unet.up_blocks[:-1]):
        res = tuple(skips[-len(block.resnets):])
        skips = skips[: -len(block.resnets)]
        upsample_size = skips[-1].shape[2:] if size_mismatch else None
        if getattr(block, "has_cross_attention", False):
            h = block(hidden_states=h, temb=enc.emb, res_hidden_states_tuple=res,
                      encoder_hidden_states=prompt_embeds, upsample_size=upsample_size)
        else:
            h = block(hidden_states=h, temb=enc.emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
    return h, skips


def decode_last(unet: nn.Module, h: Tensor, skips: list[Tensor], emb: Tensor, prompt_embeds: Tensor) -> Tensor:
    """The last up block and the output layers: (the input of the last up block, the first level's skips with any
    residuals added, time embedding) -> noise prediction (B, C, h, w)."""
    block = unet.up_blocks[-1]
    res = tuple(skips[-len(block.resnets):])
    if getattr(block, "has_cross_attention", False):
        h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=prompt_embeds,
                  upsample_size=None)
    else:
        h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=None)
    return unet_head(unet, h)

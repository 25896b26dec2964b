"""The reference implementation's checkpoint layout, for conversion tests: written independently of siamese.convert.

- `ReferenceFeatureExtractor`: the DHI exactly as the authors' `cldm/dhi.py` builds it (module names, the
  PatchMerging concat order, its Linear with a bias), in plain torch.
- `to_reference_state_dict(model)`: a SiameseModel's weights under the ControlLDM names a merged reference
  checkpoint (`tool_merge_control.py`) has: `control_model.*` (input_hint_block.0 = FeatureExtractor,
  input_hint_block.1 = its zero conv, zero_convs.N.0, middle_block_out.0), `model.diffusion_model.*`,
  `first_stage_model.*` (VAE attention q/k/v/proj_out as 1x1 convs), `cond_stage_model.transformer.text_model.*`
  (transformers 4 naming, with the position_ids buffer old checkpoints carry), plus LatentDiffusion's schedule
  buffers. The inverse of diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py` mapping.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


# -- cldm/dhi.py, transcribed ----------------------------------------------------------------------
class ReferenceResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.silu = nn.SiLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.residual = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.silu(self.conv2(self.silu(self.conv1(x))) + self.residual(x))


class ReferencePatchMerging(nn.Module):
    def __init__(self, patch_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * patch_dim)
        self.reduction = nn.Linear(4 * patch_dim, 2 * patch_dim)

    def forward(self, x: Tensor) -> Tensor:  # B, H, W, C
        B, H, W, C = x.shape
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C))).view(B, H // 2, W // 2, 2 * C)


class ReferenceFeatureExtractor(nn.Module):
    def __init__(self, hint_channels: int = 3) -> None:
        super().__init__()
        self.initial_conv = nn.Conv2d(hint_channels, 16, 3, 1, 1)
        self.layer1 = ReferenceResidualBlock(16, 16)
        self.conv_before_res2 = nn.Conv2d(16, 32, 3, 1, 1)
        self.layer2 = ReferenceResidualBlock(32, 32)
        self.patch_merge1 = ReferencePatchMerging(32)
        self.conv_before_res3 = nn.Conv2d(64, 64, 3, 1, 1)
        self.layer3 = ReferenceResidualBlock(64, 64)
        self.patch_merge2 = ReferencePatchMerging(64)
        self.conv_before_res4 = nn.Conv2d(128, 128, 3, 1, 1)
        self.layer4 = ReferenceResidualBlock(128, 128)
        self.patch_merge3 = ReferencePatchMerging(128)
        self.conv_before_res5 = nn.Conv2d(256, 256, 3, 1, 1)
        self.layer5 = ReferenceResidualBlock(256, 256)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.conv_before_res2(self.layer1(self.initial_conv(x))))
        for merge, conv, layer in ((self.patch_merge1, self.conv_before_res3, self.layer3),
                                   (self.patch_merge2, self.conv_before_res4, self.layer4),
                                   (self.patch_merge3, self.conv_before_res5, self.layer5)):
            x = layer(conv(merge(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)))
        return x


def reference_hint_block(model_channels: int, seed: int = 0) -> nn.Sequential:
    """ControlNet.input_hint_block: FeatureExtractor, then a conv 256 -> model_channels (random here, not zero)."""
    torch.manual_seed(seed)
    block = nn.Sequential(ReferenceFeatureExtractor(3), nn.Conv2d(256, model_channels, 3, padding=1))
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return block


# -- the inverse of diffusers' LDM -> diffusers key mapping ------------------------------------------
RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
          ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def _unet_prefixes(config, decoder: bool) -> list[tuple[str, str]]:
    """(LDM prefix, diffusers prefix) pairs of a UNet (or, decoder False, a ControlNet's encoder)."""
    L, n = config.layers_per_block, len(config.block_out_channels)
    pairs = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("input_blocks.0.0.", "conv_in."), ("middle_block.1.", "mid_block.attentions.0."),
             ("middle_block.0.", "mid_block.resnets.0."), ("middle_block.2.", "mid_block.resnets.1.")]
    for i in range(n):
        for j in range(L):
            pairs.append((f"input_blocks.{(L + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if config.down_block_types[i].startswith("CrossAttn"):
                pairs.append((f"input_blocks.{(L + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            pairs.append((f"input_blocks.{(L + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        if decoder:
            attn = config.up_block_types[i].startswith("CrossAttn")
            for j in range(L + 1):
                pairs.append((f"output_blocks.{(L + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
                if attn:
                    pairs.append((f"output_blocks.{(L + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
            if i < n - 1:
                pairs.append((f"output_blocks.{(L + 1) * i + L}.{2 if attn else 1}.", f"up_blocks.{i}.upsamplers.0."))
    if decoder:
        pairs += [("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
    return pairs


def _rename(state: dict[str, Tensor], pairs: list[tuple[str, str]], prefix: str) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        match = [(ldm, hf) for ldm, hf in pairs if key.startswith(hf)]
        assert len(match) == 1, f"{key}: {match}"
        ldm, hf = match[0]
        rest = key[len(hf):]
        if ".resnets." in hf:
            for ldm_part, hf_part in RESNET:
                rest = rest.replace(hf_part, ldm_part)
        out[prefix + ldm + rest] = value.detach().clone()
    return out


def unet_to_reference(unet) -> dict[str, Tensor]:
    return _rename(unet.state_dict(), _unet_prefixes(unet.config, decoder=True), "model.diffusion_model.")


def controlnet_to_reference(controlnet) -> dict[str, Tensor]:
    """control_model.*: the encoder, zero convs and mid zero conv; the DHI in the reference's FeatureExtractor
    naming (our PatchMerging feature order -> the reference's, a zero bias where ours has none)."""
    state = controlnet.state_dict()
    dhi = {k: v for k, v in state.items() if k.startswith("controlnet_cond_embedding.")}
    zero = {k: v for k, v in state.items() if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block."))}
    rest = {k: v for k, v in state.items() if k not in dhi and k not in zero}
    out = _rename(rest, _unet_prefixes(controlnet.config, decoder=False), "control_model.")
    for k, v in zero.items():
        if k.startswith("controlnet_mid_block."):
            out["control_model.middle_block_out.0." + k.split(".")[-1]] = v.clone()
        else:
            _, i, p = k.split(".")
            out[f"control_model.zero_convs.{i}.0.{p}"] = v.clone()
    names = ["initial_conv", "layer1", "conv_before_res2", "layer2", "patch_merge1", "conv_before_res3", "layer3",
             "patch_merge2", "conv_before_res4", "layer4", "patch_merge3", "conv_before_res5", "layer5"]
    for k, v in dhi.items():
        parts = k.split(".")
        if parts[1] == "conv_out":
            out["control_model.input_hint_block.1." + parts[2]] = v.clone()
            continue
        name, rest_key = names[int(parts[2])], ".".join(parts[3:])
        if name.startswith("patch_merge"):
            channels = v.shape[-1] // 4
            # ours: feature c * 4 + 2 * row + col; the reference: (row + 2 * col) * C + c
            order = torch.arange(4 * channels).view(channels, 2, 2).permute(2, 1, 0).reshape(-1)
            v = v[..., order]
        out[f"control_model.input_hint_block.0.{name}.{rest_key}"] = v.clone()
    for k in list(out):
        if k.endswith("reduction.weight") and k.replace("weight", "bias") not in out:
            out[k.replace("weight", "bias")] = torch.zeros(out[k].shape[0])
    return out


def vae_to_reference(vae) -> dict[str, Tensor]:
    n, L = len(vae.config.block_out_channels), vae.config.layers_per_block
    pairs = [("encoder.conv_in.", "encoder.conv_in."), ("encoder.conv_out.", "encoder.conv_out."),
             ("encoder.norm_out.", "encoder.conv_norm_out."), ("decoder.conv_in.", "decoder.conv_in."),
             ("decoder.conv_out.", "decoder.conv_out."), ("decoder.norm_out.", "decoder.conv_norm_out."),
             ("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        pairs.append((f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0."))
        for i in range(2):
            pairs.append((f"{part}.mid.block_{i + 1}.", f"{part}.mid_block.resnets.{i}."))
    for i in range(n):
        for j in range(L):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        for j in range(L + 1):
            pairs.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            pairs.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
            pairs.append((f"decoder.up.{n - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
    attn = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for key, value in vae.state_dict().items():
        (ldm, hf), = [(a, b) for a, b in pairs if key.startswith(b)]
        rest = key[len(hf):].replace("conv_shortcut", "nin_shortcut")
        if ".attentions." in hf:
            (ldm_part, hf_part), = [(a, b) for a, b in attn if rest.startswith(b)]
            rest = ldm_part + rest[len(hf_part):]
            if value.ndim == 2:  # LDM's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + ldm + rest] = value.detach().clone()
    return out


def text_encoder_to_reference(text_encoder) -> dict[str, Tensor]:
    out = {}
    for key, value in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = value.detach().clone()
    n = text_encoder.config.max_position_embeddings
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n)[None]
    return out


def schedule_buffers() -> dict[str, Tensor]:
    """LatentDiffusion's registered schedule buffers (in every reference checkpoint; the converter ignores them)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(), "logvar": torch.zeros(1000),
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt().float()}


def to_reference_state_dict(model, control_only: bool = False) -> dict[str, Tensor]:
    """A SiameseModel as the reference's merged ControlLDM state dict (control_only: control_model.* alone)."""
    out = controlnet_to_reference(model.controlnet)
    if not control_only:
        out.update(unet_to_reference(model.unet))
        out.update(vae_to_reference(model.codec.vae))
        out.update(text_encoder_to_reference(model.text_encoder))
        out.update(schedule_buffers())
    return out

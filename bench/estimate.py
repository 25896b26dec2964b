"""Training memory of the Stable Diffusion 1.5 preset, estimated from parameter counts and shapes.

An estimate, not a measurement: no GPU was available where this was written. The networks are built on
the `meta` device (no memory, no download) from SD1.5's published UNet config; the ControlNet is made from
the UNet encoder with the DHI of METHOD.md, as `add_controlnet` does. Parameter-derived terms are exact;
activations are estimated by running the Siamese forward on meta tensors and summing what gradient
checkpointing keeps: the output of every checkpointed unit (ResNet block, transformer) of the passes
that build a graph (ControlNet on 2B, UNet decoder twice on B), the UNet encoder features the decoder
reads, and every layer output of the DHI (not checkpointed), doubled for the tensors saved inside
each layer. Autocast caches fp16 copies of the weights that require grad (the trainable ones) for the
step; frozen weights are cast per use. Not included: the CUDA context and allocator fragmentation
(budget 1-2 GiB). `bench/sd15.py` measures the real figure on a GPU.
"""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["sd15_training_memory", "SD15_UNET"]

GIB = 2**30
# Stable Diffusion 1.5's unet/config.json (the fields that set the parameter count)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
TEXT_ENCODER_PARAMS = 123_060_480  # CLIP ViT-L/14 text model
VAE_PARAMS = 83_653_863  # SD1.5 AutoencoderKL


def _meta_networks():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from siamese.model_config import DHI_WIDTHS
    from siamese.networks import DHIControlNetModel

    with init_empty_weights():
        unet = UNet2DConditionModel(**SD15_UNET)
        controlnet = DHIControlNetModel.from_unet(unet, conditioning_embedding_out_channels=DHI_WIDTHS)
    return unet.to(torch.float16), controlnet.to(torch.float16)  # meta tensors: no memory either way


def _activation_bytes(unet, controlnet, batch: int, resolution: int, bytes_per_value: int) -> dict[str, int]:
    """What a checkpointed Siamese step keeps for backward (see module docstring), from meta shapes."""
    from siamese.networks import controlnet_residuals, unet_decode, unet_encode

    kept = {"checkpointed_units": 0, "dhi": 0}
    units = ("ResnetBlock2D", "Transformer2DModel", "Downsample2D", "Upsample2D")
    dhi_layers = ("Conv2d", "ResidualBlock", "PatchMerging")
    counting = {"on": False}

    def hook(kind):
        def count(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if counting["on"] and torch.is_tensor(out):
                kept[kind] += out.numel() * bytes_per_value
        return count

    handles = []
    for net in (unet, controlnet):
        for m in net.modules():
            if type(m).__name__ in units:
                handles.append(m.register_forward_hook(hook("checkpointed_units")))
    for m in controlnet.controlnet_cond_embedding.modules():
        if type(m).__name__ in dhi_layers:
            handles.append(m.register_forward_hook(hook("dhi")))
    h = resolution // 8
    meta = dict(device="meta", dtype=torch.float16)
    x = torch.empty(batch, 4, h, h, **meta)
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    text = torch.empty(batch, 77, 768, **meta)
    hints = torch.empty(2 * batch, 3, resolution, resolution, **meta)
    with torch.no_grad():
        enc = unet_encode(unet, x, t, text)  # frozen: keeps nothing but its outputs
        kept["encoder_features"] = sum(s.numel() for s in enc.skips) * bytes_per_value
        counting["on"] = True
        emb = controlnet.embed_hint(hints)
        down, mid = controlnet_residuals(controlnet, torch.cat([x, x]), torch.cat([t, t]),
                                         torch.cat([text, text]), emb)
        for _ in range(2):  # mask branch and image branch
            unet_decode(unet, enc, text, [d[:batch] for d in down], mid[:batch])
    for handle in handles:
        handle.remove()
    kept["dhi"] *= 2
    return kept


@lru_cache(maxsize=4)
def _estimate(batch: int, resolution: int) -> dict:
    from siamese.networks import UNET_DECODER_PREFIXES

    unet, controlnet = _meta_networks()
    n_unet = sum(p.numel() for p in unet.parameters())
    n_controlnet = sum(p.numel() for p in controlnet.parameters())
    n_decoder = sum(p.numel() for n, p in unet.named_parameters() if n.startswith(UNET_DECODER_PREFIXES))
    n_trainable = n_controlnet + n_decoder
    n_all = n_unet + n_controlnet + TEXT_ENCODER_PARAMS + VAE_PARAMS
    activations = _activation_bytes(unet, controlnet, batch, resolution, bytes_per_value=2)
    act = sum(activations.values())
    terms = {
        "weights_fp32": 4 * n_all,
        "gradients_fp32": 4 * n_trainable,
        "autocast_fp16_copies_of_trainable_weights": 2 * n_trainable,  # cached for the step; frozen ones are transient
        "activations_checkpointed_fp16": act,
    }
    adam = {"adamw_8bit": 2 * n_trainable, "adamw_fp32": 8 * n_trainable}
    totals = {k: round((sum(terms.values()) + v) / GIB, 2) for k, v in adam.items()}
    return {
        "note": "estimate from parameter counts and meta-tensor shapes, not a measurement",
        "batch": batch, "resolution": resolution, "mixed_precision": "fp16 autocast, fp32 master weights",
        "gradient_checkpointing": True,
        "parameters": {"unet": n_unet, "controlnet": n_controlnet, "dhi": sum(
            p.numel() for p in controlnet.controlnet_cond_embedding.parameters()), "unet_decoder": n_decoder,
            "trainable": n_trainable, "text_encoder": TEXT_ENCODER_PARAMS, "vae": VAE_PARAMS},
        "gib": {**{k: round(v / GIB, 2) for k, v in terms.items()},
                **{f"optimizer_state_{k}": round(v / GIB, 2) for k, v in adam.items()},
                "activation_parts": {k: round(v / GIB, 3) for k, v in activations.items()}},
        "total_gib": totals,
    }


def sd15_training_memory(batch: int = 4, resolution: int = 384) -> dict:
    """Estimated peak GPU memory of one Siamese training step of SD1.5 (see module docstring)."""
    try:
        return _estimate(batch, resolution)
    except Exception as e:  # the estimate must never break the benchmark run
        return {"error": f"{type(e).__name__}: {e}"}

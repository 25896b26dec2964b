"""A tiny random Stable Diffusion 1.5 folder, built offline, in exactly the diffusers layout.

    model_index.json  vae/ (AutoencoderKL)  unet/ (UNet2DConditionModel)  text_encoder/ (CLIPTextModel)
    tokenizer/ (CLIPTokenizer)  scheduler/ (PNDMScheduler)

SD 1.5's configs at tiny widths: the same block types (three CrossAttnDownBlock2D and a DownBlock2D, and back),
two layers per block, 8 attention heads, 32 norm groups, a 4-channel latent at 1/8 of the image with scaling
factor 0.18215, a quick-GELU CLIP text encoder whose width is the UNet's cross-attention width, and SD 1.5's
scheduler config. Written by `StableDiffusionPipeline.save_pretrained`, as the hub folder is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from siamese.model import tiny_tokenizer

# stable-diffusion-v1-5/scheduler/scheduler_config.json
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
                      trained_betas=None)
TEXT_WIDTH = 64  # one 64-wide head, as CLIP ViT-L/14's heads are 64 wide (12 of them at 768)
UNET_WIDTHS = (32, 64, 64, 64)  # SD 1.5: (320, 640, 1280, 1280)
VAE_WIDTHS = (32, 32, 64, 64)  # SD 1.5: (128, 256, 512, 512)


def tiny_sd15_components(seed: int = 0) -> dict:
    """vae, unet, text_encoder, tokenizer, scheduler of a tiny SD 1.5, random weights from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=UNET_WIDTHS,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=VAE_WIDTHS,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32, sample_size=64, scaling_factor=0.18215,
        )
        tokenizer = tiny_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_hidden_layers=2,
            num_attention_heads=TEXT_WIDTH // 64, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    return dict(vae=vae, unet=unet, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                scheduler=PNDMScheduler.from_config(SD15_SCHEDULER))


def write_tiny_sd15(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random SD 1.5 in the diffusers layout (model_index.json + component folders) in `folder`."""
    pipe = StableDiffusionPipeline(**tiny_sd15_components(seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)

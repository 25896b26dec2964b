"""Siamese-Diffusion's mask-to-image pipeline for diffusers.

Carried in every model folder written by the `siamese` package (as pipeline_siamese.py, named in its
model_index.json), so that

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    image = pipe(image=mask, prompt="...", num_inference_steps=20, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(0)).images[0]

works without the `siamese` package: this file imports only torch, numpy, PIL, diffusers and transformers.
It samples the Mask-Diffusion branch exactly as `siamese.sampling.sample` does (same images, pixel for pixel,
for the same mask, seed and settings): text-only classifier-free guidance (the unconditional branch keeps the
mask), the ControlNet's residuals multiplied by `controlnet_conditioning_scale` (default: the model's
recommended value), one generator per image. The scheduler is DDIM; set `pipe.scheduler` to another diffusers
scheduler `from_config(pipe.scheduler.config)` as with any pipeline.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer

MaskInput = PIL.Image.Image | np.ndarray | Tensor


def binarize_mask(mask: MaskInput) -> np.ndarray:
    """One mask -> (H, W) uint8 in {0, 1}, by the package's one mask rule (`siamese.data.binarize_mask` is this
    function): lesion where the gray
    level is above half the full scale (8-bit: > 127, 16-bit: > 32767, floating point: > 0.5, a 0/1 label mask:
    the 1s), and where more than half opaque when there is an alpha channel. A tensor may be (H, W), (C, H, W)
    or (H, W, C)."""
    if isinstance(mask, PIL.Image.Image):
        arr = np.asarray(mask)
    elif isinstance(mask, Tensor):
        arr = mask.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[2] not in (1, 2, 3, 4):
            arr = arr.transpose(1, 2, 0)
    else:
        arr = np.asarray(mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"a mask must be an array of numbers (or an image), got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] in (1, 3):
        color, alpha = arr, None
    elif arr.ndim == 3 and arr.shape[2] in (2, 4):
        color, alpha = arr[..., :-1], arr[..., -1]
    elif arr.ndim == 2:
        color, alpha = arr, None
    else:
        raise ValueError(f"a mask must be a 2-D grayscale or colour image, got an array of shape {arr.shape}")
    scale = _full_scale(color)
    if color.ndim == 3:  # ITU-R 601 luma
        color = color[..., 0] if color.shape[2] == 1 else color.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    binary = color > scale / 2
    if alpha is not None:
        binary &= alpha > _full_scale(alpha) / 2
    return binary.astype(np.uint8)


def _full_scale(values: np.ndarray) -> float:
    if np.issubdtype(values.dtype, np.integer) and values.size and values.min() >= 0 and values.max() <= 1:
        return 1.0
    if np.issubdtype(values.dtype, np.floating):
        return 1.0
    return 65535.0 if values.dtype == np.uint16 else 255.0


def prepare_mask(mask: MaskInput, resolution: int) -> Tensor:
    """One mask -> (1, R, R) float {0, 1} at the model resolution (nearest neighbour, as OpenCV's INTER_NEAREST);
    an empty or an all-white mask is refused."""
    binary = torch.from_numpy(binarize_mask(mask))
    if tuple(binary.shape) != (resolution, resolution):
        binary = F.interpolate(binary[None, None].float(), size=(resolution, resolution), mode="nearest")[0, 0]
        binary = binary.to(torch.uint8)
    fraction = float(binary.float().mean())
    if fraction == 0.0:
        raise ValueError("the mask is empty: it needs a white (foreground) region where the lesion goes")
    if fraction == 1.0:
        raise ValueError("the mask is all white: it needs some background (black) too")
    return binary.float()[None]


class SiameseDiffusionPipeline(DiffusionPipeline):
    """Masks -> images with a Siamese-Diffusion model: UNet, DHI ControlNet, CLIP text encoder and tokenizer,
    a scheduler, and a latent codec: `codec` (the tiny preset's patch codec) or `vae` (Stable Diffusion's).

    Config: `resolution` (pixels, square), `prompt` (the model's default prompt), `control_scale` (its
    recommended ControlNet conditioning scale) and `control_end` (its recommended fraction of the steps the
    ControlNet acts in), copied from the folder's siamese_config.json when it is saved. It samples without
    autoguidance: a folder's guide/ (and its recommended `autoguidance`) is used by the `siamese` package's sampler
    and app; this pipeline's images are theirs at autoguidance 1.
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _optional_components = ["controlnet", "codec", "vae"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler,
        controlnet: ControlNetModel | None = None,
        codec: nn.Module | None = None,
        vae: AutoencoderKL | None = None,
        resolution: int = 512,
        prompt: str = "",
        control_scale: float = 1.0,
        control_end: float = 1.0,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, controlnet=controlnet, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler, codec=codec, vae=vae)
        self.register_to_config(resolution=resolution, prompt=prompt, control_scale=control_scale,
                                control_end=control_end)

    @property
    def latent_downscale(self) -> int:
        if self.codec is not None:
            return self.codec.downscale
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _encode(self, prompt: str, device: torch.device) -> Tensor:
        """One prompt -> (1, L, D) embeddings (each distinct prompt alone, as `SiameseModel.encode_prompt`)."""
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state.to(device, self.unet.dtype)

    def _decode(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) float32 in [0, 1]."""
        if self.codec is not None:
            images = self.codec.decode(latents)
        else:
            images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        image: MaskInput | list[MaskInput],
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        controlnet_conditioning_scale: float | None = None,
        control_guidance_end: float | None = None,
        eta: float = 0.0,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Images from masks. `image`: one mask or a list (PIL images, arrays or tensors; any size, resized to
        the model resolution); `prompt`: one, or one per mask (None: the model's prompt); `generator`: one, or
        one per image (image i of `siamese.generate(seed=s)` is `generator=torch.Generator().manual_seed(s + i)`);
        `controlnet_conditioning_scale` and `control_guidance_end` (the fraction of the steps, from the first, in
        which the ControlNet runs) None: the model's recommended values. `output_type`: "pil", "np" (B, H, W, 3)
        float in [0, 1] or "pt" (B, 3, H, W). `callback(step, steps)` after every denoising step."""
        # 1. inputs
        if self.controlnet is None:
            raise ValueError("this model has no ControlNet (a base model): train it with the siamese objective first")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if not 1 <= int(num_inference_steps) <= 1000:
            raise ValueError(f"num_inference_steps must be between 1 and 1000, got {num_inference_steps}")
        masks = list(image) if isinstance(image, (list, tuple)) else [image]
        if not masks:
            raise ValueError("image: expected a mask (or a list of masks), got an empty list")
        prompts = [self.config.prompt if prompt is None else prompt] * len(masks) if not isinstance(prompt, list) \
            else list(prompt)
        if len(prompts) != len(masks) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt: expected text, or a list of {len(masks)} texts (one per mask), got {prompt!r}")
        n = int(num_images_per_prompt)
        if n < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        if isinstance(generator, list) and len(generator) != len(masks) * n:
            raise ValueError(f"generator: expected one generator, or a list of {len(masks) * n} (one per image), "
                             f"got a list of {len(generator)}")
        scale = self.config.control_scale if controlnet_conditioning_scale is None else controlnet_conditioning_scale
        end = self.config.control_end if control_guidance_end is None else float(control_guidance_end)
        if not 0.0 < end <= 1.0:
            raise ValueError(f"control_guidance_end must be a fraction of the steps, above 0 and at most 1, got {end}")
        device, dtype = self._execution_device, self.unet.dtype
        resolution = int(self.config.resolution)
        hint = torch.cat([prepare_mask(m, resolution) for m in masks]).repeat_interleave(n, 0)  # B, R, R
        hint = hint[:, None].expand(-1, 3, -1, -1).to(device, dtype)
        prompts = [p for p in prompts for _ in range(n)]
        B = len(prompts)
        guided = guidance_scale > 1.0

        # 2. prompt embeddings (B or 2B, L, D): [unconditional "", conditional]
        cache = {p: self._encode(p, device) for p in dict.fromkeys(prompts + ([""] if guided else []))}
        prompt_embeds = torch.cat([cache[p] for p in prompts])
        if guided:
            prompt_embeds = torch.cat([cache[""].expand(B, -1, -1), prompt_embeds])
            hint = torch.cat([hint, hint])

        # 3. timesteps and starting noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        s = resolution // self.latent_downscale
        latents = randn_tensor((B, self.unet.config.in_channels, s, s), generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        ddim = "eta" in inspect.signature(self.scheduler.step).parameters  # DDIM

        # 4. denoising loop
        timesteps = self.scheduler.timesteps
        controlled = max(1, math.floor(end * len(timesteps) + 1e-6))  # as diffusers' control_guidance_end, at least 1
        for i, t in enumerate(self.progress_bar(timesteps)):
            x = torch.cat([latents, latents]) if guided else latents
            x = self.scheduler.scale_model_input(x, t)
            down, mid = None, None
            if i < controlled:
                down, mid = self.controlnet(x, t, encoder_hidden_states=prompt_embeds, controlnet_cond=hint,
                                            conditioning_scale=scale, return_dict=False)
            eps = self.unet(x, t, encoder_hidden_states=prompt_embeds, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid, return_dict=False)[0]
            if guided:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            kwargs = {}
            if ddim:
                kwargs["eta"] = eta
                if eta > 0:
                    kwargs["variance_noise"] = randn_tensor(latents.shape, generator=generator, device=device,
                                                            dtype=dtype)
            latents = self.scheduler.step(eps, t, latents, **kwargs).prev_sample
            if callback is not None:
                callback(i + 1, len(timesteps))

        # 5. decode
        images = self._decode(latents)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out = images
        else:
            out = images.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                out = [PIL.Image.fromarray(a) for a in (out * 255).round().astype(np.uint8)]
        return ImagePipelineOutput(images=out) if return_dict else (out,)

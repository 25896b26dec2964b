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


def resize_mask(mask: MaskInput, resolution: int) -> Tensor:
    """One mask -> (R, R) uint8 {0, 1} at the model resolution (nearest neighbour, as OpenCV's INTER_NEAREST)."""
    binary = torch.from_numpy(binarize_mask(mask))
    if tuple(binary.shape) != (resolution, resolution):
        binary = F.interpolate(binary[None, None].float(), size=(resolution, resolution), mode="nearest")[0, 0]
        binary = binary.to(torch.uint8)
    return binary


def prepare_mask(mask: MaskInput, resolution: int) -> Tensor:
    """One mask -> (1, R, R) float {0, 1} at the model resolution (nearest neighbour, as OpenCV's INTER_NEAREST);
    an empty or an all-white mask is refused."""
    binary = resize_mask(mask, resolution)
    fraction = float(binary.float().mean())
    if fraction == 0.0:
        raise ValueError("the mask is empty: it needs a white (foreground) region where the lesion goes")
    if fraction == 1.0:
        raise ValueError("the mask is all white: it needs some background (black) too")
    return binary.float()[None]


# -- inpainting: a lesion painted into a real frame (`siamese.inpaint` uses these very functions) ----------------------
def frame_rgb(image: PIL.Image.Image | np.ndarray) -> np.ndarray:
    """One frame (a PIL image or an (H, W, 3) / (H, W, 4) / (H, W) uint8 array) -> (H, W, 3) uint8 RGB at its own
    size."""
    if not isinstance(image, PIL.Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
            raise ValueError(f"a frame must be an (H, W, 3) uint8 RGB image, got {arr.dtype} {arr.shape}")
        if arr.ndim == 3 and arr.shape[2] == 3:
            return np.ascontiguousarray(arr)
        image = PIL.Image.fromarray(arr)
    return np.array(image.convert("RGB"), np.uint8)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 -> (H, W, 3) uint8 at `size` (H, W): PIL's box filter when it shrinks both sides (as area
    interpolation), bicubic otherwise; the image itself when it has that size."""
    if image.shape[:2] == tuple(size):
        return image
    H, W = size
    shrink = image.shape[0] >= H and image.shape[1] >= W
    kind = PIL.Image.Resampling.BOX if shrink else PIL.Image.Resampling.BICUBIC
    out = PIL.Image.fromarray(image).resize((W, H), kind)
    return np.array(out, np.uint8)


def prepare_frame_image(image: PIL.Image.Image | np.ndarray, resolution: int) -> np.ndarray:
    """One frame (a PIL image or an (H, W, 3) / (H, W) uint8 array) -> (R, R, 3) uint8 RGB at the model resolution
    (`resize_image`)."""
    return resize_image(frame_rgb(image), (resolution, resolution))


def lesion_region(mask: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """A lesion mask (R, R) {0, 1} -> (region, alpha): region (R, R) bool, the pixels within `margin` pixels of the
    lesion (Euclidean); alpha (R, R) float32, the pixel composite's weight of the generated image: 1 on the lesion,
    falling smoothly (smoothstep of the distance) to 0 at `margin` pixels, and exactly 0 outside the region."""
    lesion = np.asarray(mask).astype(bool)
    m = int(margin)
    if m <= 0:
        return lesion.copy(), lesion.astype(np.float32)
    d2 = lesion_distance2(lesion, m)
    region = d2 <= m * m
    s = np.clip(1.0 - np.sqrt(d2.astype(np.float32)) / np.float32(m), 0.0, 1.0).astype(np.float32)
    alpha = s * s * (np.float32(3.0) - np.float32(2.0) * s)
    alpha[~region] = 0.0
    return region, alpha.astype(np.float32)


def lesion_distance2(lesion: np.ndarray, margin: int) -> np.ndarray:
    """A lesion (R, R) bool -> (R, R) int32, each pixel's squared Euclidean distance to the lesion where it is at most
    margin^2 (0 on the lesion), margin^2 + 1 beyond."""
    m = int(margin)
    H, W = lesion.shape
    d2 = np.full((H, W), m * m + 1, np.int32)
    padded = np.pad(lesion, m)
    offsets = sorted((dy * dy + dx * dx, dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)
                     if dy * dy + dx * dx <= m * m)
    for r2, dy, dx in offsets:  # nearest first: a pixel keeps the first (smallest) distance that reaches it
        hit = padded[m + dy:m + dy + H, m + dx:m + dx + W] & (d2 > m * m)
        d2[hit] = r2
    return d2


MAX_GAIN = 2.0  # colour harmonisation's largest contrast change (either way)
MIN_RING = 16  # fewer ring pixels than this: no harmonisation


def harmonize_colors(frame: np.ndarray, generated: np.ndarray, mask: np.ndarray, margin: int) -> np.ndarray:
    """Colour harmonisation of a generated image to its frame, before the pixel composite: frame and generated
    (R, R, 3) uint8, the lesion mask (R, R) {0, 1} -> (R, R, 3) uint8, the generated image with, per channel, the
    affine map that gives it the frame's mean and standard deviation in the ring of the region from half the margin
    to the margin from the lesion (the gain kept within [1 / MAX_GAIN, MAX_GAIN]); the generated image itself when
    the margin is below 2 or the ring has fewer than MIN_RING pixels."""
    m = int(margin)
    if m < 2:
        return generated
    d2 = lesion_distance2(np.asarray(mask).astype(bool), m)
    ring = (d2 >= (m * m + 3) // 4) & (d2 <= m * m)
    if int(ring.sum()) < MIN_RING:
        return generated
    f, g = frame[ring].astype(np.float64), generated[ring].astype(np.float64)
    gain = np.clip((f.std(axis=0) + 1.0) / (g.std(axis=0) + 1.0), 1.0 / MAX_GAIN, MAX_GAIN)
    shift = f.mean(axis=0) - gain * g.mean(axis=0)
    out = generated.astype(np.float32) * gain.astype(np.float32) + shift.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def latent_region(region: np.ndarray, downscale: int) -> np.ndarray:
    """A pixel region (R, R) bool -> (R/d, R/d) float32 in [0, 1] at latent resolution: 1 where the model generates
    (every latent cell at least half in the region), soft-edged over about one cell beyond it (the cells' region
    fraction, blurred by a [1, 2, 1] / 4 kernel, doubled), 0 where the frame's latents are kept."""
    R = region.shape[0]
    h = R // downscale
    frac = np.asarray(region, np.float32).reshape(h, downscale, h, downscale).mean(axis=(1, 3), dtype=np.float32)
    k = np.array([0.25, 0.5, 0.25], np.float32)
    soft = np.pad(frac, 1, mode="edge")
    soft = k[0] * soft[:-2] + k[1] * soft[1:-1] + k[2] * soft[2:]
    soft = k[0] * soft[:, :-2] + k[1] * soft[:, 1:-1] + k[2] * soft[:, 2:]
    soft = np.clip(np.float32(2.0) * soft, 0.0, 1.0).astype(np.float32)
    soft[frac >= 0.5] = 1.0
    return soft


def composite(frame: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The pixel composite: frame and generated image (R, R, 3) uint8, alpha (R, R) float32 (`lesion_region`) ->
    (R, R, 3) uint8: round(frame + alpha (generated - frame)), and the frame's own pixels wherever alpha is 0."""
    f = frame.astype(np.float32)
    a = alpha[..., None]
    out = np.clip(np.rint(f + a * (generated.astype(np.float32) - f)), 0, 255).astype(np.uint8)
    return np.where(a > 0, out, frame)


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A composite's weight (R, R) float32 -> (H, W) float32 at `size` (PIL's bilinear filter, clipped to [0, 1]):
    exactly 0 wherever every pixel it is made from is 0; the weight itself when it has that size."""
    if alpha.shape == tuple(size):
        return alpha
    out = PIL.Image.fromarray(np.ascontiguousarray(alpha, np.float32)).resize(
        (size[1], size[0]), PIL.Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)


def paste(full: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The pixel composite at a frame's own size: the frame (H, W, 3) uint8, a generated image (R, R, 3) uint8 and
    its weight alpha (R, R) float32 at the model resolution -> (H, W, 3) uint8: both brought to (H, W)
    (`resize_image`, `resize_alpha`) and composited (`composite`): every pixel where the weight is 0 is the frame's."""
    size = full.shape[:2]
    return composite(full, resize_image(generated, size), resize_alpha(alpha, size))


def frame_latents(images: np.ndarray, device: torch.device, dtype: torch.dtype, codec: nn.Module | None = None,
                  vae: AutoencoderKL | None = None) -> Tensor:
    """Frames (B, R, R, 3) uint8 -> their latents (B, C, h, w): the patch codec's encoding, or the VAE's posterior
    mean times its scaling factor (deterministic: a frame has one latent)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device, torch.float32) / 127.5 - 1.0
    if codec is not None:
        return codec.encode(x.to(dtype)).to(dtype)
    return (vae.encode(x.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor).to(dtype)


def blend_known(latents: Tensor, frame: Tensor, noise: Tensor, region: Tensor, scheduler, t: Tensor | None) -> Tensor:
    """Blended sampling's step: the latents outside `region` (B, 1, h, w) replaced by the frame's latents noised to
    timestep `t` with the same `noise` (`scheduler.add_noise`), or the frame's clean latents when `t` is None (after
    the last step)."""
    known = frame if t is None else scheduler.add_noise(frame, noise, t.reshape(1).expand(frame.shape[0]))
    return region * latents + (1 - region) * known


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8, as every output of the package is written."""
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


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
        latents = latents.contiguous(memory_format=torch.channels_last)  # as `siamese.sampling` decodes (faster)
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
        frame: PIL.Image.Image | np.ndarray | list | None = None,
        frame_mask: MaskInput | list | None = None,
        margin: int = 12,
        clear_frame_lesions: bool = False,
        harmonize: bool = False,
    ) -> ImagePipelineOutput | tuple:
        """Images from masks. `image`: one mask or a list (PIL images, arrays or tensors; any size, resized to
        the model resolution); `prompt`: one, or one per mask (None: the model's prompt); `generator`: one, or
        one per image (image i of `siamese.generate(seed=s)` is `generator=torch.Generator().manual_seed(s + i)`);
        `controlnet_conditioning_scale` and `control_guidance_end` (the fraction of the steps, from the first, in
        which the ControlNet runs) None: the model's recommended values. `output_type`: "pil", "np" (B, H, W, 3)
        float in [0, 1] or "pt" (B, 3, H, W). `callback(step, steps)` after every denoising step.

        Inpainting: with `frame` (an image, or one per mask) each lesion is painted into the frame, as
        `siamese.generate(frame=...)` does (the same pixels): blended sampling at the model resolution inside the
        lesion's region (the mask dilated by `margin` pixels), the generated image's colours harmonised to the
        frame's around the region (with `harmonize`, off by default: `harmonize_colors`), and the region pasted into the
        frame at the frame's own size with a feathered edge (`paste`): every pixel outside it is the frame's. Each image has its
        frame's size (with "np" or "pt" and frames of different sizes, `images` is a list). `frame_mask` (the
        frame's lesion, one or one per mask) with `clear_frame_lesions`: the frame's lesion is painted away first
        (the same blended sampling inside its region, with an empty mask as control). The pair's mask is then the
        new lesion alone; otherwise the union of the frame's mask and the new one (`siamese.generate` returns it)."""
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
        binaries = [prepare_mask(m, resolution) for m in masks]
        hint = torch.cat(binaries).repeat_interleave(n, 0)  # B, R, R
        hint = hint[:, None].expand(-1, 3, -1, -1).to(device, dtype)
        prompts = [p for p in prompts for _ in range(n)]
        B = len(prompts)
        frames = self._frames(frame, frame_mask, len(masks), resolution, margin) if frame is not None else None
        if frames is None and frame_mask is not None:
            raise ValueError("frame_mask: the mask of a frame, given without a frame")
        if not isinstance(harmonize, bool):
            raise ValueError(f"harmonize must be True or False, got {harmonize!r}")

        # 2. prompt embeddings (B or 2B, L, D): [unconditional "", conditional]
        guided = guidance_scale > 1.0
        cache = {p: self._encode(p, device) for p in dict.fromkeys(prompts + ([""] if guided else []))}
        prompt_embeds = torch.cat([cache[p] for p in prompts])
        if guided:
            prompt_embeds = torch.cat([cache[""].expand(B, -1, -1), prompt_embeds])
        run = dict(steps=num_inference_steps, guidance_scale=guidance_scale, scale=scale, end=end, eta=eta,
                   callback=callback)

        if frames is None:  # 3. whole images
            images = self._denoise(hint, prompt_embeds, generator, **run)
        else:  # 3. inpainting: the frames' lesions painted away (clear_frame_lesions), then the new lesions in
            images_u8 = np.stack([frames[k // n][0] for k in range(B)])
            fulls = [frames[k // n][2].copy() for k in range(B)]  # each frame at its own size
            originals = [g.get_state() for g in generator] if isinstance(generator, list) else \
                (generator.get_state() if generator is not None else None)
            if clear_frame_lesions:
                sub = [k for k in range(B) if frames[k // n][1] is not None and frames[k // n][1].any()]
                if sub:
                    regions = [lesion_region(frames[k // n][1], margin) for k in sub]
                    gens = _generators(generator, originals, sub)
                    zero = torch.zeros_like(hint[sub])
                    pe = torch.cat([prompt_embeds[:B][sub], prompt_embeds[B:][sub]]) if guided else prompt_embeds[sub]
                    out = self._denoise(zero, pe, gens, frame_images=images_u8[sub],
                                        regions=[latent_region(r, self.latent_downscale) for r, _ in regions], **run)
                    for j, k in enumerate(sub):
                        img = to_uint8(out[j:j + 1])[0]
                        if harmonize:
                            img = harmonize_colors(images_u8[k], img, frames[k // n][1], margin)
                        images_u8[k] = composite(images_u8[k], img, regions[j][1])
                        fulls[k] = paste(fulls[k], img, regions[j][1])
            news = [lesion_region(b[0].numpy().astype(np.uint8), margin) for b in binaries]
            gens = _generators(generator, originals, list(range(B)))
            out = self._denoise(hint, prompt_embeds, gens, frame_images=images_u8,
                                regions=[latent_region(news[k // n][0], self.latent_downscale) for k in range(B)],
                                **run)
            painted = []
            for k in range(B):
                img = to_uint8(out[k:k + 1])[0]
                if harmonize:
                    img = harmonize_colors(images_u8[k], img, binaries[k // n][0].numpy(), margin)
                painted.append(paste(fulls[k], img, news[k // n][1]))
            self.maybe_free_model_hooks()
            if output_type == "pil":
                out = [PIL.Image.fromarray(a) for a in painted]
            else:
                out = [torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in painted]
                if output_type == "np":
                    out = [a.permute(1, 2, 0).numpy() for a in out]
                if len({tuple(a.shape) for a in out}) == 1:
                    out = torch.stack(out) if output_type == "pt" else np.stack(out)
            return ImagePipelineOutput(images=out) if return_dict else (out,)

        # 4. output
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out = images
        else:
            out = images.permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "pil":
                out = [PIL.Image.fromarray(a) for a in (out * 255).round().astype(np.uint8)]
        return ImagePipelineOutput(images=out) if return_dict else (out,)

    def _frames(self, frame, frame_mask, count: int, resolution: int, margin: int) -> list:
        """(frame (R, R, 3) uint8, its lesion (R, R) uint8 {0, 1} or None, the frame at its own size (H, W, 3) uint8)
        per mask."""
        frames = list(frame) if isinstance(frame, (list, tuple)) else [frame] * count
        lesions = list(frame_mask) if isinstance(frame_mask, (list, tuple)) else [frame_mask] * len(frames)
        if len(frames) != count or len(lesions) != count:
            raise ValueError(f"frame and frame_mask: expected one, or a list of {count} (one per mask)")
        if isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= margin <= resolution // 4:
            raise ValueError(f"margin must be a whole number of pixels from 0 to {resolution // 4}, got {margin!r}")
        out = []
        for f, m in zip(frames, lesions):
            full = frame_rgb(f)
            out.append((resize_image(full, (resolution, resolution)),
                        None if m is None else resize_mask(m, resolution).numpy(), full))
        return out

    def _denoise(self, hint: Tensor, prompt_embeds: Tensor, generator, steps: int, guidance_scale: float,
                 scale: float, end: float, eta: float, callback, frame_images: np.ndarray | None = None,
                 regions: list[np.ndarray] | None = None) -> Tensor:
        """The sampling loop on hints (B, 3, R, R) -> images (B, 3, R, R) float32 in [0, 1]; with `frame_images`
        (B, R, R, 3) uint8 and latent `regions` (one (h, w) per image), blended sampling (`blend_known`)."""
        device, dtype = self._execution_device, self.unet.dtype
        B = hint.shape[0]
        guided = guidance_scale > 1.0
        hint = hint.contiguous(memory_format=torch.channels_last)  # as `siamese.sampling` runs the DHI: same numbers
        if guided:
            hint = torch.cat([hint, hint])
        self.scheduler.set_timesteps(steps, device=device)
        s = int(self.config.resolution) // self.latent_downscale
        noise = randn_tensor((B, self.unet.config.in_channels, s, s), generator=generator, device=device, dtype=dtype)
        latents = noise * self.scheduler.init_noise_sigma
        timesteps = self.scheduler.timesteps
        known = region = None
        if frame_images is not None:
            known = frame_latents(frame_images, device, dtype, codec=self.codec,
                                  vae=self.vae if self.codec is None else None)
            region = torch.from_numpy(np.stack(regions))[:, None].to(device, dtype)
            latents = blend_known(latents, known, noise, region, self.scheduler, timesteps[0])
        ddim = "eta" in inspect.signature(self.scheduler.step).parameters  # DDIM
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
            if known is not None:
                latents = blend_known(latents, known, noise, region, self.scheduler,
                                      timesteps[i + 1] if i + 1 < len(timesteps) else None)
            if callback is not None:
                callback(i + 1, len(timesteps))
        return self._decode(latents)


def _generators(generator, states, indices: list[int]):
    """Fresh generators at the caller's generators' first states, for the images `indices` (each pass of an
    inpainting draws the same noise as the first would)."""
    if generator is None:
        return None
    if not isinstance(generator, list):
        g = torch.Generator(generator.device)
        g.set_state(states)
        return g
    out = []
    for k in indices:
        g = torch.Generator(generator[k].device)
        g.set_state(states[k])
        out.append(g)
    return out

"""diffusers-native model folders: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) loads every
folder save_pretrained writes and makes generate's images pixel for pixel; StableDiffusionControlNetPipeline
takes our DHI ControlNet for a Stable Diffusion 1.5-shaped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from PIL import Image

from conftest import fake_hub_cache, wake_controlnet
from siamese.codec import VAECodec
from siamese.model import SCHEDULE, SiameseModel, load_model, tiny_text_encoder, tiny_tokenizer
from siamese.model_config import SiameseConfig
from siamese.pipeline import MODEL_INDEX, carried_files, model_index
from siamese.sampling import SamplingParams, generate

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "checkpoints" / "siamese-kvasir-tiny"


def _mask(size: int = 80) -> np.ndarray:
    """An off-size mask (resized to the model resolution by both paths)."""
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4:size * 5 // 8, size // 3:size * 3 // 4] = 255
    return mask


def _pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def _max_diff(items, images) -> int:
    return max(int(np.abs(item.image.astype(np.int16) - _pixels(img)).max()) for item, img in zip(items, images))


def _load(folder: Path) -> DiffusionPipeline:
    return DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32)


def test_saved_folder_is_a_diffusers_pipeline_with_generates_pixels(tiny_model_dir):
    index = json.loads((tiny_model_dir / MODEL_INDEX).read_text())
    assert index["_class_name"] == ["pipeline_siamese", "SiameseDiffusionPipeline"]
    assert index["controlnet"] == ["siamese_networks", "DHIControlNetModel"] and index["vae"] == [None, None]
    assert index["resolution"] == 64 and index["prompt"] == "a test image"
    for rel, source in carried_files(True, "patch").items():
        assert (tiny_model_dir / rel).read_bytes() == source.read_bytes(), rel
    pipe = _load(tiny_model_dir)
    # the model as siamese loads it, from the same folder
    model = load_model(tiny_model_dir)
    assert type(pipe).__name__ == "SiameseDiffusionPipeline" and type(pipe.controlnet).__name__ == "DHIControlNetModel"
    items = generate(model, _mask(), 2, seed=11, params=SamplingParams(steps=3, guidance_scale=3.0))
    out = pipe(image=Image.fromarray(_mask()), prompt="a test image", num_inference_steps=3, guidance_scale=3.0,
               generator=[torch.Generator().manual_seed(11 + i) for i in range(2)], num_images_per_prompt=2)
    assert all(isinstance(img, Image.Image) and img.size == (64, 64) for img in out.images)
    assert _max_diff(items, out.images) == 0
    # the model's prompt and another scheduler, as a diffusers user swaps it in
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                             solver_order=2)
    items = generate(model, _mask(), 1, seed=3,
                     params=SamplingParams(steps=3, guidance_scale=5.0, scheduler="dpm++", control_scale=1.5))
    out = pipe(image=_mask(), num_inference_steps=3, guidance_scale=5.0, controlnet_conditioning_scale=1.5,
               generator=torch.Generator().manual_seed(3))
    assert _max_diff(items, out.images) == 0
    # the ControlNet in the first half of the steps only: diffusers' control_guidance_end, the same pixels
    items = generate(model, _mask(), 1, seed=3, params=SamplingParams(steps=4, guidance_scale=5.0, scheduler="dpm++",
                                                                      control_scale=2.0, control_end=0.5))
    out = pipe(image=_mask(), num_inference_steps=4, guidance_scale=5.0, controlnet_conditioning_scale=2.0,
               control_guidance_end=0.5, generator=torch.Generator().manual_seed(3))
    assert _max_diff(items, out.images) == 0
    with pytest.raises(ValueError, match="control_guidance_end must be a fraction of the steps"):
        pipe(image=_mask(), num_inference_steps=2, control_guidance_end=0.0)
    other = pipe(image=_mask(), num_inference_steps=3, guidance_scale=5.0, controlnet_conditioning_scale=0.0,
                 generator=torch.Generator().manual_seed(3))
    assert _max_diff(items, other.images) > 0  # the mask acts: the comparison can fail


def test_pipeline_refuses_bad_masks_and_arguments(tiny_model_dir):
    pipe = _load(tiny_model_dir)
    with pytest.raises(ValueError, match="empty"):
        pipe(image=np.zeros((64, 64), np.uint8), num_inference_steps=1)
    with pytest.raises(ValueError, match="one per image"):
        pipe(image=_mask(), num_inference_steps=1, num_images_per_prompt=2, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="output_type"):
        pipe(image=_mask(), num_inference_steps=1, output_type="latent")


def test_base_model_folder_loads_and_says_it_cannot_sample(tiny_model, tmp_path):
    base = SiameseModel(tiny_model.config, tiny_model.unet, tiny_model.codec, tiny_model.text_encoder,
                        tiny_model.tokenizer, tiny_model.scheduler_config)
    folder = base.save_pretrained(tmp_path / "base")
    assert json.loads((folder / MODEL_INDEX).read_text())["controlnet"] == [None, None]
    assert not (folder / "controlnet").exists()
    with pytest.raises(ValueError, match="no ControlNet"):
        _load(folder)(image=_mask(), num_inference_steps=1)


def test_bundled_model_is_a_diffusers_pipeline():
    """The bundled model (fp16, learned decoder, its recommended mask strength) through diffusers: generate's pixels."""
    for rel, source in carried_files(True, "patch").items():  # the code it carries is this package's
        assert (BUNDLED / rel).read_bytes() == source.read_bytes(), (
            f"{BUNDLED / rel} differs from {source}: refresh it with siamese.pipeline.write_diffusers_files("
            "folder, SiameseConfig.load(folder), True) (it writes no weights)")
    pipe = _load(BUNDLED)
    model = load_model(BUNDLED)
    index = json.loads((BUNDLED / MODEL_INDEX).read_text())  # the folder's settings, as it would be written now
    assert {**index, "_diffusers_version": None} == {**model_index(model.config, True), "_diffusers_version": None}
    assert (pipe.config.control_scale, pipe.config.control_end) == (model.config.control_scale,
                                                                     model.config.control_end)
    assert (model.guide is not None) == (model.config.autoguidance != 1)  # the pipeline samples without the guide
    items = generate(model, _mask(300), 1, seed=7, params=SamplingParams(steps=4, guidance_scale=3.0,
                                                                           autoguidance=1.0))
    out = pipe(image=_mask(300), num_inference_steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(7))
    assert _max_diff(items, out.images) == 0


@pytest.fixture(scope="module")
def sd15_model():
    return build_sd15_tiny()


def build_sd15_tiny() -> SiameseModel:
    """A Stable Diffusion 1.5-shaped model at tiny widths (AutoencoderKL with 4 levels: 8x; SD 1.5's UNet blocks),
    with a DHI ControlNet that acts (its zero layers made non-zero)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=1, norm_num_groups=4, sample_size=64)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 16, 32, 32),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8)
        text_encoder = tiny_text_encoder(tokenizer)
    config = SiameseConfig(resolution=64, prompt="a test image", dhi_widths=(4, 8, 16, 32, 64), name="sd15-tiny")
    model = SiameseModel(config, unet, VAECodec(vae), text_encoder, tokenizer, SCHEDULE)
    model.add_controlnet(0)
    return wake_controlnet(model, 0.05)


def test_sd15_folder_through_our_pipeline_and_stable_diffusion_controlnet_pipeline(sd15_model, tmp_path):
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTokenizer

    from siamese.networks import DHIControlNetModel

    folder = sd15_model.save_pretrained(tmp_path / "sd15")
    index = json.loads((folder / MODEL_INDEX).read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["codec"] == [None, None]
    assert not (folder / "codec").exists()
    params = SamplingParams(steps=3, guidance_scale=3.0)
    items = generate(load_model(folder), _mask(64), 1, seed=5, params=params)
    assert items[0].image.std() > 0

    ours = _load(folder)(image=_mask(64), num_inference_steps=3, guidance_scale=3.0,
                         generator=torch.Generator().manual_seed(5))
    assert _max_diff(items, ours.images) == 0

    controlnet = DHIControlNetModel.from_pretrained(folder / "controlnet")
    pipe = StableDiffusionControlNetPipeline(
        vae=AutoencoderKL.from_pretrained(folder / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet"), controlnet=controlnet,
        scheduler=DDIMScheduler.from_pretrained(folder / "scheduler"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    out = pipe(prompt="a test image", image=Image.fromarray(_mask(64)), num_inference_steps=3, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(5), height=64, width=64)
    assert _max_diff(items, out.images) <= 1  # diffusers' own loop rounds one level apart on some thread counts
    # from our loaded pipeline (StableDiffusionControlNetPipeline.from_pretrained(folder) would load ours: the index
    # names it)
    base = _load(folder)
    pipe = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=base.controlnet, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    out = pipe(prompt="a test image", image=Image.fromarray(_mask(64)), num_inference_steps=3, guidance_scale=3.0,
               generator=torch.Generator().manual_seed(5), height=64, width=64)
    assert _max_diff(items, out.images) <= 1  # diffusers' own loop rounds one level apart on some thread counts


def _frame(h: int = 80, w: int = 96) -> np.ndarray:
    """A textured frame (off-size: resized to the model resolution by both paths) and its own lesion."""
    frame = np.clip(np.random.default_rng(3).normal([150, 70, 60], 25, (h, w, 3)), 0, 255).astype(np.uint8)
    own = np.zeros((h, w), np.uint8)
    own[h // 8:h * 3 // 8, w * 5 // 8:w * 7 // 8] = 255
    return frame, own


def test_pipeline_paints_into_frames_with_generates_pixels(tiny_model_dir, sd15_model, tmp_path):
    """Inpainting (frame=, frame_mask=, margin=, clear_frame_lesions=) through diffusers: generate's pixels, for the
    patch codec and a VAE, with DDIM and DPM-Solver++, the frame's lesion kept or cleared first, a frame without
    its mask."""
    frame, own = _frame()
    mask = np.zeros((80, 96), np.uint8)
    mask[40:60, 15:45] = 255  # the frame's aspect
    pipe, model = _load(tiny_model_dir), load_model(tiny_model_dir)
    params = SamplingParams(steps=3, guidance_scale=3.0)
    items = generate(model, mask, 2, seed=11, params=params, frame=frame, frame_mask=own, margin=6)
    out = pipe(image=mask, num_inference_steps=3, guidance_scale=3.0, frame=Image.fromarray(frame),
               frame_mask=own, margin=6, generator=[torch.Generator().manual_seed(11 + i) for i in range(2)],
               num_images_per_prompt=2)
    assert _max_diff(items, out.images) == 0
    assert all(img.size == (96, 80) for img in out.images)  # at the frame's own size (the model's: 64 x 64)
    assert np.abs(np.asarray(out.images[0]).astype(int) - frame).max() > 0  # painted: the comparison can fail
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++",
                                                             solver_order=2)
    for kwargs in (dict(frame_mask=own, clear_frame_lesions=True), dict(frame_mask=None)):
        items = generate(model, mask, 1, seed=4, params=SamplingParams(steps=3, guidance_scale=3.0, scheduler="dpm++"),
                         frame=frame, **kwargs)
        out = pipe(image=mask, num_inference_steps=3, guidance_scale=3.0, frame=frame,
                   generator=[torch.Generator().manual_seed(4)], **kwargs)
        assert _max_diff(items, out.images) == 0, kwargs
    folder = sd15_model.save_pretrained(tmp_path / "sd15")
    items = generate(load_model(folder), mask, 1, seed=5, params=params, frame=frame, frame_mask=own)
    out = _load(folder)(image=mask, num_inference_steps=3, guidance_scale=3.0, frame=frame, frame_mask=own,
                        generator=[torch.Generator().manual_seed(5)])
    assert _max_diff(items, out.images) == 0


def test_a_hub_repo_loads_as_a_pipeline_from_the_local_cache_offline(tiny_model_dir, tmp_path, monkeypatch):
    """As after `python -m siamese push`: the repo id through huggingface-hub's cache layout, no network."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    fake_hub_cache(tiny_model_dir, tmp_path / "cache")
    pipe = DiffusionPipeline.from_pretrained("someone/siamese-test", cache_dir=str(tmp_path / "cache"),
                                             trust_remote_code=True, dtype=torch.float32)
    items = generate(load_model(tiny_model_dir), _mask(), 1, seed=2, params=SamplingParams(steps=2, guidance_scale=3.0))
    out = pipe(image=_mask(), num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(2))
    assert _max_diff(items, out.images) == 0


@pytest.mark.slow
def test_the_folder_loads_without_the_siamese_package(tiny_model_dir, tmp_path):
    """A diffusers user's process: another working directory, `siamese` not importable; same pixels."""
    import subprocess
    import sys

    script = f"""
import importlib.util, sys
import numpy as np, torch
from diffusers import DiffusionPipeline
assert importlib.util.find_spec("siamese") is None
pipe = DiffusionPipeline.from_pretrained({str(tiny_model_dir)!r}, trust_remote_code=True, dtype=torch.float32)
mask = np.zeros((80, 80), np.uint8); mask[20:50, 26:60] = 255
image = pipe(image=mask, num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(4)).images[0]
assert not [m for m in sys.modules if m.split(".")[0] == "siamese"]
np.save("image.npy", np.asarray(image))
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    items = generate(load_model(tiny_model_dir), _mask(), 1, seed=4, params=SamplingParams(steps=2, guidance_scale=3.0))
    assert _max_diff(items, [np.load(tmp_path / "image.npy")]) == 0

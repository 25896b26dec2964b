"""`python -m siamese convert`: reference-implementation checkpoints (ControlLDM naming) -> our model folders.

The checkpoints are built in the reference layout at tiny widths (tests/reference_layout.py, written independently
of siamese.convert); a round trip our model -> reference state dict -> convert -> our model samples the same pixels.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import wake_controlnet
from reference_layout import (ReferenceFeatureExtractor, controlnet_to_reference, reference_hint_block,
                              to_reference_state_dict)
from siamese.cli import main
from siamese.convert import ConversionError, convert_checkpoint, convert_dhi, convert_state_dict, read_checkpoint
from siamese.model import load_model
from siamese.networks import DenseHintInput, DHIControlNetModel
from siamese.sampling import SamplingParams, generate

PARAMS = SamplingParams(steps=2, guidance_scale=3.0, scheduler="ddim")


@pytest.fixture(scope="module")
def model(sd15_dir):
    """The tiny SD 1.5 with a ControlNet whose zero layers are made non-zero, so that the mask acts."""
    model = load_model(sd15_dir)
    model.config.resolution, model.config.prompt = 64, "a polyp"
    model.add_controlnet(0)
    return wake_controlnet(model, 0.05)


def _mask() -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:44, 20:50] = 255
    return mask


def _images(model) -> np.ndarray:
    return np.stack([item.image for item in generate(model, _mask(), 2, seed=7, params=PARAMS)])


def test_dhi_mapping_matches_the_reference_feature_extractor():
    """cldm/dhi.py's FeatureExtractor + zero conv (random, biased) and our converted DenseHintInput agree."""
    block = reference_hint_block(model_channels=32, seed=0)
    sd = {"control_model.input_hint_block." + k: v for k, v in block.state_dict().items()}
    ours = DenseHintInput(3, (16, 32, 64, 128, 256), 32, merge_bias=True)
    ours.load_state_dict({k.removeprefix("controlnet_cond_embedding."): v for k, v in convert_dhi(sd).items()},
                         strict=True)
    hint = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():  # in float64: the same function, up to rounding (float32 reorders sums: ~1e-4 of 70)
        expected, got = block.double()(hint), ours.double()(hint)
    assert expected.shape == got.shape == (2, 32, 8, 8) and expected.abs().max() > 1
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)


def test_reference_layout_of_the_dhi_is_the_reference_modules():
    """The test helper writes exactly the keys and shapes cldm/dhi.py's modules have (so the round trip below
    converts what the reference code saves)."""
    controlnet = DHIControlNetModel(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    cross_attention_dim=16, attention_head_dim=8, norm_num_groups=32)
    written = {k: tuple(v.shape) for k, v in controlnet_to_reference(controlnet).items() if "input_hint_block" in k}
    reference = {f"control_model.input_hint_block.0.{k}": tuple(v.shape)
                 for k, v in ReferenceFeatureExtractor(3).state_dict().items()}
    reference.update({"control_model.input_hint_block.1.weight": (32, 256, 3, 3),
                      "control_model.input_hint_block.1.bias": (32,)})
    assert written == reference


@pytest.mark.parametrize("kind", ["merged.pth", "merged-no-base.safetensors", "control-only.ckpt"])
def test_round_trip_samples_the_same_pixels(model, sd15_dir, tmp_path, kind):
    """our model -> the reference's state dict -> `convert` -> our model: the same sampled images."""
    sd = to_reference_state_dict(model, control_only=kind.startswith("control-only"))
    src = tmp_path / kind
    if src.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, src)
    else:
        torch.save({"state_dict": sd, "global_step": 3000}, src)  # a Lightning checkpoint nests it
    args = ["convert", str(src), str(tmp_path / "out"), "--resolution", "64", "--prompt", "a polyp"]
    args += ["--tokenizer", str(sd15_dir / "tokenizer")] if "no-base" in kind else ["--base", str(sd15_dir)]
    assert main(args) == 0
    converted = load_model(tmp_path / "out")
    # ours has no PatchMerging bias: the reference layout's is 0, and a zero bias is left out (bit-identical outputs)
    assert not converted.controlnet.config.get("dhi_merge_bias") and converted.config.resolution == 64
    if "no-base" in kind:  # the reference's DDIM sampler spaces its steps "leading"; a --base's own schedule is kept
        assert converted.scheduler_config["timestep_spacing"] == "leading"
    for part in ("unet", "controlnet", "text_encoder"):
        ours, theirs = getattr(model, part).state_dict(), getattr(converted, part).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), part
    before, after = _images(model), _images(converted)
    diff = np.abs(before.astype(int) - after.astype(int))
    print(f"{kind}: max pixel difference {diff.max()}, mean {diff.mean():.5f}")
    assert diff.max() == 0
    assert (before != _images_without_control(model)).any()  # the ControlNet (and its DHI) shape these images


def _images_without_control(model) -> np.ndarray:
    return np.stack([item.image for item in generate(model, _mask(), 2, seed=7,
                                                     params=SamplingParams(**{**PARAMS.__dict__, "control_scale": 0.0}))])


def test_control_only_without_base_is_refused_before_anything_is_written(model, tmp_path, capsys):
    src = tmp_path / "control.pth"
    torch.save(to_reference_state_dict(model, control_only=True), src)
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "control-only" in err and "--base" in err and "model.diffusion_model.*" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def _write(path: Path, sd: dict) -> Path:
    torch.save(sd, path)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


@pytest.mark.parametrize("make, message", [
    (lambda d, m: _bytes(d / "notes.ckpt", b"not a checkpoint"), "weights_only=True"),
    (lambda d, m: _bytes(d / "code.pth", pickle.dumps({"state_dict": _Payload()})), "weights_only=True"),
    (lambda d, m: _write(d / "lightning.ckpt", {"state_dict": to_reference_state_dict(m),
                                                "hyper_parameters": argparse.Namespace(lr=1e-5)}),
     "holds Python objects besides tensors (argparse.Namespace)"),
    (lambda d, m: _write(d / "other.pth", {"encoder.weight": torch.zeros(2)}), "not a ControlLDM checkpoint"),
    (lambda d, m: _write(d / "sd.pth", {k: v for k, v in to_reference_state_dict(m).items()
                                        if not k.startswith("control_model.")}), "no ControlNet"),
    (lambda d, m: _write(d / "stock.pth", {**{k: v for k, v in to_reference_state_dict(m).items()
                                              if "input_hint_block" not in k},
                                           "control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)}),
     "not the DHI"),
    (lambda d, m: _write(d / "missing.pth", {k: v for k, v in to_reference_state_dict(m).items()
                                             if "output_blocks.3." not in k}), "UNet (model.diffusion_model.*) does not fit its configuration: 76 missing (up_blocks.1.attentions.0"),
    (lambda d, m: _write(d / "shape.pth", {**to_reference_state_dict(m),
                                           "control_model.zero_convs.0.0.bias": torch.zeros(5)}),
     "controlnet_down_blocks.0.bias: checkpoint (5,), model (32,)"),
    (lambda d, m: d, "0 checkpoint files"),
])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoints_are_named_and_nothing_is_written(model, sd15_dir, tmp_path, capsys, make, message):
    (tmp_path / "src").mkdir()
    src = make(tmp_path / "src", model)
    args = ["convert", str(src), str(tmp_path / "out"), "--tokenizer", str(sd15_dir / "tokenizer"), "--resolution", "64"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert "unpickled code ran" not in captured.out
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_an_existing_output_folder_is_refused(model, sd15_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    src = _write(tmp_path / "m.pth", to_reference_state_dict(model))
    with pytest.raises(ConversionError, match="already exists"):
        convert_checkpoint(src, tmp_path / "out", base=sd15_dir, resolution=64)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_read_checkpoint_unwraps_module_prefixes_and_finds_the_file_in_a_folder(model, tmp_path):
    sd = to_reference_state_dict(model, control_only=True)
    (tmp_path / "download").mkdir()
    _write(tmp_path / "download" / "pytorch_model.bin", {"module": {"module." + k: v for k, v in sd.items()}})
    read = read_checkpoint(tmp_path / "download")
    assert read.keys() == sd.keys()
    with pytest.raises(ConversionError, match="no UNet, no VAE, no text encoder"):
        convert_state_dict(read)


def test_a_nonzero_patch_merging_bias_is_kept(model, sd15_dir, tmp_path):
    """The released weights' PatchMerging biases are trained (not 0): the converted DHI carries them, and its
    output changes with them."""
    sd = to_reference_state_dict(model, control_only=True)
    for key in [k for k in sd if k.endswith("reduction.bias")]:
        sd[key] = torch.full_like(sd[key], 0.5)
    converted = convert_state_dict(sd, base=model)
    assert converted.controlnet.config.dhi_merge_bias
    assert torch.equal(converted.controlnet.controlnet_cond_embedding.blocks[4].reduction.bias, torch.full((64,), 0.5))
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(converted.controlnet.embed_hint(hint), model.controlnet.embed_hint(hint))
    converted.save_pretrained(tmp_path / "m")
    assert load_model(tmp_path / "m").controlnet.config.dhi_merge_bias  # config.json keeps it


def test_configs_read_off_full_size_weights_are_sd15s():
    """Without --base, the configs come from the weights' shapes: for Stable Diffusion 1.5's shapes (built on the
    meta device, no memory) they are SD 1.5's own configs, as in its hub folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm)
    from transformers import CLIPTextConfig, CLIPTextModel

    from reference_layout import text_encoder_to_reference, unet_to_reference, vae_to_reference
    from siamese.convert import _ldm_original_config, _text_config
    from siamese.model import tiny_tokenizer

    down = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    with torch.device("meta"):
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), down_block_types=down, up_block_types=up,
                                    cross_attention_dim=768, attention_head_dim=8, layers_per_block=2)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    sd = {**unet_to_reference(unet), **vae_to_reference(vae), **text_encoder_to_reference(text)}
    original = _ldm_original_config(sd)
    unet_config = create_unet_diffusers_config_from_ldm(original, sd)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "cross_attention_dim",
                "attention_head_dim", "in_channels", "out_channels", "use_linear_projection"):
        got, expected = unet_config[key], unet.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == \
            (list(expected) if isinstance(expected, (list, tuple)) else expected), key
    vae_config = create_vae_diffusers_config_from_ldm(original, sd)
    assert (list(vae_config["block_out_channels"]), vae_config["latent_channels"], vae_config["layers_per_block"],
            vae_config["scaling_factor"]) == ([128, 256, 512, 512], 4, 2, 0.18215)
    text_config = _text_config(sd, tiny_tokenizer())
    assert (text_config.hidden_size, text_config.num_hidden_layers, text_config.num_attention_heads,
            text_config.intermediate_size, text_config.vocab_size, text_config.hidden_act) == \
        (768, 12, 12, 3072, 49408, "quick_gelu")

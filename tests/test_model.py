"""Model folders: save and load back (config JSON + safetensors), hub ids from a local cache, errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open

from conftest import fake_hub_cache
from siamese.model import load_model
from siamese.model_config import ModelLoadError


def _same_weights(a, b):
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, msg=n)


def test_save_load_roundtrip(tiny_model, tiny_model_dir):
    assert not list(tiny_model_dir.rglob("*.bin")) and not list(tiny_model_dir.rglob("*.pt"))
    loaded = load_model(tiny_model_dir)
    assert loaded.config == tiny_model.config
    _same_weights(loaded.unet, tiny_model.unet)
    _same_weights(loaded.controlnet, tiny_model.controlnet)
    _same_weights(loaded.text_encoder, tiny_model.text_encoder)
    torch.testing.assert_close(loaded.encode_prompt(["a test image"]), tiny_model.encode_prompt(["a test image"]))
    assert loaded.identity()["fingerprint"] == tiny_model.identity()["fingerprint"]


def test_fp16_save_is_smaller_and_loads_as_float32(tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    loaded = load_model(folder)
    assert loaded.dtype == torch.float32
    size = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
    full = sum(f.stat().st_size for f in tiny_model.save_pretrained(tmp_path / "full").rglob("*.safetensors"))
    assert size < 0.6 * full


def test_a_float16_save_leaves_the_model_and_its_guide_as_they_were(guided_model_dir, tmp_path):
    """Saving in float16 does not round the weights in memory: a guide saved after it holds only the tensors in which
    it differs (the ControlNet and the UNet decoder), not the whole UNet (a build ships its guide that way)."""
    model = load_model(guided_model_dir)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    with safe_open(str(guided_model_dir / "guide" / "guide.safetensors"), "pt") as f:
        names = set(f.keys())
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    assert model.unet.dtype == torch.float32
    with safe_open(str(tmp_path / "half" / "guide" / "guide.safetensors"), "pt") as f:
        assert set(f.keys()) == names and not any(k.startswith("unet.down_blocks") for k in names)
    assert load_model(tmp_path / "half").guide.shares_encoder


def test_base_model_without_controlnet_gets_one(tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path / "m")
    shutil.rmtree(folder / "controlnet")
    base = load_model(folder)
    assert base.controlnet is None
    cn = base.add_controlnet(0)
    # initialised from the UNet encoder, with a zero-output DHI
    torch.testing.assert_close(cn.conv_in.weight, base.unet.conv_in.weight)
    assert cn.controlnet_cond_embedding.conv_out.weight.abs().sum() == 0


def test_hub_id_loads_from_local_cache_offline(tiny_model_dir, tmp_path, monkeypatch):
    """A hub repo id resolves through huggingface-hub's cache layout without any network access."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    fake_hub_cache(tiny_model_dir, tmp_path / "cache")
    model = load_model("someone/siamese-test", cache_dir=tmp_path / "cache")
    assert model.controlnet is not None and model.source == "someone/siamese-test"
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load_model("someone/absent", cache_dir=tmp_path / "cache")


def test_bad_paths_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="No model folder"):
        load_model(tmp_path / "nothing" / "here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no unet/ folder"):
        load_model(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(tmp_path / "file.txt")


@pytest.mark.parametrize("sub, weights, pickled", [
    ("unet", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
    ("controlnet", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
    ("text_encoder", "model", "pytorch_model.bin"),
])
def test_pickled_weights_are_never_loaded(tiny_model_dir, tmp_path, sub, weights, pickled):
    """Only safetensors are read: a folder whose weights are a pickled .bin (which can run code when
    unpickled) is refused, not loaded."""
    from safetensors.torch import load_file

    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    tensors = folder / sub / f"{weights}.safetensors"
    torch.save(load_file(tensors), folder / sub / pickled)
    tensors.unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(folder)


@pytest.mark.parametrize("key, value, expected", [
    ("resolution", "abc", "'resolution' must be a whole number of pixels, a multiple of 8"),
    ("resolution", 100, "'resolution' must be a whole number of pixels, a multiple of 8"),
    ("resolution", 64.0, "'resolution' must be a whole number"),
    ("resolution", True, "'resolution' must be a whole number"),
    ("prompt", 5, "'prompt' must be text, got 5"),
    ("name", ["x"], "'name' must be text"),
    ("codec", "patch", "'codec' must be an object"),
    ("dhi_widths", [4, "8"], "'dhi_widths' must be a list of positive whole numbers"),
    ("dhi_widths", [], "'dhi_widths' must be a list of positive whole numbers"),
    ("control_scale", "2", "'control_scale' must be a number, 0 or more, got '2'"),
    ("control_scale", -1, "'control_scale' must be a number, 0 or more"),
    ("control_end", 0, "'control_end' must be a fraction of the sampling steps, above 0 and at most 1, got 0"),
    ("control_end", 1.5, "'control_end' must be a fraction of the sampling steps"),
])
def test_wrong_types_in_the_config_name_the_file_and_key(tiny_model_dir, tmp_path, key, value, expected):
    import json

    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "siamese_config.json").read_text())
    (folder / "siamese_config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ModelLoadError, match=expected) as info:
        load_model(folder)
    assert str(folder / "siamese_config.json") in str(info.value)


@pytest.mark.parametrize("content, expected", [
    (b'{"resolution": 64,', "not valid JSON"),
    (b'{"prompt": "caf\xe9"}', "not UTF-8 text"),
    (b'[64]', "expected a JSON object"),
])
def test_malformed_config_names_the_file(tiny_model_dir, tmp_path, content, expected):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (folder / "siamese_config.json").write_bytes(content)
    with pytest.raises(ModelLoadError, match=f"siamese_config.json: {expected}"):
        load_model(folder)

"""Autoguidance: the guide in a model folder, its sampling arithmetic, the add-guide command and its refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import weaken

from siamese import SamplingParams, generate, load_model
from siamese.cli import main
from siamese.data import mask_to_hint
from siamese.guide import GUIDE_FOLDER, build_guide, guide_tensors, make_guide
from siamese.model_config import ModelLoadError
from siamese.networks import UNET_DECODER_PREFIXES, controlnet_residuals, unet_decode, unet_encode
from siamese.sampling import Denoiser, sample

MASK = np.zeros((64, 64), np.uint8)
MASK[16:40, 20:50] = 255
FAST = dict(steps=3, scheduler="ddim")


def _guided(model, **parts):
    return make_guide(model, weaken(model, **parts))


def test_a_guide_keeps_only_what_differs_and_knows_when_it_shares_the_encoder(tiny_model):
    tensors = guide_tensors(tiny_model, weaken(tiny_model))
    assert all(k.startswith("controlnet.") or k.split(".", 1)[1].startswith(UNET_DECODER_PREFIXES) for k in tensors)
    assert any(k.startswith("unet.up_blocks.") for k in tensors) and any(k.startswith("controlnet.") for k in tensors)
    assert build_guide(tensors, tiny_model.unet, tiny_model.controlnet).shares_encoder
    assert not _guided(tiny_model, parts=("unet_encoder",)).shares_encoder
    assert _guided(tiny_model, parts=("unet_decoder",)).controlnet is None  # the model's own ControlNet


@pytest.mark.parametrize("parts", [("controlnet", "unet_decoder"), ("unet_encoder", "unet_decoder"), ("unet_decoder",)])
def test_the_guides_prediction_is_its_whole_networks_prediction(tiny_model, parts):
    """What `Denoiser` reuses from the model's pass (encoding, residuals) changes nothing."""
    guide = _guided(tiny_model, parts=parts)
    torch.manual_seed(0)
    B = 2
    x = torch.randn(2 * B, 16, 8, 8)
    t = torch.tensor([900, 900, 300, 300])
    prompts = tiny_model.encode_prompt(["", "", "a", "a"])
    hint = mask_to_hint(MASK // 255).expand(2 * B, -1, -1, -1)
    with torch.no_grad():
        emb = tiny_model.controlnet.embed_hint(hint)
        cond = slice(B, 2 * B)
        net = guide.controlnet or tiny_model.controlnet
        gemb = net.embed_hint(hint[cond])
        predict = Denoiser(tiny_model, guide, prompts, emb, gemb if guide.controlnet is not None else None, cond,
                           1.5, keep=False)
        _, got = predict.full(x, t, control=True)
        gdown, gmid = controlnet_residuals(net, x[cond], t[cond], prompts[cond], gemb, 1.5)
        want = unet_decode(guide.unet, unet_encode(guide.unet, x[cond], t[cond], prompts[cond]), prompts[cond],
                           gdown, gmid)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_autoguidance_1_is_sampling_without_a_guide_and_2_is_not(tiny_model):
    hint = mask_to_hint(MASK // 255)[None]
    gens = lambda: [torch.Generator().manual_seed(3)]  # noqa: E731
    plain = sample(tiny_model, hint, ["a test image"], gens(), **FAST)
    tiny_model.guide = _guided(tiny_model)
    try:
        assert torch.equal(sample(tiny_model, hint, ["a test image"], gens(), **FAST, autoguidance=1.0), plain)
        guided = sample(tiny_model, hint, ["a test image"], gens(), **FAST, autoguidance=2.0)
        unguided_cfg = sample(tiny_model, hint, ["a test image"], gens(), **FAST, guidance_scale=1.0,
                              autoguidance=2.0)
    finally:
        tiny_model.guide = None
    assert (guided - plain).abs().max() > 1e-3 and torch.isfinite(unguided_cfg).all()


def test_a_model_without_a_guide_refuses_autoguidance_with_the_reason(tiny_model):
    with pytest.raises(ValueError, match="autoguidance 2 needs a guide"):
        generate(tiny_model, MASK, 1, seed=0, params=SamplingParams(**FAST, autoguidance=2.0))
    with pytest.raises(ValueError, match="autoguidance must be between 1 \\(off\\) and 10"):
        SamplingParams(autoguidance=0.5).validate()


def test_the_guide_is_saved_loaded_and_used_by_default(tiny_model, guided_model_dir, tmp_path):
    model = load_model(guided_model_dir)
    assert model.guide is not None and model.guide.shares_encoder and model.config.autoguidance == 2.0
    config = json.loads((guided_model_dir / GUIDE_FOLDER / "guide_config.json").read_text())
    assert config["parts"] == ["controlnet", "unet"]
    assert model.identity()["fingerprint"] != tiny_model.identity()["fingerprint"]  # the guide is in the weights
    made = generate(model, MASK, 1, seed=4, params=SamplingParams(**FAST))[0]
    assert made.params["autoguidance"] == 2.0
    off = generate(model, MASK, 1, seed=4, params=SamplingParams(**FAST, autoguidance=1.0))[0]
    assert np.abs(made.image.astype(int) - off.image.astype(int)).max() > 0
    again = load_model(model.save_pretrained(tmp_path / "resaved"))  # the guide goes with the model
    assert again.identity() == {**model.identity(), "source": str(tmp_path / "resaved")}
    assert np.array_equal(generate(again, MASK, 1, seed=4, params=SamplingParams(**FAST))[0].image, made.image)


def test_cli_add_guide_then_sample_with_it(tiny_model, tiny_model_dir, tmp_path, capsys):
    weak = weaken(tiny_model, seed=11).save_pretrained(tmp_path / "weak")
    out = tmp_path / "with-guide"
    assert main(["add-guide", "--model", str(tiny_model_dir), "--guide", str(weak), "--weight", "3",
                 "--output", str(out)]) == 0
    assert "recommends autoguidance 3" in capsys.readouterr().out
    assert not (tiny_model_dir / GUIDE_FOLDER).exists()  # the source folder is left as it was
    mask = tmp_path / "m.png"
    import cv2

    cv2.imwrite(str(mask), MASK)
    assert main(["sample", "--model", str(out), "--masks", str(mask), "--output", str(tmp_path / "o"), "--steps", "2",
                 "--seed", "0"]) == 0
    meta = json.loads((tmp_path / "o" / "metadata.jsonl").read_text().splitlines()[0])
    assert meta["autoguidance"] == 3.0


@pytest.mark.parametrize("case", ["same", "other architecture", "weight 1", "not a folder"])
def test_cli_add_guide_refuses_with_the_reason(case, tiny_model_dir, sd15_dir, tmp_path, capsys):
    guide, weight, model = str(tiny_model_dir), "2", str(tiny_model_dir)
    if case == "other architecture":
        guide = str(sd15_dir)
    elif case == "weight 1":
        weight = "1"
    elif case == "not a folder":
        model = str(tmp_path / "nothing")
    assert main(["add-guide", "--model", model, "--guide", guide, "--weight", weight,
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    expected = {"same": "the guide is the model itself", "other architecture": "same architecture",
                "weight 1": "must be above 1 (1 is off)", "not a folder": "not a local model folder"}[case]
    assert err.startswith("error: ") and expected in err
    assert not (tmp_path / "out").exists()


def test_a_folder_recommending_autoguidance_without_a_guide_says_so(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = json.loads((folder / "siamese_config.json").read_text())
    (folder / "siamese_config.json").write_text(json.dumps({**config, "autoguidance": 2.0}))
    with pytest.raises(ModelLoadError, match="recommends autoguidance 2, which needs a guide"):
        load_model(folder)
    (folder / "siamese_config.json").write_text(json.dumps({**config, "autoguidance": 0.5}))
    with pytest.raises(ModelLoadError, match="'autoguidance' must be a number from 1 \\(off\\) to 10"):
        load_model(folder)

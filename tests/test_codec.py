"""The PCA patch codec: whitened latents, exact round trip with every component, save and load."""

from __future__ import annotations

import pytest
import torch

from siamese.codec import PatchCodec, PatchCodecConfig, save_module


def _images(n=6, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1) * 2 - 1


def test_latents_are_whitened_per_channel():
    """Fitted on some images, the codec whitens others of the same kind: each latent channel has mean about 0
    and standard deviation about 1 on held-out images (on the fitted ones it is so by construction)."""
    codec = PatchCodec.fit(_images(n=64, seed=0), PatchCodecConfig(channels=16))
    z = codec.encode(_images(n=32, seed=1))
    assert z.shape == (32, 16, 8, 8)
    per_channel = z.transpose(0, 1).flatten(1)  # (16, 32 * 8 * 8) samples of each channel
    # held-out seeds 1-5 measured: std within 0.94-1.08, |mean| at most 0.13
    torch.testing.assert_close(per_channel.std(1), torch.ones(16), atol=0.1, rtol=0)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(16), atol=0.2, rtol=0)
    assert (codec.scale[:-1] >= codec.scale[1:]).all()  # components in order of variance


def test_round_trip_exact_with_every_component_and_close_with_fewer(tmp_path):
    images = _images()
    full = PatchCodec.fit(images, PatchCodecConfig(channels=192))
    torch.testing.assert_close(full.decode(full.encode(images)), images, atol=1e-4, rtol=0)
    few = PatchCodec.fit(images, PatchCodecConfig(channels=24))
    assert (few.decode(few.encode(images)) - images).pow(2).mean() < 0.05 * images.var()
    few.save(tmp_path)
    loaded = PatchCodec.load(tmp_path, PatchCodecConfig(channels=24))
    torch.testing.assert_close(loaded.encode(images), few.encode(images))


def test_bad_channel_count_is_refused():
    with pytest.raises(ValueError, match="between 1 and 192"):
        PatchCodec(PatchCodecConfig(channels=300))


def test_saving_in_float16_prints_no_empty_float32_warning(tiny_model, tmp_path, capfd):
    """diffusers warns on each cast that modules "should be kept in float32: []" (none): filtered out."""
    save_module(tiny_model.unet, tmp_path / "unet", torch.float16)
    assert "should be kept in float32" not in capfd.readouterr().err

"""The learned patch decoder: it trains, removes the block grid of a linear decode, travels with the
model folder, and a missing or damaged codec file is a clear error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from siamese.codec import PatchCodec, PatchCodecConfig
from siamese.decoder import DecoderTrainConfig, PatchDecoder, train_decoder
from siamese.model import build_tiny, load_model
from siamese.model_config import ModelLoadError
from siamese.quality import block_edge_ratio


def _images(n=12, size=64, seed=0) -> np.ndarray:
    """Smooth colour fields with a soft disc: (n, size, size, 3) uint8."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size / 2) ** 2 + (xx - size / 3) ** 2) < (size / 5) ** 2).float()
    x = x + 0.3 * torch.nn.functional.avg_pool2d(disc[None, None], 5, 1, 2)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@pytest.mark.slow
def test_decoder_learns_to_decode_without_the_block_grid():
    images = _images()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    codec = PatchCodec.fit(x, PatchCodecConfig(channels=4))  # few components: a visible grid
    config = DecoderTrainConfig(steps=150, batch_size=4, crop=32, lr=3e-3, width=16, latent_noise=0.1, log_every=50)
    losses = []
    decoder = train_decoder(codec, images, config, callback=lambda e: losses.append(e["loss"]))
    assert losses[-1] < 0.6 * losses[0]
    with torch.no_grad():
        z = codec.encode(x)
        linear, learned = _to_uint8(codec.decode_linear(z)), _to_uint8(decoder(z))
    assert learned.shape == images.shape
    assert block_edge_ratio(linear) > 1.3  # the linear inverse leaves steps at the patch borders
    assert block_edge_ratio(learned) < block_edge_ratio(linear) - 0.2
    assert not any(p.requires_grad for p in decoder.parameters())


def test_decoder_travels_with_the_model_folder(tmp_path):
    model = build_tiny(resolution=64, seed=0, block_out_channels=(16, 32, 32), norm_num_groups=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model.codec.set_decoder(PatchDecoder(latent_channels=16, width=8, num_blocks=(1, 0, 0, 0)))
    folder = model.save_pretrained(tmp_path / "m")
    assert json.loads((folder / "siamese_config.json").read_text())["codec"]["learned_decoder"] is True
    loaded = load_model(folder)
    z = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.codec.decode(z), model.codec.decode(z))
        assert not torch.allclose(loaded.codec.decode(z), loaded.codec.decode_linear(z))
    shutil.rmtree(folder / "codec" / "decoder")
    with pytest.raises(ModelLoadError, match="codec/decoder is missing"):
        load_model(folder)


def test_missing_or_damaged_codec_file_is_an_error_naming_it(tmp_path):
    folder = build_tiny(resolution=64, seed=0, block_out_channels=(16, 32, 32), norm_num_groups=8).save_pretrained(tmp_path / "m")
    (folder / "codec" / "codec.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="codec.safetensors could not be read"):
        load_model(folder)
    (folder / "codec" / "codec.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="codec.safetensors is missing"):
        load_model(folder)


def test_decoder_that_does_not_fit_the_codec_is_refused():
    codec = PatchCodec(PatchCodecConfig(channels=16))
    with pytest.raises(ValueError, match="does not fit"):
        codec.set_decoder(PatchDecoder(latent_channels=8))
    with pytest.raises(ValueError, match="upsamples x4"):
        DecoderTrainConfig(num_blocks=(1, 1, 1)).validate(8)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DecoderTrainConfig(crop=60).validate(8)


@pytest.mark.slow
def test_add_decoder_in_place_writes_the_decoder_whole_then_the_config(tiny_model_dir, dataset, tmp_path):
    from siamese.folder_ops import add_decoder

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    before = load_model(folder)
    out = add_decoder(str(folder), str(dataset), DecoderTrainConfig(steps=2, crop=32, width=8), holdout=0.34)
    assert out == folder and not (folder / "codec" / "decoder.tmp").exists()
    assert json.loads((folder / "codec" / "decoder" / "train_config.json").read_text())["held_out"]["images"] == 2
    after = load_model(folder)
    assert after.codec.decoder is not None and after.codec.decoder.dtype == torch.float32
    for (n, p), (_, q) in zip(before.unet.state_dict().items(), after.unet.state_dict().items()):
        assert torch.equal(p, q), n  # nothing else in the folder was rewritten
    with pytest.raises(ValueError, match="not a local model folder"):
        add_decoder("owner/name", str(dataset), DecoderTrainConfig(steps=1))


@pytest.mark.slow
def test_adversarial_term_trains_a_critic_from_its_start_step():
    images = _images(n=6, size=64)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    codec = PatchCodec.fit(x, PatchCodecConfig(channels=4))
    runs = {}
    for weight in (0.0, 0.5):
        config = DecoderTrainConfig(steps=6, batch_size=2, crop=32, width=8, log_every=1, adversarial_weight=weight,
                                    adversarial_start=3, critic_channels=8)
        events = []
        runs[weight] = (train_decoder(codec, images, config, callback=events.append), events)
    (plain, plain_events), (gan, gan_events) = runs[0.0], runs[0.5]
    assert [e["loss"] for e in gan_events[:3]] == [e["loss"] for e in plain_events[:3]]  # same run until the start
    assert all("critic" not in e for e in gan_events[:3] + plain_events)
    assert all(e["critic"] > 0 and e["adversarial"] > 0 for e in gan_events[3:])
    assert any(not torch.equal(p, q) for p, q in zip(plain.parameters(), gan.parameters()))
    with pytest.raises(ValueError, match="adversarial weight"):
        DecoderTrainConfig(adversarial_weight=-1).validate(8)
    with pytest.raises(ValueError, match="adversarial start"):
        DecoderTrainConfig(steps=10, adversarial_start=10).validate(8)


@pytest.mark.slow
def test_fine_tune_starts_from_the_folders_decoder_and_records_it(tiny_model_dir, dataset, tmp_path):
    from siamese.folder_ops import add_decoder

    with pytest.raises(ValueError, match="no learned decoder to fine-tune"):
        add_decoder(str(tiny_model_dir), str(dataset), DecoderTrainConfig(steps=1, crop=32, width=8), fine_tune=True,
                    output=str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
    first = add_decoder(str(tiny_model_dir), str(dataset), DecoderTrainConfig(steps=2, crop=32, width=8, num_blocks=(1, 0, 0, 0)),
                        output=str(tmp_path / "a"), holdout=0.34)
    before = load_model(first).codec.decoder
    out = add_decoder(str(first), str(dataset), DecoderTrainConfig(steps=1, crop=32, lr=1e-9, adversarial_weight=0.1,
                                                                   critic_channels=8),
                      output=str(tmp_path / "b"), holdout=0.34, fine_tune=True)
    after = load_model(out).codec.decoder
    assert after.config.width == 8 and tuple(after.config.num_blocks) == (1, 0, 0, 0)  # the folder's, not the config's
    for p, q in zip(before.parameters(), after.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)  # started from it (lr ~ 0)
    record = json.loads((out / "codec" / "decoder" / "train_config.json").read_text())
    assert record["adversarial_weight"] == 0.1 and record["fine_tuned_from"]["steps"] == 2

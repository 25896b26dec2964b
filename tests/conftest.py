"""Shared fixtures: tiny seeded models, a small synthetic dataset (nothing downloaded), and the app's `studio`
over the tiny model with the helpers several test_app_* modules use."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
import torch

if TYPE_CHECKING:  # the app imports gradio: only the fixture below imports it, when a test asks
    from studio.server import Studio

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not (path / "images").is_dir():
        pytest.skip(f"needs the real data in {path} (present in the project's CI, absent in a user's clone)")
    return path


def write_dataset(root: Path, n: int = 6, size: int = 80, seed: int = 0, mask_ext: str = ".png") -> Path:
    """n image-mask pairs: a bright ellipse (the "lesion") on a reddish textured background."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        c = tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
        axes = tuple(int(v) for v in rng.integers(size // 8, size // 4, 2))
        cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        image = np.clip(rng.normal([150, 60, 50], 20, (size, size, 3)), 0, 255).astype(np.uint8)
        image[mask > 0] = (230, 160, 140)
        cv2.imwrite(str(root / "images" / f"case{i:02d}.jpg"), image[..., ::-1])
        cv2.imwrite(str(root / "masks" / f"case{i:02d}{mask_ext}"), mask)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): these networks are tiny,
    and on a shared 2-core machine two spinning threads per process make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


def wake_controlnet(model, std: float, seed: int = 1):
    """Fill a fresh ControlNet's all-zero layers (zero convolutions, DHI output) with seeded noise of `std`, so that
    the mask acts (a fresh ControlNet is a no-op by design). Returns the model in eval mode."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in model.controlnet.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def fake_hub_cache(model_dir: Path, cache: Path, repo_id: str = "someone/siamese-test") -> str:
    """Lay a model folder out as huggingface-hub's cache holds a downloaded repo (snapshot + refs/main); returns
    the repo id, which then resolves from `cache` with no network."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo_id


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny preset at 64x64 with its ControlNet, seeded; the DHI output is made non-zero so the
    ControlNet actually acts (a fresh one is a no-op by design)."""
    from siamese.model import build_tiny

    model = build_tiny(resolution=64, prompt="a test image", seed=0, block_out_channels=(16, 32, 32),
                       norm_num_groups=8)
    model.add_controlnet(0)
    return wake_controlnet(model, 0.02)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    return tiny_model.save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def sd15_dir(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion 1.5 folder in exactly the diffusers layout (tests/sd15_layout.py)."""
    from sd15_layout import write_tiny_sd15

    return write_tiny_sd15(tmp_path_factory.mktemp("sd15") / "stable-diffusion-v1-5")


@pytest.fixture(scope="session")
def scored_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a (barely trained) fidelity scorer in segmenter/."""
    from siamese.data import read_image, read_mask
    from siamese.fidelity import ScorerConfig, save_scorer, train_scorer

    data = write_dataset(tmp_path_factory.mktemp("scorer-data") / "d", n=6, size=64)
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("models") / "scored")
    images = np.stack([read_image(p) for p in sorted((data / "images").iterdir())])
    labels = np.stack([read_mask(p) for p in sorted((data / "masks").iterdir())])
    save_scorer(train_scorer(images, labels, ScorerConfig(resolution=64, channels=(8, 16, 32), steps=5,
                                                          batch_size=4)), folder)
    return folder


def weaken(model, seed: int = 7, std: float = 0.02, parts: tuple[str, ...] = ("controlnet", "unet_decoder")):
    """A copy of `model` with seeded noise added to its ControlNet and/or UNet decoder (`parts`, also "unet_encoder"):
    the same architecture with other weights, as an earlier stage of its training would be."""
    import copy

    weak = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    from siamese.networks import UNET_DECODER_PREFIXES as decoder

    with torch.no_grad():
        for name, p in weak.unet.named_parameters():
            if ("unet_decoder" in parts and name.startswith(decoder)) or \
                    ("unet_encoder" in parts and not name.startswith(decoder)):
                p.add_(torch.randn(p.shape, generator=g) * std)
        if "controlnet" in parts:
            for p in weak.controlnet.parameters():
                p.add_(torch.randn(p.shape, generator=g) * std)
    return weak


@pytest.fixture(scope="session")
def guided_model_dir(tiny_model, tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a guide (a weakened copy of it) and autoguidance 2 recommended (`add-guide`)."""
    from siamese.folder_ops import add_guide

    weak = weaken(tiny_model).save_pretrained(tmp_path_factory.mktemp("models") / "weak")
    return add_guide(tiny_model_dir, weak, 2.0, output=tmp_path_factory.mktemp("models") / "guided")


# -- the app (tests/test_app*.py) -----------------------------------------------------------------
@pytest.fixture()
def studio(tiny_model_dir, tmp_path) -> Studio:
    """The app's state over the tiny model: checkpoints/, runs/ and the data root in tmp_path."""
    from studio.server import Studio
    from studio.settings import Settings

    return Studio(str(tiny_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
                  settings=Settings(data_root=tmp_path))


@pytest.fixture()
def batch_studio(tiny_model_dir, tmp_path) -> Studio:
    """`studio` with a fake fidelity scorer (`batch_helpers.FakeScorer`: 0.9, 0.2, 0.9, ... in call order, so the
    accepted and rejected pairs are known); its batches are stopped at the end."""
    from batch_helpers import FakeScorer, fake_loader
    from studio.server import Studio
    from studio.settings import Settings

    s = Studio(str(tiny_model_dir), checkpoints_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs",
               settings=Settings(data_root=tmp_path))
    s.models.load_scorer = fake_loader(FakeScorer())
    yield s
    s.batches.stop_all(60)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a launched app)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_zip(path: Path, entries: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.fixture()
def uploads(tmp_path, monkeypatch) -> Path:
    """Gradio's upload folder for the test: files in it arrive as FileData, as the server passes them."""
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


def file_data(path: Path, name: str | None = None) -> dict:
    return {"path": str(path), "orig_name": name or path.name, "meta": {"_type": "gradio.FileData"}}


def one_clean_line(message: str, tmp_path: Path) -> None:
    """A reply a visitor may see: one line, no server path, no temporary path, no bare OS or library message."""
    assert "\n" not in message and str(tmp_path) not in message and tempfile.gettempdir() not in message
    assert "Errno" not in message and "Traceback" not in message and str(Path.cwd()) not in message


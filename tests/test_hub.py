"""`python -m siamese push` and SiameseModel.push_to_hub, at the huggingface_hub API boundary (HfApi.create_repo
and HfApi.upload_folder replaced; what would be uploaded is computed with huggingface_hub's own filter)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS  # what upload_folder always adds
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import filter_repo_objects

from siamese.card import GENERATED_MARK, TAGS
from siamese.cli import main
from siamese.train import TrainConfig, train


class FakeHub:
    """Records create_repo / upload_folder calls and the files upload_folder would send."""

    def __init__(self, monkeypatch):
        self.repos, self.uploads = [], []
        hub = self

        def create_repo(api, repo_id, *, token=None, private=None, repo_type=None, exist_ok=False, **kw):
            hub.repos.append(dict(repo_id=repo_id, private=private, repo_type=repo_type, exist_ok=exist_ok,
                                  token=api.token if token is None else token))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, ignore_patterns=None, allow_patterns=None, **kw):
            root = Path(folder_path)
            files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
            ignore = list(ignore_patterns or []) + DEFAULT_IGNORE_PATTERNS
            sent = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore))
            card = (root / "README.md").read_text() if "README.md" in sent else None
            hub.uploads.append(dict(repo_id=repo_id, files=sent, card=card, **kw))
            return f"https://huggingface.co/{repo_id}/commit/0123abc"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


@pytest.fixture
def hub(monkeypatch) -> FakeHub:
    return FakeHub(monkeypatch)


CHECKPOINT_CARDS: list[tuple[int, str]] = []  # (step, README.md) at each checkpoint event of the run below


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 3-step tiny run: checkpoints/ (optimiser state), init/, previews/, metrics.csv."""
    from conftest import write_dataset

    root = tmp_path_factory.mktemp("hub")
    data = write_dataset(root / "data")
    CHECKPOINT_CARDS.clear()

    def at_checkpoint(event):
        if event["type"] == "checkpoint":
            CHECKPOINT_CARDS.append((event["step"], (root / "run" / "README.md").read_text()))

    config = TrainConfig(data=str(data), output=str(root / "run"), resolution=64, batch_size=2, max_steps=3,
                         lr=1e-3, checkpoint_every=2, log_every=1, preview_every=2, seed=3, name="hub-test")
    return train(config, callback=at_checkpoint)


@pytest.mark.slow
def test_push_uploads_the_model_and_its_card_not_the_training_state(run, hub, capsys):
    assert (run / "checkpoints").is_dir() and (run / "init").is_dir() and (run / "previews").is_dir()
    (run / "build" / "1-base").mkdir(parents=True)  # a built model's stages (siamese.build): not uploaded
    (run / "build" / "1-base" / "metrics.csv").write_text("step\n")
    assert main(["push", str(run), "someone/siamese-polyps", "--private", "--token", "hf_test"]) == 0
    assert hub.repos == [dict(repo_id="someone/siamese-polyps", private=True, repo_type="model", exist_ok=True,
                              token="hf_test")]
    (upload,) = hub.uploads
    files = upload["files"]
    assert upload["repo_id"] == "someone/siamese-polyps"
    for need in ("README.md", "model_index.json", "pipeline_siamese.py", "siamese_config.json", "train_config.json",
                 "metrics.csv", "controlnet/siamese_networks.py", "controlnet/diffusion_pytorch_model.safetensors",
                 "unet/diffusion_pytorch_model.safetensors", "codec/patch_codec.py", "codec/codec.safetensors",
                 "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "scheduler/scheduler_config.json"):
        assert need in files, need
    assert not [f for f in files if f.startswith(("build/", "checkpoints/", "init/", "previews/"))], files
    assert not [f for f in files if "optimizer" in f or f.endswith((".pt", ".bin", ".tmp"))], files
    card = ModelCard(upload["card"])
    assert set(TAGS) <= set(card.data.tags) and card.data.license and card.data.pipeline_tag == "image-to-image"
    assert card.data.library_name == "diffusers" and card.data.base_model is None  # tiny: trained from scratch
    assert GENERATED_MARK in card.text and "someone/siamese-polyps" in card.text  # the usage names the repo
    assert "## Training" in card.text and "3 of 3 steps (finished)" in card.text
    assert "Last losses (metrics.csv, step 3)" in card.text and "| loss_consistency |" in card.text
    assert "someone/siamese-polyps" in capsys.readouterr().out


@pytest.mark.slow
def test_the_card_is_current_at_each_checkpoint(run):
    cards = CHECKPOINT_CARDS
    assert [step for step, _ in cards] == [2, 3]
    assert "Last losses (metrics.csv, step 2)" in cards[0][1] and "2 of 3 steps (in progress" in cards[0][1]
    assert "Last losses (metrics.csv, step 3)" in cards[1][1]


@pytest.mark.slow
def test_push_refuses_what_is_not_a_model_folder_before_any_upload(run, hub, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "someone/x"]) == 2
    assert "has no siamese_config.json" in capsys.readouterr().err
    assert main(["push", str(run), "not a repo id!"]) == 2
    assert "repo id must be 'owner/name'" in capsys.readouterr().err
    assert hub.repos == [] and hub.uploads == []


def test_model_push_to_hub_saves_and_uploads(tiny_model, hub):
    url = tiny_model.push_to_hub("someone/tiny", token="hf_x")
    assert url.endswith("/commit/0123abc")
    (upload,) = hub.uploads
    assert "model_index.json" in upload["files"] and "README.md" in upload["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in upload["files"]
    assert "## Training" not in upload["card"]  # an in-memory model has no training record
    assert hub.repos[0]["private"] is False

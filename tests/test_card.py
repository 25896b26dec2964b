"""Model cards: front matter, base_model, a hand-written card left as written, evaluate's results added."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import siamese.card
from siamese.card import EVALUATION_NAME, GENERATED_MARK, TAGS, base_model_of, record_evaluation, write_model_card

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CARD = ROOT / "checkpoints" / "siamese-kvasir-tiny" / "README.md"


def test_saved_folder_gets_a_generated_card(tiny_model_dir):
    card = ModelCard.load(tiny_model_dir / "README.md")
    assert GENERATED_MARK in card.text and set(TAGS) <= set(card.data.tags)
    assert card.data.pipeline_tag == "image-to-image" and card.data.license == "other"
    assert "Not evaluated yet" in card.text or "## Evaluation" in card.text


def test_base_model_is_the_hub_model_a_run_started_from(tmp_path):
    assert base_model_of("tiny") is None and base_model_of(None) is None
    assert base_model_of("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    start = tmp_path / "start"
    start.mkdir()
    assert base_model_of(str(start)) is None  # a local folder without a card
    (start / "README.md").write_text("---\nbase_model: someone/sd15-polyps\n---\n# x\n")
    assert base_model_of(str(start)) == "someone/sd15-polyps"  # inherited from the folder's card
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"model": "runwayml/stable-diffusion-v1-5", "max_steps": 10,
                                                       "objective": "siamese", "data": "data/kvasir-seg"}))
    card = ModelCard.load(write_model_card(run, datasets=["someone/kvasir-seg"]))
    assert card.data.base_model == "runwayml/stable-diffusion-v1-5" and card.data.datasets == ["someone/kvasir-seg"]
    assert "0 of 10 steps (in progress" in card.text  # no metrics.csv yet


def test_a_hand_written_card_keeps_its_text_and_gets_missing_keys(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(BUNDLED_CARD, folder / "README.md")
    before = ModelCard.load(folder / "README.md")
    write_model_card(folder)
    after = ModelCard.load(folder / "README.md")
    assert after.text == before.text and GENERATED_MARK not in after.text
    assert after.data.license == before.data.license
    assert set(TAGS) <= set(after.data.tags) and set(before.data.tags) <= set(after.data.tags)
    assert after.data.pipeline_tag == "image-to-image" and after.data.library_name == "diffusers"
    text = (folder / "README.md").read_text()
    write_model_card(folder)  # nothing missing any more: the file is left alone
    assert (folder / "README.md").read_text() == text


def test_the_bundled_card_has_the_front_matter_and_its_own_text():
    card = ModelCard.load(BUNDLED_CARD)
    assert GENERATED_MARK not in card.text and "recipe.sh" in card.text
    assert set(TAGS) <= set(card.data.tags) and card.data.pipeline_tag == "image-to-image"


def test_evaluate_adds_its_results_to_the_card_and_copes_with_a_read_only_folder(tiny_model_dir, dataset, tmp_path,
                                                                                monkeypatch):
    from siamese.evaluate import EvalConfig, evaluate

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    settings = dict(data=dataset, model=model, seg_steps=2, steps=1, seeds=1, resolution=64, max_synthetic=2,
                    kid_subsets=2, seg_channels=(8, 16, 32), test_fraction=0.34)
    report = evaluate(EvalConfig(**settings))
    assert json.loads((model / EVALUATION_NAME).read_text()) == json.loads(json.dumps(report))
    card = ModelCard.load(model / "README.md")
    assert "## Evaluation" in card.text and "Mask fidelity" in card.text and "Not evaluated yet" not in card.text

    def read_only(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(siamese.card, "atomic_write", read_only)
    (model / EVALUATION_NAME).unlink()
    assert record_evaluation(model, report) is None  # says why in the log, does not fail
    assert not (model / EVALUATION_NAME).exists()
    assert record_evaluation("someone/hub-model", report) is None  # not a local folder


@pytest.mark.parametrize("name", ["metrics.csv", "train_config.json"])
def test_damaged_records_do_not_stop_the_card(tmp_path, name):
    (tmp_path / name).write_bytes(b"\xff\x00 not what it should be")
    card = ModelCard.load(write_model_card(tmp_path))
    assert GENERATED_MARK in card.text


def test_a_hand_written_card_that_is_not_valid_yaml_is_left_alone(tiny_model, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "README.md").write_text("---\ntags: [unclosed\n---\n# mine\n")
    tiny_model.save_pretrained(folder)  # saving the model does not fail on somebody's card
    assert (folder / "README.md").read_text() == "---\ntags: [unclosed\n---\n# mine\n"

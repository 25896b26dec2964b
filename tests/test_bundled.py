"""The models that ship in checkpoints/: each loads, names what it makes, brings its example masks, samples at its
recommended settings, and its card's figures are its evaluation.json's (written by `evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from siamese import SamplingParams, generate, load_model
from siamese.card import FIGURE_NAME
from siamese.data import read_mask
from siamese.presets import model_presets

ROOT = Path(__file__).resolve().parents[1]
POLYPS, SKIN = ROOT / "checkpoints" / "siamese-kvasir-tiny", ROOT / "checkpoints" / "siamese-ph2-tiny"
MAX_BYTES = 50 * 2**20  # issue 25: a shipped model is at most 50 MB


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("folder, label, prompt_word", [(POLYPS, "colon polyps (colonoscopy)", "polyp"),
                                                        (SKIN, "skin lesions (dermoscopy)", "skin")])
def test_a_bundled_model_loads_names_itself_and_samples(folder, label, prompt_word):
    model = load_model(folder)
    assert model.config.label == label and prompt_word in model.config.prompt
    assert _size(folder) <= MAX_BYTES, f"{folder.name} is {_size(folder) / 2**20:.1f} MB"
    mask = np.zeros((256, 256), np.uint8)
    mask[80:170, 60:150] = 1
    params = SamplingParams(**{**model_presets(model)["default"], "steps": 4})
    image = generate(model, mask, 1, seed=3, params=params)[0].image
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and image.std() > 5


def test_the_skin_model_brings_its_examples_figure_and_build_record():
    examples = sorted((SKIN / "examples").glob("*.png"))
    assert len(examples) >= 4
    for path in examples:
        mask = read_mask(path)
        assert mask.shape == (256, 256) and 0 < mask.mean() < 1
    assert (SKIN / FIGURE_NAME).is_file()
    build = json.loads((SKIN / "build.json").read_text())
    config = json.loads((SKIN / "siamese_config.json").read_text())
    chosen = build["recommended"]
    assert (config["control_scale"], config["autoguidance"]) == (chosen["control_scale"], chosen["autoguidance"])
    assert config["sampling_presets"]["default"]["guidance_scale"] == chosen["guidance_scale"]
    assert (SKIN / "guide").is_dir() == (chosen["autoguidance"] != 1)


def test_the_skin_models_card_shows_its_evaluation():
    evaluation = json.loads((SKIN / "evaluation.json").read_text())
    card = (SKIN / "README.md").read_text()
    fidelity = evaluation["fidelity"]
    for arm in ("real", "generated"):
        assert f"{fidelity[arm]['dice']:.3f}" in card
    assert f"ratio {evaluation['memorisation']['ratio']:.3f}" in card
    assert evaluation["settings"]["seeds"] == 4 and "Downstream benefit" in card
    share = fidelity["generated"]["dice"] / fidelity["real"]["dice"]
    assert f"fidelity Dice / real ceiling {share:.3f}" in card and FIGURE_NAME in card


def test_a_user_picks_the_skin_model_in_the_app_and_generates_a_lesion_where_it_was_drawn(tmp_path):
    """The app with the bundled models (the polyp model the default): the selector offers the skin model by its
    label; picking it brings its example masks and prompt; an example mask generates an image through the
    Generate handler with the skin model's settings."""
    from studio.server import Studio
    from studio.settings import Settings

    studio = Studio(str(POLYPS), checkpoints_dir=ROOT / "checkpoints", runs_dir=tmp_path / "runs",
                    settings=Settings(data_root=tmp_path))
    choices = dict(studio.catalog.choices())
    skin = choices["skin lesions (dermoscopy) (checkpoints)"]
    assert choices["colon polyps (colonoscopy) (default)"] != skin
    gallery, prompt = studio.generate.model_defaults(skin)
    names = [entry["caption"] for entry in gallery.value]
    assert names == [p.stem for p in sorted((SKIN / "examples").glob("*.png"))] and "skin" in prompt.value
    mask_png = tmp_path / "mask.png"
    mask_png.write_bytes((SKIN / "examples" / f"{names[0]}.png").read_bytes())
    _, shots, status = studio.generate.generate(str(mask_png), "", 1, 4, 6.0, 5, "dpm++", skin, False, [])
    item = shots[0].item
    recommended = json.loads((SKIN / "siamese_config.json").read_text())["control_scale"]
    assert item.params["control_scale"] == recommended and "seeds 5" in status
    lesion = read_mask(mask_png).astype(bool)
    inside, outside = item.image[lesion].mean(), item.image[~lesion].mean()
    assert inside < outside - 20, "the pigmented lesion is darker than the skin around it, where it was drawn"

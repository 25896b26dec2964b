"""A model folder's own settings: siamese_config.json (`SiameseConfig`), each value checked as it is read."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .params import MAX_AUTOGUIDANCE, is_real, is_whole
from .presets import presets_problem

__all__ = ["SiameseConfig", "ModelLoadError", "label_problem", "CONFIG_NAME", "MAX_LABEL_CHARS", "DHI_WIDTHS"]

CONFIG_NAME = "siamese_config.json"
MAX_LABEL_CHARS = 80  # a model's label (SiameseConfig.label): one short line
DHI_WIDTHS = (16, 32, 64, 128, 256)

class ModelLoadError(ValueError):
    """A model folder or hub id that cannot be loaded; the message says why and what is expected."""


@dataclass
class SiameseConfig:
    """What a model folder needs besides the diffusers components."""

    resolution: int = 384
    prompt: str = ""
    codec: dict = field(default_factory=lambda: {"type": "vae"})
    dhi_widths: tuple[int, ...] = DHI_WIDTHS
    name: str = ""
    control_scale: float = 1.0  # recommended sampling control scale (SamplingParams.control_scale None uses it)
    control_end: float = 1.0  # recommended fraction of the steps the ControlNet acts in (SamplingParams.control_end)
    autoguidance: float = 1.0  # recommended autoguidance weight (SamplingParams.autoguidance; 1: off; needs guide/)
    # measured sampling presets, "default" and "fast" (`siamese.presets`; absent ones: presets.FALLBACK_PRESETS)
    sampling_presets: dict = field(default_factory=dict)
    # what the model makes, for people (the app's model selector), e.g. "skin lesions (dermoscopy)"; None: its name
    label: str | None = None

    def save(self, folder: Path) -> None:
        """siamese_config.json, written atomically (a temporary file renamed over it)."""
        tmp = folder / f".{CONFIG_NAME}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, folder / CONFIG_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> SiameseConfig:
        """Read siamese_config.json (a folder without one is a plain Stable Diffusion folder); a malformed file or
        a value of the wrong type is a ModelLoadError naming the file and the key."""
        folder = Path(folder)
        path = folder / CONFIG_NAME
        if not path.exists():  # a plain Stable Diffusion folder
            return cls(name=folder.name)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ModelLoadError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot be read ({e.strerror})") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path}: expected a JSON object of settings, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelLoadError(f"{path}: unknown keys {sorted(unknown)}")
        for key, value in data.items():
            expected = _config_problem(key, value)
            if expected:
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise ModelLoadError(f"{path}: '{key}' must be {expected}, got {shown}")
        data["dhi_widths"] = tuple(data.get("dhi_widths", DHI_WIDTHS))
        return cls(**data)


def _config_problem(key: str, value) -> str | None:
    """What a siamese_config.json value must be, or None when it is fine."""
    if key == "resolution":
        ok = is_whole(value) and value % 8 == 0 and 8 <= value <= 4096
        return None if ok else "a whole number of pixels, a multiple of 8 between 8 and 4096"
    if key in ("prompt", "name"):
        return None if isinstance(value, str) else "text"
    if key == "codec":
        return None if isinstance(value, dict) and isinstance(value.get("type", "vae"), str) else \
            'an object such as {"type": "vae"}'
    if key == "dhi_widths":
        ok = isinstance(value, list) and value and all(is_whole(w) and w > 0 for w in value)
        return None if ok else "a list of positive whole numbers (channel widths)"
    if key == "control_scale":
        ok = is_real(value) and value >= 0
        return None if ok else "a number, 0 or more"
    if key == "control_end":
        ok = is_real(value) and 0 < value <= 1
        return None if ok else "a fraction of the sampling steps, above 0 and at most 1"
    if key == "autoguidance":
        ok = is_real(value) and 1 <= value <= MAX_AUTOGUIDANCE
        return None if ok else f"a number from 1 (off) to {MAX_AUTOGUIDANCE:g}"
    if key == "sampling_presets":
        return presets_problem(value)
    if key == "label":
        return label_problem(value)
    return None


def label_problem(value) -> str | None:
    """What a model's label (SiameseConfig.label) must be, or None when it is fine (None is: the name is shown)."""
    ok = value is None or (isinstance(value, str) and 0 < len(value.strip()) <= MAX_LABEL_CHARS and value.isprintable())
    return None if ok else f"null or one line of text of 1 to {MAX_LABEL_CHARS} characters"

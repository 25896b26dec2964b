"""Sampling presets: named speed/quality settings a model recommends, kept in its siamese_config.json.

    "sampling_presets": {"default": {"scheduler": "dpm++", "steps": 16, "cache_interval": 2, "precision": "bfloat16"},
                         "fast":    {"scheduler": "dpm++", "steps": 8, ...}}

"default" is the measured best trade-off of speed and quality (what the app samples with unless told otherwise),
"fast" a preview setting. A preset holds only the keys of `PRESET_KEYS`; the mask strength, its steps and the
autoguidance weight stay the model's recommended values (`SamplingParams`' None). A folder that records no presets
(written before they existed) gets `FALLBACK_PRESETS`: its "default" is the app's setting before presets, so such
a model samples as it always did.

    params = preset_params(model, "fast")                 # SamplingParams, ready for generate()
    params = preset_params(model, "default", steps=20)    # a preset with some settings changed

Below the model: nothing here imports the rest of the package but `params`.
"""

from __future__ import annotations

from typing import Any

from .params import ModelLike, SamplingParams

__all__ = ["PRESET_NAMES", "PRESET_KEYS", "FALLBACK_PRESETS", "presets_problem", "config_presets", "model_presets",
           "preset_params"]

PRESET_NAMES = ("default", "fast")
PRESET_KEYS = ("scheduler", "steps", "guidance_scale", "cache_interval", "precision")
FALLBACK_PRESETS: dict[str, dict[str, Any]] = {
    # the app's settings before presets (issue 27): DPM-Solver++ 16 steps, guidance 9, every block, float32
    "default": {"scheduler": "dpm++", "steps": 16, "guidance_scale": 9.0, "cache_interval": 1, "precision": "float32"},
    # a preview: half the steps, deep features reused every other step, bfloat16 networks
    "fast": {"scheduler": "dpm++", "steps": 8, "guidance_scale": 9.0, "cache_interval": 2, "precision": "bfloat16"},
}


def presets_problem(presets: Any) -> str | None:
    """What is wrong with a `sampling_presets` value (None when it is fine): an object whose keys are preset names
    and whose values are objects of `PRESET_KEYS` with valid settings."""
    if not isinstance(presets, dict):
        return "an object of named presets"
    for name, preset in presets.items():
        if name not in PRESET_NAMES:
            return f"an object whose keys are preset names ({', '.join(PRESET_NAMES)}), not '{name}'"
        if not isinstance(preset, dict) or not set(preset) <= set(PRESET_KEYS):
            return f"an object of presets, each an object of some of {', '.join(PRESET_KEYS)} ('{name}' is not)"
        if isinstance(preset.get("steps"), bool) or not isinstance(preset.get("steps", 1), int):
            return f"presets with a whole number of steps ('{name}' has {preset.get('steps')!r})"
        try:
            SamplingParams(**preset).validate()
        except (TypeError, ValueError) as e:
            return f"valid sampling settings ('{name}': {e})"
    return None


def config_presets(config: Any) -> dict[str, dict[str, Any]]:
    """Every preset a model config records (a `SiameseConfig`, or its siamese_config.json as a dict), complete (each
    with all of `PRESET_KEYS`): its `sampling_presets` over `FALLBACK_PRESETS`, preset by preset and key by key."""
    recorded = (config.get("sampling_presets") if isinstance(config, dict)
                else getattr(config, "sampling_presets", None)) or {}
    return {name: {**FALLBACK_PRESETS[name], **recorded.get(name, {})} for name in PRESET_NAMES}


def model_presets(model: ModelLike) -> dict[str, dict[str, Any]]:
    """Every preset of `model`, complete (`config_presets` of its config). The app reads its choices and their
    settings here."""
    return config_presets(model.config)


def preset_params(model: ModelLike, name: str = "default", **overrides: Any) -> SamplingParams:
    """The `SamplingParams` of `model`'s preset `name`, with `overrides` (any SamplingParams field) put over it;
    an unknown preset name is a ValueError naming the known ones."""
    if name not in PRESET_NAMES:
        raise ValueError(f"preset must be one of {', '.join(PRESET_NAMES)}, got {name!r}")
    params = SamplingParams(**{**model_presets(model)[name], **overrides})
    params.validate()
    return params

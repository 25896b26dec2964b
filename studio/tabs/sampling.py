"""Not a tab: the sampling settings Generate and Batch share.

One table of defaults and ranges serves the widgets (their limits) and the handlers (their checks), so the API
takes what the page offers; `read_params` reads the settings a request sends into one `SamplingParams`, and
`fit_autoguidance` fits it to the model. The mask strength, mask steps and autoguidance sliders are preset by the
selected model (`preset`: what the model selector sends them). The Speed choice (Default / Fast preview) sets the
steps, scheduler, guidance, feature reuse and precision from the model's measured presets (`siamese.presets`;
`speed_values`), when it changes and when the model does.
"""

from __future__ import annotations

import gradio as gr

from siamese import SamplingParams
from siamese.params import MAX_CACHE_INTERVAL, PRECISIONS
from siamese.presets import PRESET_NAMES, config_presets, model_presets
from siamese.sampling import MAX_CONTROL_SCALE, MAX_SEED, SCHEDULERS

from .. import inputs
from ..replies import shorten

# The handlers' defaults for direct calls (the page's widgets start at the default model's "default" preset,
# `default_speed`): the app's settings before presets, `siamese.presets.FALLBACK_PRESETS["default"]`
DEFAULTS = dict(scheduler="dpm++", steps=16, guidance_scale=9.0, num_images=4)
STEPS = (1, 100)
GUIDANCE = (0.0, 15.0)
CONTROL_SCALE = (0.0, MAX_CONTROL_SCALE)
CONTROL_END = (0.05, 1.0)
AUTOGUIDANCE_MAX = 4.0  # the sliders' top, unless the model recommends more
SPEEDS = (("Default", "default"), ("Fast preview", "fast"))  # the Speed choice: (label, the model's preset name)
CACHE_INTERVAL = (1, MAX_CACHE_INTERVAL)
AUTOGUIDANCE_INFO = ("pushes the images away from the model's weaker guide: cleaner, more faithful; 1: off; costs "
                     "about 40% more time; preset per model (off without a guide)")


def read_params(prompt, steps, guidance_scale, scheduler, control_scale, control_end, autoguidance,
                cache_interval=1, precision="float32") -> SamplingParams:
    """The sampling settings of a request, each checked against its widget's range (None for control_scale,
    control_end and autoguidance: the model's recommended value; cache_interval 1 and precision float32: every block
    in every step, in float32). Autoguidance's top depends on the model: `fit_autoguidance` checks it."""
    scheduler = inputs.text(scheduler, "scheduler") or ""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got '{shorten(scheduler)}'")
    precision = inputs.text(precision, "precision") or ""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{shorten(precision)}'")
    control_end = inputs.number(control_end, "control end", optional=True)
    if control_end is not None and not CONTROL_END[0] <= control_end <= CONTROL_END[1]:
        raise ValueError(f"control end must be a fraction of the steps, from {CONTROL_END[0]:g} to "
                         f"{CONTROL_END[1]:g}, got {control_end:g}")
    autoguidance = inputs.number(autoguidance, "autoguidance", optional=True)
    if autoguidance is not None and autoguidance < 1:
        raise ValueError(f"autoguidance must be between 1 (off) and {AUTOGUIDANCE_MAX:g}, got {autoguidance:g}")
    return SamplingParams(prompt=inputs.text(prompt, "prompt"),
                          steps=inputs.number(steps, "steps", whole=True, low=STEPS[0], high=STEPS[1]),
                          guidance_scale=inputs.number(guidance_scale, "guidance scale", low=GUIDANCE[0],
                                                       high=GUIDANCE[1]),
                          scheduler=scheduler,
                          control_scale=inputs.number(control_scale, "control scale", optional=True,
                                                      low=CONTROL_SCALE[0], high=CONTROL_SCALE[1]),
                          control_end=control_end, autoguidance=autoguidance,
                          cache_interval=inputs.number(cache_interval, "cache interval", whole=True,
                                                       low=CACHE_INTERVAL[0], high=CACHE_INTERVAL[1]),
                          precision=precision)


def read_speed(speed) -> str:
    """The Speed choice: a preset name of `PRESET_NAMES`."""
    name = inputs.text(speed, "speed") or ""
    if name not in PRESET_NAMES:
        raise ValueError(f"speed must be one of {', '.join(PRESET_NAMES)}, got '{shorten(name)}'")
    return name


def speed_values(model, speed: str) -> tuple[gr.Slider, gr.Dropdown, gr.Slider, gr.Slider, gr.Dropdown]:
    """The steps, scheduler, guidance, cache interval and precision widgets set to `model`'s preset `speed`."""
    p = model_presets(model)[speed]
    return (gr.Slider(value=p["steps"]), gr.Dropdown(list(SCHEDULERS), value=p["scheduler"]),
            gr.Slider(value=p["guidance_scale"]), gr.Slider(value=p["cache_interval"]),
            gr.Dropdown(list(PRECISIONS), value=p["precision"]))


def describe_speed(params: SamplingParams) -> str:
    """The speed part of a status line (" · features reused over 2 steps · bfloat16"); nothing for the plain
    sampler."""
    text = f" · features reused over {params.cache_interval} steps" if params.cache_interval > 1 else ""
    return text + (f" · {params.precision}" if params.precision != "float32" else "")


def autoguidance_top(model) -> float:
    """The autoguidance slider's top for a model: AUTOGUIDANCE_MAX, or its recommended weight when higher."""
    return max(AUTOGUIDANCE_MAX, float(model.config.autoguidance))


def fit_autoguidance(params: SamplingParams, model) -> str:
    """Fit the settings' autoguidance to the model. Above the model's slider top: a ValueError. A model without a
    guide samples at autoguidance 1, whatever was asked: its slider is locked at 1, but a script leaving the setting
    out gets the default model's value; `params.autoguidance` is set to 1 then and a note for the status line
    returned ("" otherwise)."""
    weight = params.autoguidance
    if weight is not None and weight > autoguidance_top(model):
        raise ValueError(f"autoguidance must be between 1 (off) and {autoguidance_top(model):g}, got {weight:g}")
    if model.guide is None and weight is not None and float(weight) != 1.0:
        params.autoguidance = 1.0
        return " (autoguidance off: this model has no guide)"
    return ""


def describe_autoguidance(weight: float) -> str:
    """The autoguidance part of a status line (" · autoguidance W"); nothing when it is off (1)."""
    return "" if float(weight) == 1.0 else f" · autoguidance {float(weight):g}"


# -- widgets
def default_speed(recommended) -> dict:
    """The widgets' first values: the "default" preset of the default model's config (`recommended`)."""
    return config_presets(recommended)["default"]


def speed_radio(**kwargs) -> gr.Radio:
    return gr.Radio(list(SPEEDS), value="default", label="Speed", info="the model's measured settings: Default "
                    "(its best trade-off of speed and quality) or Fast preview; sets the steps, scheduler, guidance, "
                    "feature reuse and precision", **kwargs)


def steps_slider(value: int = DEFAULTS["steps"], **kwargs) -> gr.Slider:
    return gr.Slider(*STEPS, value=value, step=1, label="Steps", **kwargs)


def guidance_slider(value: float = DEFAULTS["guidance_scale"]) -> gr.Slider:
    return gr.Slider(*GUIDANCE, value=value, step=0.5, label="Guidance scale")


def speed_widgets(preset: dict) -> tuple[gr.Slider, gr.Dropdown]:
    """The Feature reuse slider and the Precision choice, at a preset's values."""
    cache = gr.Slider(*CACHE_INTERVAL, value=preset["cache_interval"], step=1, label="Feature reuse (steps)",
                      info="the deep network features are computed every k-th step and reused between (1: off)")
    precision = gr.Dropdown(list(PRECISIONS), value=preset["precision"], label="Precision",
                            info="bfloat16: faster on CPUs with bfloat16 instructions")
    return cache, precision


def control_slider(value: float, info: str) -> gr.Slider:
    return gr.Slider(*CONTROL_SCALE, value=value, step=0.25, label="Mask strength (control scale)", info=info)


def control_end_slider(value: float, info: str) -> gr.Slider:
    return gr.Slider(*CONTROL_END, value=value, step=0.05, label="Mask steps (share of the steps)", info=info)


def autoguidance_slider(value: float = 1.0, guided: bool = True) -> gr.Slider:
    """The Autoguidance slider: at `value` (the model's recommended weight), usable only when the model has a
    guide."""
    return gr.Slider(1.0, max(AUTOGUIDANCE_MAX, float(value)), value=float(value) if guided else 1.0, step=0.25,
                     label="Autoguidance", info=AUTOGUIDANCE_INFO, interactive=guided)


def seed_row(scheduler: str = DEFAULTS["scheduler"]) -> tuple[gr.Dropdown, gr.Number, gr.Checkbox]:
    """Scheduler, Seed and Randomise seed, in a row."""
    with gr.Row():
        scheduler = gr.Dropdown(list(SCHEDULERS), value=scheduler, label="Scheduler")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
        randomize = gr.Checkbox(True, label="Randomise seed")
    return scheduler, seed, randomize


def preset(model) -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    """The mask strength, mask steps and autoguidance sliders for a loaded model: its recommended values
    (autoguidance 1 and locked when it has no guide)."""
    if model.guide is None:
        autoguidance = gr.Slider(value=1.0, maximum=AUTOGUIDANCE_MAX, interactive=False)
    else:
        weight = float(model.config.autoguidance)
        autoguidance = gr.Slider(value=weight, maximum=autoguidance_top(model), interactive=True)
    return gr.Slider(value=model.config.control_scale), gr.Slider(value=model.config.control_end), autoguidance

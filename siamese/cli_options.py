"""Command-line options made from the settings themselves, so that no default or help text is written twice.

`add_config_options` turns the fields of a settings dataclass (`TrainConfig`) into options: `--field-name`, the
field's type and default, and the help, choices or other option name in its metadata (`train_config.setting`);
`config_from_args` builds the dataclass back from the parsed arguments. `add_sampling_options` declares the
sampling options that `sample` and `evaluate` share; `add_speed_options` the preset and speed options of `sample`;
`add_device_option` the checked `--device` of `sample`, `evaluate` and `build`.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from .params import MAX_CACHE_INTERVAL, PRECISIONS, SCHEDULERS
from .presets import PRESET_NAMES

__all__ = ["add_config_options", "config_from_args", "add_sampling_options", "add_speed_options", "add_device_option",
           "device_type", "default_device", "fractions", "CONTROL_SCALE_HELP", "CONTROL_END_HELP", "AUTOGUIDANCE_HELP"]

CONTROL_SCALE_HELP = ("multiplies the ControlNet residuals: how strongly the mask acts (1: as trained, 0: ignored; "
                      "default: the model's recommended value)")
AUTOGUIDANCE_HELP = ("autoguidance weight: above 1 pushes the images away from the model's guide, a weaker version of "
                     "it (1: off; needs a guide, see add-guide; default: the model's recommended value)")
CONTROL_END_HELP = ("fraction of the sampling steps, from the first, in which the mask acts (1: all; 0.5: the noisier "
                    "half, which decides the layout; default: the model's recommended value)")


def _value_type(annotation: Any) -> type:
    """The type an option's text is converted to: str, int, float or bool (`X | None` counts as X)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation not in (str, int, float, bool):
        raise TypeError(f"a command-line setting must be text, a whole number, a number or a switch, got {annotation}")
    return annotation


def add_config_options(parser: argparse.ArgumentParser, cls: type, only: tuple[str, ...] | None = None) -> None:
    """One option per field of the dataclass `cls` that is not `hidden` (or per field named in `only`): required when
    the field has no default; a bool field is a switch (`--name` sets True; with a `flag` and default True, the flag
    sets it False)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        meta = f.metadata
        if meta.get("hidden") or (only is not None and f.name not in only):
            continue
        kind = _value_type(hints[f.name])
        name = meta.get("flag", "--" + f.name.replace("_", "-"))
        kw: dict[str, Any] = {"dest": f.name, "help": meta.get("help") or None}
        if kind is bool:
            kw.update(action="store_false" if f.default is True else "store_true")
        elif f.default is MISSING:
            kw.update(type=kind, required=True)
        else:
            kw.update(type=kind, default=f.default)
        if "choices" in meta:
            kw["choices"] = tuple(meta["choices"])
        parser.add_argument(name, **kw)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass `cls` from parsed arguments: every option `add_config_options` made, the hidden fields at their
    defaults."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if not f.metadata.get("hidden")})


def add_sampling_options(parser: argparse.ArgumentParser, *, steps: int | None, guidance: float | None,
                         scheduler: str | None, guidance_help: str | None = None) -> None:
    """The sampling options `sample` and `evaluate` share (their defaults differ): --steps, --guidance,
    --scheduler, --control-scale, --control-end and --autoguidance. A default of None: the preset's value
    (`add_speed_options`)."""
    preset = "the preset's"
    parser.add_argument("--steps", type=int, default=steps,
                        help=f"denoising steps (default {preset if steps is None else '%(default)s'})")
    parser.add_argument("--guidance", type=float, default=guidance,
                        help=guidance_help or "classifier-free guidance scale (default "
                                              f"{preset if guidance is None else '%(default)g'})")
    parser.add_argument("--scheduler", default=scheduler, choices=SCHEDULERS,
                        help=f"sampling scheduler (default {preset if scheduler is None else '%(default)s'})")
    parser.add_argument("--control-scale", type=float, default=None, help=CONTROL_SCALE_HELP)
    parser.add_argument("--control-end", type=float, default=None, help=CONTROL_END_HELP)
    parser.add_argument("--autoguidance", type=float, default=None, help=AUTOGUIDANCE_HELP)


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    """`sample`'s preset and speed options: --preset (the model's named settings, `siamese.presets`), --cache-interval
    and --precision (None: the preset's, as for --steps, --scheduler and --guidance given as None)."""
    parser.add_argument("--preset", default="default", choices=PRESET_NAMES,
                        help="the model's sampling preset (its siamese_config.json): 'default', the measured best "
                             "trade-off of speed and quality, or 'fast', a preview; --steps, --scheduler, --guidance, "
                             "--cache-interval and --precision override its values (default %(default)s)")
    parser.add_argument("--cache-interval", type=int, default=None,
                        help=f"feature reuse: the networks' deep features are computed every k-th step and reused "
                             f"between (1: every step computes every block; at most {MAX_CACHE_INTERVAL}; default: "
                             "the preset's)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="what the networks compute in (bfloat16: faster on CPUs with bfloat16 instructions and "
                             "on GPUs; default: the preset's)")


def fractions(text: str) -> tuple[float, ...]:
    """'0.5,0.7' -> (0.5, 0.7); argparse turns the ValueError into its one-line error."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers between 0 and 1, got '{text}'") from None
    if not values or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers between 0 and 1, got '{text}'")
    return values


def default_device(device: str | None) -> str:
    """--device, or CUDA when available."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def device_type(text: str) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'mps', checked against this machine's torch; argparse turns the error into its
    one-line error before anything is read or written."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got '{text}'") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise argparse.ArgumentTypeError(f"'{text}': CUDA is not available ({why}); use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"'{text}': there {'is' if count == 1 else 'are'} {count} CUDA "
                                             f"device{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"'{text}': MPS (Apple GPU) is not available here; use --device cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got '{text}'")
    return text


def add_device_option(parser: argparse.ArgumentParser, what: str = "") -> None:
    """--device, checked against this machine's torch (`device_type`); None when not given (`default_device`)."""
    parser.add_argument("--device", type=device_type, default=None, help="cpu, cuda, cuda:N or mps (default: cuda "
                        "when available)" + (f"; {what}" if what else ""))

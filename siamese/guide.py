"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"): at sampling time
the model's conditional noise prediction is pushed away from that of a weaker version of the same model, its
guide (the same network trained less):

    eps = eps_cfg + (w - 1) (eps_cond - eps_guide)

where eps_cfg is the usual classifier-free guided prediction, eps_cond the model's conditional prediction and
w the autoguidance weight (1: off). Both see the same prompt and mask.

A model folder keeps its guide in `guide/`: `guide.safetensors` holds only the tensors in which the guide differs
from the model ("unet.<name>", "controlnet.<name>"), `guide_config.json` where it came from. A guide made from an
earlier stage of the same training run differs in the ControlNet and the UNet decoder only (the Siamese stages
train nothing else): its UNet encoder is the model's, so sampling reuses the model's encoding and runs the
guide's ControlNet and UNet decoder alone.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import Tensor

from .files import atomic_folder
from .networks import UNET_DECODER_PREFIXES, DHIControlNetModel

logger = logging.getLogger(__name__)

__all__ = ["Guide", "GuideError", "GUIDE_FOLDER", "build_guide", "guide_of_model", "guide_tensors", "load_guide",
           "make_guide", "save_guide"]

GUIDE_FOLDER = "guide"
WEIGHTS_NAME = "guide.safetensors"
CONFIG_NAME = "guide_config.json"


class GuideError(ValueError):
    """A guide that does not fit its model; the message says why."""


@dataclass
class Guide:
    """A weaker version of a model, for autoguidance: `unet` is the model's UNet with the guide's tensors;
    `controlnet` the guide's ControlNet, or None when it is the model's own; `shares_encoder` whether the UNet
    encoder (time embedding, conv_in, down and middle blocks) is the model's, so its encoding can be reused."""

    unet: UNet2DConditionModel
    controlnet: DHIControlNetModel | None
    shares_encoder: bool
    source: str = ""

    def modules(self) -> dict[str, torch.nn.Module]:
        mods: dict[str, torch.nn.Module] = {"guide_unet": self.unet}
        if self.controlnet is not None:
            mods["guide_controlnet"] = self.controlnet
        return mods


def guide_tensors(model, weaker) -> dict[str, Tensor]:
    """The tensors in which `weaker`'s networks differ from `model`'s (each has `unet` and `controlnet`: a
    SiameseModel or a Guide), keyed "unet.<name>" / "controlnet.<name>". Both need the same architecture (the same
    names and shapes); a part the model lacks (no ControlNet: a base model) is not compared."""
    out: dict[str, Tensor] = {}
    for part in ("unet", "controlnet"):
        net, other = getattr(model, part), getattr(weaker, part)
        if net is None:
            continue
        if other is None:
            raise GuideError(f"the guide has no {part}: it must be a model of the same architecture (the same model "
                             "trained less)")
        ours, theirs = net.state_dict(), other.state_dict()
        if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
            raise GuideError(f"the guide's {part} is not of the same architecture as the model's: a guide is the same "
                             "model trained less (an earlier stage or checkpoint of its training)")
        for name, value in theirs.items():
            if not torch.equal(value.to(ours[name].device, ours[name].dtype), ours[name]):
                out[f"{part}.{name}"] = value.detach().cpu()
    if not out:
        raise GuideError("the guide is the model itself (no tensor differs): a guide is the same model trained less")
    return out


def make_guide(model, weaker, source: str = "") -> Guide:
    """`weaker` (a SiameseModel of the same architecture, trained less) as the Guide of `model`."""
    return build_guide(guide_tensors(model, weaker), model.unet, model.controlnet, source)


def save_guide(folder: str | Path, tensors: dict[str, Tensor], source: str = "",
               dtype: torch.dtype | None = None) -> Path:
    """Write `folder`/guide/ (the tensors, in `dtype` when given, and guide_config.json); returns that folder.
    Written through `atomic_folder`, so a model folder never holds half a guide."""
    target = Path(folder) / GUIDE_FOLDER
    with atomic_folder(target) as tmp:
        save_file({k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
                   for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME))
        parts = sorted({k.split(".", 1)[0] for k in tensors})
        (tmp / CONFIG_NAME).write_text(json.dumps({"source": source, "tensors": len(tensors), "parts": parts},
                                                  indent=2) + "\n")
    return target


def load_guide(folder: str | Path, unet: UNet2DConditionModel, controlnet: DHIControlNetModel | None) -> Guide | None:
    """The guide of the model folder `folder` built over the model's loaded networks (None when it has none)."""
    path = Path(folder) / GUIDE_FOLDER / WEIGHTS_NAME
    if not path.exists():
        return None
    try:
        tensors = load_file(str(path))
        config = json.loads((path.parent / CONFIG_NAME).read_text())
    except (OSError, ValueError) as e:
        raise GuideError(f"{path.parent}: cannot read the guide ({e})") from None
    return build_guide(tensors, unet, controlnet, str(config.get("source", "")))


def build_guide(tensors: dict[str, Tensor], unet: UNet2DConditionModel, controlnet: DHIControlNetModel | None,
                source: str = "") -> Guide:
    """A Guide: copies of the model's networks with `tensors` (as `guide_tensors` makes them) put in."""
    nets: dict[str, torch.nn.Module | None] = {"unet": unet, "controlnet": controlnet}
    per_part: dict[str, dict[str, Tensor]] = {"unet": {}, "controlnet": {}}
    for key, value in tensors.items():
        part, _, name = key.partition(".")
        if part not in per_part or nets[part] is None:
            raise GuideError(f"the guide has a tensor '{key}' that the model has nowhere to put")
        per_part[part][name] = value
    copies: dict[str, torch.nn.Module | None] = {"unet": copy.deepcopy(unet), "controlnet": None}
    if per_part["controlnet"]:
        copies["controlnet"] = copy.deepcopy(controlnet)
    for part, named in per_part.items():
        if not named:
            continue
        state = copies[part].state_dict()
        for name, value in named.items():
            if name not in state or state[name].shape != value.shape:
                raise GuideError(f"the guide's tensor '{part}.{name}' does not fit the model "
                                 f"({tuple(value.shape)}); a guide is the same model trained less")
            state[name].copy_(value.to(state[name].dtype))
    for net in copies.values():
        if net is not None:
            net.requires_grad_(False).eval()
    shares = all(name.startswith(UNET_DECODER_PREFIXES) for name in per_part["unet"])  # the UNet decoder only
    return Guide(copies["unet"], copies["controlnet"], shares, source)


def guide_of_model(guide: Guide, unet: UNet2DConditionModel, controlnet: DHIControlNetModel | None) -> dict[str, Tensor]:
    """The tensors in which `guide` differs from the model's networks (what `save_guide` writes)."""
    weaker = SimpleNamespace(unet=guide.unet, controlnet=guide.controlnet or controlnet)  # None: the model's own
    return guide_tensors(SimpleNamespace(unet=unet, controlnet=controlnet), weaker)

"""diffusers-native model folders: `model_index.json` and the code diffusers needs to load them.

Every folder `SiameseModel.save_pretrained` writes gets

    model_index.json                  components and the pipeline class, as diffusers' save_pretrained writes it
    pipeline_siamese.py               SiameseDiffusionPipeline (siamese/carried/pipeline_siamese.py)
    controlnet/siamese_networks.py    the DHI ControlNet class (a copy of siamese/networks.py)
    codec/patch_codec.py              the tiny preset's patch codec (siamese/carried/patch_codec.py; not for a VAE)

so that `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads it with diffusers and
transformers alone (diffusers imports a component's class from `<component>/<module>.py` and the pipeline from
`<module>.py` at the root, named in model_index.json, only with `trust_remote_code=True`). The pipeline makes the
same images as `siamese.generate` for the same mask, seed and settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["MODEL_INDEX", "PIPELINE_FILE", "PIPELINE_CLASS", "model_index", "write_diffusers_files",
           "carried_files"]

MODEL_INDEX = "model_index.json"
PIPELINE_FILE = "pipeline_siamese.py"
PIPELINE_CLASS = "SiameseDiffusionPipeline"
CONTROLNET_MODULE = "siamese_networks"  # controlnet/siamese_networks.py: siamese/networks.py as it is
CODEC_MODULE = "patch_codec"  # codec/patch_codec.py
_HERE = Path(__file__).resolve().parent


def carried_files(has_controlnet: bool, codec_type: str) -> dict[str, Path]:
    """Path in the model folder -> source file of this package, for the code a folder carries."""
    files = {PIPELINE_FILE: _HERE / "carried" / PIPELINE_FILE}
    if has_controlnet:
        files[f"controlnet/{CONTROLNET_MODULE}.py"] = _HERE / "networks.py"
    if codec_type == "patch":
        files[f"codec/{CODEC_MODULE}.py"] = _HERE / "carried" / f"{CODEC_MODULE}.py"
    return files


def model_index(config, has_controlnet: bool) -> dict:
    """The model_index.json of a model folder with `config` (a SiameseConfig): the pipeline class, each component
    as [library or module, class] ([null, null] when absent), and the pipeline's settings from the config."""
    import diffusers

    patch = config.codec.get("type") == "patch"
    return {
        "_class_name": [PIPELINE_FILE[:-3], PIPELINE_CLASS],
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "controlnet": [CONTROLNET_MODULE, "DHIControlNetModel"] if has_controlnet else [None, None],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "codec": [CODEC_MODULE, "PatchCodec"] if patch else [None, None],
        "vae": [None, None] if patch else ["diffusers", "AutoencoderKL"],
        "resolution": int(config.resolution),
        "prompt": config.prompt,
        "control_scale": float(config.control_scale),
        "control_end": float(config.control_end),
    }


def write_diffusers_files(folder: str | Path, config, has_controlnet: bool) -> Path:
    """Write model_index.json and copy the carried code into a model folder (each file written atomically).
    Touches no weights: the bundled model got its files this way."""
    folder = Path(folder)
    codec_type = config.codec.get("type", "vae")
    for rel, source in carried_files(has_controlnet, codec_type).items():
        atomic_write(folder / rel, source.read_bytes())
    index = model_index(config, has_controlnet)
    atomic_write(folder / MODEL_INDEX, (json.dumps(index, indent=2) + "\n").encode())
    logger.info("wrote %s and the pipeline code to %s", MODEL_INDEX, folder)
    return folder

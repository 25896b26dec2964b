"""Convert the reference implementation's checkpoints into a model folder of ours.

The authors' code (Qiukunpeng/Siamese-Diffusion, a ControlNet/LDM code base) saves one ControlLDM state dict:

    control_model.*            the ControlNet; its hint block `input_hint_block.0.*` is the DHI (`cldm/dhi.py`:
                               FeatureExtractor) and `input_hint_block.1.*` its zero conv to the first UNet width
    model.diffusion_model.*    the UNet (LDM naming)
    first_stage_model.*        the VAE (LDM naming)
    cond_stage_model.transformer.*   the CLIP text encoder (transformers naming)

merged with Stable Diffusion 1.5 by `tool_merge_control.py` (`.pth`), or as a checkpoint holding only what was
trained (`control_model.*`, perhaps the UNet decoder) over a given SD 1.5 base. The UNet, ControlNet, VAE and text
encoder keys are mapped by diffusers' own LDM conversion (`diffusers.loaders.single_file_utils`); only the DHI
block is mapped here. Pickled files are read with `torch.load(weights_only=True)`: tensors only, no code.

    convert_checkpoint("merged_pytorch_model.pth", "models/siamese-polyps")
    convert_checkpoint("control_only.ckpt", "models/mine", base="stable-diffusion-v1-5")
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint, convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint, create_unet_diffusers_config_from_ldm, create_vae_diffusers_config_from_ldm,
)
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .codec import VAECodec
from .files import atomic_folder
from .model import SCHEDULE, SiameseModel, load_model
from .model_config import SiameseConfig
from .networks import DenseHintInput, DHIControlNetModel

logger = logging.getLogger(__name__)

__all__ = ["ConversionError", "read_checkpoint", "convert_checkpoint", "convert_state_dict", "CHECKPOINT_SUFFIXES",
           "CONTROL", "UNET", "VAE", "TEXT", "DHI_KEYS"]

CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors")
CONTROL, UNET, VAE, TEXT = "control_model.", "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
HINT = CONTROL + "input_hint_block."
# the reference's models/cldm_v15.yaml: what the weights do not tell
SD15_NUM_HEADS = 8
SD15_SCALE_FACTOR = 0.18215
CLIP_HEAD_WIDTH = 64  # CLIP ViT-L/14's text encoder: 12 heads of 64 at width 768
DEFAULT_TOKENIZER = "openai/clip-vit-large-patch14"  # what the reference's FrozenCLIPEmbedder loads
# our DenseHintInput (blocks.N) <- the reference FeatureExtractor (input_hint_block.0.NAME); PatchMerging at 4, 7, 10
DHI_KEYS = {0: "initial_conv", 1: "layer1", 2: "conv_before_res2", 3: "layer2", 4: "patch_merge1",
            5: "conv_before_res3", 6: "layer3", 7: "patch_merge2", 8: "conv_before_res4", 9: "layer4",
            10: "patch_merge3", 11: "conv_before_res5", 12: "layer5"}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says what is wrong and what is expected."""


# -- reading ---------------------------------------------------------------------------------------
def _find_file(path: Path) -> Path:
    """A checkpoint file, or the one checkpoint file inside a folder (e.g. a hub download)."""
    if path.is_file():
        return path
    if not path.exists():
        raise ConversionError(f"{path}: no such file or folder; expected a reference checkpoint "
                              f"({', '.join(CHECKPOINT_SUFFIXES)})")
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(path)) for p in found[:8]) or "none"
        raise ConversionError(f"{path} is a folder with {len(found)} checkpoint files ({names}); name the one to "
                              "convert")
    return found[0]


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a `.ckpt`/`.pth`/`.pt`/`.bin` (torch.load, weights only; a Lightning "state_dict" or a
    "module" entry is unwrapped) or `.safetensors` file, or of the single such file in a folder."""
    path = _find_file(Path(path))
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            data = load_file(path)
        except (SafetensorError, OSError) as e:
            raise ConversionError(f"{path} is not a readable safetensors file ({e})") from None
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            why = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(e).split()))
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", why)
            if found:  # e.g. a Lightning checkpoint's callbacks or hyper-parameters
                raise ConversionError(
                    f"{path} holds Python objects besides tensors ({found.group(1)}), which are never unpickled here "
                    "(that can run code; torch.load(weights_only=True) only): save its state_dict as .safetensors "
                    "where you trust the file, and convert that") from None
            raise ConversionError(f"{path} is not a PyTorch checkpoint that loads with weights_only=True "
                                  f"({why[:200]})") from None
    for wrapper in ("state_dict", "module"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a {type(data).__name__}, not a state dict (names -> tensors)")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from a DataParallel / DeepSpeed wrapper
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    if not any(k.startswith((CONTROL, UNET, VAE, TEXT)) for k in tensors):
        shown = ", ".join(list(tensors)[:5]) or "no tensors"
        raise ConversionError(f"{path} is not a ControlLDM checkpoint: none of its {len(tensors)} tensors is named "
                              f"{CONTROL}*, {UNET}*, {VAE}* or {TEXT}* (first: {shown})")
    return tensors


# -- configs from the weights (no base) -------------------------------------------------------------
def _indices(sd: dict[str, Tensor], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})


def _ldm_original_config(sd: dict[str, Tensor]) -> dict:
    """The reference's cldm_v15.yaml with the widths, depths and attention levels read off the weights."""
    first = sd[UNET + "input_blocks.0.0.weight"]
    ch = first.shape[0]
    blocks = _indices(sd, UNET + "input_blocks.")
    downsamples = [i for i in blocks if UNET + f"input_blocks.{i}.0.op.weight" in sd]
    levels = len(downsamples) + 1
    per_level = (len(blocks) - 1 - len(downsamples)) // levels
    starts = [1 + level * (per_level + 1) for level in range(levels)]
    mult = [sd[UNET + f"input_blocks.{s}.0.out_layers.3.weight"].shape[0] // ch for s in starts]
    attention = [2**level for level, s in enumerate(starts) if UNET + f"input_blocks.{s}.1.proj_in.weight" in sd]
    attn = next(k for k in sd if k.startswith(UNET) and k.endswith("attn2.to_k.weight"))
    depth = len(_indices(sd, attn.split("transformer_blocks.")[0] + "transformer_blocks."))
    unet = dict(in_channels=first.shape[1], out_channels=sd[UNET + "out.2.weight"].shape[0], model_channels=ch,
                attention_resolutions=attention, num_res_blocks=per_level, channel_mult=mult,
                num_heads=SD15_NUM_HEADS, transformer_depth=depth, context_dim=sd[attn].shape[1],
                use_linear_in_transformer=sd[UNET + f"input_blocks.{starts[0]}.1.proj_in.weight"].ndim == 2
                if attention else False)
    vae_ch = sd[VAE + "encoder.conv_in.weight"].shape[0]
    down = _indices(sd, VAE + "encoder.down.")
    ddconfig = dict(ch=vae_ch, ch_mult=[sd[VAE + f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // vae_ch
                                        for i in down],
                    num_res_blocks=len(_indices(sd, VAE + "encoder.down.0.block.")),
                    in_channels=sd[VAE + "encoder.conv_in.weight"].shape[1],
                    out_ch=sd[VAE + "decoder.conv_out.weight"].shape[0],
                    z_channels=sd[VAE + "decoder.conv_in.weight"].shape[1])
    return {"model": {"params": {"unet_config": {"params": unet}, "scale_factor": SD15_SCALE_FACTOR,
                                 "first_stage_config": {"params": {"ddconfig": ddconfig}}}}}


def _text_config(sd: dict[str, Tensor], tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    p = TEXT + "text_model."
    tokens = sd[p + "embeddings.token_embedding.weight"]
    return CLIPTextConfig(
        vocab_size=tokens.shape[0], hidden_size=tokens.shape[1],
        intermediate_size=sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(_indices(sd, p + "encoder.layers.")),
        num_attention_heads=max(1, tokens.shape[1] // CLIP_HEAD_WIDTH),
        max_position_embeddings=sd[p + "embeddings.position_embedding.weight"].shape[0], hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


# -- the DHI (hand-mapped: diffusers knows only the stock hint block) --------------------------------
def _merge_permutation(channels: int) -> Tensor:
    """Feature order of our PatchMerging (pixel_unshuffle: c * 4 + 2 * row + col) -> the reference's
    (concat of x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]: (row + 2 * col) * C + c)."""
    c, row, col = torch.meshgrid(torch.arange(channels), torch.arange(2), torch.arange(2), indexing="ij")
    return ((row + 2 * col) * channels + c).reshape(-1)


def dhi_widths(sd: dict[str, Tensor]) -> tuple[int, ...]:
    """The five DHI widths of a reference ControlNet (16, 32, 64, 128, 256 in the paper's code)."""
    names = ("initial_conv", "conv_before_res2", "conv_before_res3", "conv_before_res4", "conv_before_res5")
    return tuple(int(sd[HINT + f"0.{n}.weight"].shape[0]) for n in names)


def convert_dhi(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """control_model.input_hint_block.* -> our `controlnet_cond_embedding.*` (DenseHintInput with merge bias)."""
    out: dict[str, Tensor] = {}
    for index, name in DHI_KEYS.items():
        src, dst = HINT + f"0.{name}.", f"controlnet_cond_embedding.blocks.{index}."
        if name.startswith("patch_merge"):
            perm = _merge_permutation(sd[src + "norm.weight"].shape[0] // 4)
            out[dst + "norm.weight"] = sd[src + "norm.weight"][perm]
            out[dst + "norm.bias"] = sd[src + "norm.bias"][perm]
            out[dst + "reduction.weight"] = sd[src + "reduction.weight"][:, perm]
            out[dst + "reduction.bias"] = sd[src + "reduction.bias"]
        elif name.startswith("layer"):
            for conv in ("conv1", "conv2"):
                for p in ("weight", "bias"):
                    out[dst + f"{conv}.{p}"] = sd[src + f"{conv}.{p}"]
        else:
            for p in ("weight", "bias"):
                out[dst + p] = sd[src + p]
    for p in ("weight", "bias"):
        out[f"controlnet_cond_embedding.conv_out.{p}"] = sd[HINT + f"1.{p}"]
    return out


# -- loading converted weights with clear errors ----------------------------------------------------
def _load(module: torch.nn.Module, weights: dict[str, Tensor], what: str) -> None:
    """Load `weights` into `module` exactly (its parameters may be empty, on the meta device: they are replaced);
    missing keys, unexpected keys and shape mismatches are named."""
    weights = {k: v for k, v in weights.items() if v is not None}
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [f"{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)}"
             for k in own if k in weights and weights[k].shape != own[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label} ({'; '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})")
    if problems:
        raise ConversionError(f"the checkpoint's {what} does not fit its configuration: {', '.join(problems)}")
    module.load_state_dict({k: weights[k].to(own[k].dtype).contiguous() for k in own}, strict=True, assign=True)


def _has(sd: dict[str, Tensor], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


# -- the conversion --------------------------------------------------------------------------------
def convert_state_dict(
    sd: dict[str, Tensor],
    base: SiameseModel | None = None,
    tokenizer: CLIPTokenizer | None = None,
    resolution: int = 384,
    prompt: str = "",
    name: str = "siamese-reference",
) -> SiameseModel:
    """A reference ControlLDM state dict -> a SiameseModel (float32, CPU).

    With `base` (an SD 1.5 model), its configs, tokenizer and schedule are used, and its weights for every part the
    checkpoint lacks (a control-only checkpoint); without it, the configs are read off the weights (the reference's
    cldm_v15.yaml for the head count) and `tokenizer` is required.
    """
    if not _has(sd, CONTROL):
        raise ConversionError(f"the checkpoint has no ControlNet ({CONTROL}*): it is a Stable Diffusion checkpoint, "
                              "not a Siamese-Diffusion one")
    if HINT + "0.initial_conv.weight" not in sd:
        found = sorted({k[len(HINT):].split(".")[0] for k in sd if k.startswith(HINT)})
        raise ConversionError(f"the ControlNet's hint block is not the DHI (expected {HINT}0.initial_conv.weight, "
                              f"cldm/dhi.py's FeatureExtractor; found input_hint_block entries {found[:6]}): a stock "
                              "ControlNet, not Siamese-Diffusion")
    parts = {"UNet": UNET, "VAE": VAE, "text encoder": TEXT}
    absent = [part for part, prefix in parts.items() if not _has(sd, prefix)]
    if base is None and absent:
        raise ConversionError(f"the checkpoint has no {', no '.join(absent)} ({', '.join(parts[p] + '*' for p in absent)}):"
                              " a control-only checkpoint; pass --base with the Stable Diffusion 1.5 folder it was "
                              "trained on (the same weights the reference merges with tool_merge_control.py)")
    if base is not None and base.codec.to_dict().get("type") != "vae":
        raise ConversionError("the base must be a Stable Diffusion model with a VAE (vae/), not a tiny patch-codec model")
    if base is None and tokenizer is None:
        raise ConversionError("a checkpoint holds no tokenizer: pass a base (its tokenizer/) or a tokenizer")

    # 1. configs: the base's, or read off the weights with diffusers' LDM config helpers
    if base is not None:
        unet_config, vae_config = dict(base.unet.config), dict(base.codec.vae.config)
        text_config, tokenizer = base.text_encoder.config, base.tokenizer
    else:
        original = _ldm_original_config(sd)
        unet_config = create_unet_diffusers_config_from_ldm(original, sd)
        vae_config = create_vae_diffusers_config_from_ldm(original, sd)
        text_config = _text_config(sd, tokenizer)
        unet_config["sample_size"], vae_config["sample_size"] = resolution // 8, resolution

    # 2. UNet: the checkpoint's weights over the base's (a control-only checkpoint may carry the trained decoder);
    #    the networks are built empty (no random initialisation of a billion weights) and filled by `_load`
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
    weights = dict(base.unet.state_dict()) if base is not None else {}
    converted = {k: v for k, v in convert_ldm_unet_checkpoint(sd, unet_config).items() if v is not None}
    if base is not None and len(converted) < len(weights):
        logger.info("UNet: %d of %d weights from the checkpoint, the others from the base", len(converted), len(weights))
    weights.update(converted)
    _load(unet, weights, "UNet (model.diffusion_model.*)")

    # 3. ControlNet: the UNet's encoder layout, the DHI of the checkpoint's widths; its PatchMerging has a bias
    #    (all zero, as in a model of ours written in the reference layout: left out, so outputs stay bit-identical)
    dhi = convert_dhi(sd)
    merge_bias = any(v.any() for k, v in dhi.items() if k.endswith("reduction.bias"))
    with init_empty_weights():
        controlnet = DHIControlNetModel.from_unet(unet, conditioning_embedding_out_channels=dhi_widths(sd),
                                                  load_weights_from_unet=False)
        if merge_bias:
            controlnet.register_to_config(dhi_merge_bias=True)
            controlnet.controlnet_cond_embedding = DenseHintInput(
                controlnet.config.conditioning_channels, dhi_widths(sd), unet.config.block_out_channels[0], merge_bias=True)
    if not merge_bias:
        dhi = {k: v for k, v in dhi.items() if not k.endswith("reduction.bias")}
    weights = {k: v for k, v in convert_controlnet_checkpoint(sd, unet_config).items()
               if v is not None and not k.startswith("controlnet_cond_embedding.")}
    _load(controlnet, {**weights, **dhi}, "ControlNet (control_model.*)")

    # 4. VAE and text encoder: the checkpoint's, or the base's when it has none
    with init_empty_weights():
        vae = AutoencoderKL.from_config(vae_config)
    _load(vae, convert_ldm_vae_checkpoint(sd, vae_config) if _has(sd, VAE) else base.codec.vae.state_dict(),
          "VAE (first_stage_model.*)")
    text_encoder = CLIPTextModel(text_config)
    if _has(sd, TEXT):
        text = {k: v for k, v in convert_ldm_clip_checkpoint(sd).items() if not k.endswith("position_ids")}
        if not any(k.startswith("text_model.") for k in text_encoder.state_dict()):  # transformers >= 5 naming
            text = {k.removeprefix("text_model."): v for k, v in text.items()}
        _load(text_encoder, text, "text encoder (cond_stage_model.transformer.*)")
    else:
        text_encoder.load_state_dict(base.text_encoder.state_dict())

    config = SiameseConfig(resolution=resolution, prompt=prompt, codec={"type": "vae"}, dhi_widths=dhi_widths(sd),
                           name=name)
    # the reference code's DDIM sampler spaces its steps "leading" (range(0, 1000, 1000 // n) + 1): kept for its models
    schedule = base.scheduler_config if base is not None else {**SCHEDULE, "timestep_spacing": "leading"}
    return SiameseModel(config, unet, VAECodec(vae), text_encoder.eval(), tokenizer, schedule, controlnet,
                        source="converted").eval()


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    base: str | Path | None = None,
    tokenizer: str | Path | None = None,
    resolution: int = 384,
    prompt: str = "",
    name: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Convert the reference checkpoint `src` (file, or a folder holding one) into the model folder `dst`.

    `base`: an SD 1.5 folder or hub id (configs, tokenizer; weights for what `src` lacks). Without it, `tokenizer`
    (default: openai/clip-vit-large-patch14, fetched by huggingface-hub as the reference code does) is loaded. `dst`
    must not exist or be empty; it is written through DST.tmp and a rename, so it is complete or absent.
    """
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"{dst} already exists and is not an empty folder; choose a new output folder")
    if resolution % 64 or not 64 <= resolution <= 1024:
        raise ConversionError(f"resolution must be a multiple of 64 between 64 and 1024, got {resolution}")
    sd = read_checkpoint(src)
    base_model = load_model(base) if base is not None else None
    tok = None
    if base_model is None:
        try:
            tok = CLIPTokenizer.from_pretrained(str(tokenizer or DEFAULT_TOKENIZER))
        except OSError as e:
            raise ConversionError(f"could not load the CLIP tokenizer '{tokenizer or DEFAULT_TOKENIZER}' ({e}); pass "
                                  "--base SD15_FOLDER or --tokenizer FOLDER") from None
    model = convert_state_dict(sd, base_model, tok, resolution=resolution, prompt=prompt,
                               name=name or dst.name)
    with atomic_folder(dst) as tmp:
        model.save_pretrained(tmp, dtype=None if dtype == torch.float32 else dtype)
    logger.info("converted %s (%d tensors) into %s", src, len(sd), dst)
    return dst

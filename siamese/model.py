"""The Siamese-Diffusion model bundle: UNet, DHI ControlNet, codec, text encoder, tokenizer, schedule.

A model folder has the layout of a diffusers Stable Diffusion folder plus two entries:

    siamese_config.json   SiameseConfig (resolution, default prompt, codec, name)
    unet/  controlnet/  text_encoder/  tokenizer/  scheduler/  [vae/]   (config JSON + safetensors)

so `load_model` reads our folders, a Stable Diffusion 1.5 folder (no controlnet yet: it is initialised
from the UNet encoder with a fresh DHI) and hub repo ids alike. `build_tiny` makes the CPU preset from
config alone: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .card import write_model_card
from .codec import Codec, PatchCodec, PatchCodecConfig, VAECodec, save_module
from .files import is_hub_id
from .guide import GUIDE_FOLDER, Guide, GuideError, guide_of_model, load_guide, save_guide
from .hub import push_folder
from .model_config import CONFIG_NAME, ModelLoadError, SiameseConfig
from .networks import DHIControlNetModel, check_supported
from .params import is_whole
from .pipeline import write_diffusers_files

logger = logging.getLogger(__name__)

__all__ = ["SiameseModel", "build_tiny", "load_model", "SCHEDULE", "tiny_tokenizer", "tiny_text_encoder",
           "resolve_folder"]

# METHOD.md: 1000 steps, scaled_linear betas 0.00085..0.012, epsilon prediction (SD 1.5's schedule). Sampling
# steps are spaced "trailing" (the first step at t = 999, Lin et al. 2024, "Common diffusion noise schedules and
# sample steps are flawed"): "leading" starts 20 DPM-Solver++ steps at t = 941 (DDIM: 951) from pure noise; the
# tiny Kvasir model's images came out low in contrast (latent std 0.82 of real), colour/texture KID 43 against 19.
# Training does not depend on it; a folder's scheduler config keeps what it was saved with.
SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing",
)
# what a model folder holds (and all that is fetched of a hub repo: not its single-file checkpoints)
MODEL_SUBFOLDERS = ("unet", "controlnet", "vae", "codec", "text_encoder", "tokenizer", "scheduler", "guide")
# what is fetched of a hub repo (`snapshot_download` patterns): the model folder's files, no pickles
# (segmenter/: the model's fidelity scorer, `siamese.fidelity`)
HUB_ALLOW_PATTERNS = ["*.json", "*.md", *(f"{sub}/*" for sub in (*MODEL_SUBFOLDERS, "segmenter"))]
HUB_IGNORE_PATTERNS = ["*.fp16.safetensors", "*non_ema*", "*.ckpt", "*.bin", "*.msgpack", "*.onnx*"]


class SiameseModel:
    """All components of one model, on one device and dtype.

    `controlnet` is None for a base model (a UNet not yet paired with a ControlNet); `add_controlnet`
    creates it from the UNet encoder, as ControlNet and METHOD.md do. `guide`, when set, is a weaker version of
    the model for autoguidance (`siamese.guide`).
    """

    def __init__(
        self,
        config: SiameseConfig,
        unet: UNet2DConditionModel,
        codec: Codec,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler_config: dict,
        controlnet: DHIControlNetModel | None = None,
        source: str = "",
        guide: Guide | None = None,
    ) -> None:
        check_supported(unet)
        self.config = config
        self.unet = unet
        self.controlnet = controlnet
        self.guide = guide
        self.codec = codec
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.source = source
        self._prompt_cache: dict[str, Tensor] = {}
        self.text_encoder.requires_grad_(False)
        self.codec.requires_grad_(False)

    # -- properties ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_size(self) -> int:
        return self.config.resolution // self.codec.downscale

    @property
    def alphas_cumprod(self) -> Tensor:
        """(1000,) float64 cumulative product of alphas of the training schedule."""
        return DDPMScheduler.from_config(self.scheduler_config).alphas_cumprod.double()

    def identity(self) -> dict:
        """Name, source and a short weight fingerprint, written into every generated pair's metadata."""
        h = hashlib.sha256()
        guide = self.guide.modules().values() if self.guide is not None else ()
        for net in (self.controlnet, self.unet, *guide):
            if net is not None:
                for name, p in list(net.state_dict().items())[:: max(1, len(net.state_dict()) // 16)]:
                    h.update(name.encode())
                    h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
        return {"name": self.config.name, "source": self.source, "fingerprint": h.hexdigest()[:12]}

    # -- components ---------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        mods = {"unet": self.unet, "codec": self.codec, "text_encoder": self.text_encoder}
        if self.controlnet is not None:
            mods["controlnet"] = self.controlnet
        if self.guide is not None:
            mods.update(self.guide.modules())
        return mods

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SiameseModel:
        for m in self.modules().values():
            if device is not None:
                m.to(device)
            if dtype is not None and dtype != m.dtype if hasattr(m, "dtype") else dtype is not None:
                m.to(dtype)
        self._prompt_cache.clear()
        return self

    def eval(self) -> SiameseModel:
        for m in self.modules().values():
            m.eval()
        return self

    def add_controlnet(self, generator_seed: int = 0) -> DHIControlNetModel:
        """A DHI ControlNet initialised from the UNet encoder (fresh, zero-output DHI)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            controlnet = DHIControlNetModel.from_unet(
                self.unet, conditioning_embedding_out_channels=tuple(self.config.dhi_widths)
            )
        self.controlnet = controlnet.to(device=self.device, dtype=self.dtype)
        return self.controlnet

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> Tensor:
        """Prompts -> (B, L, D) text embeddings; each distinct prompt is encoded once and cached."""
        missing = sorted({p for p in prompts if p not in self._prompt_cache})
        if missing:
            ids = self.tokenizer(
                missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids.to(self.text_encoder.device)
            embeds = self.text_encoder(ids).last_hidden_state.to(self.dtype)
            self._prompt_cache.update(zip(missing, embeds))
        return torch.stack([self._prompt_cache[p] for p in prompts])

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the model folder (config JSON + safetensors for every network, and model_index.json with the pipeline
        code, for diffusers); returns its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.codec = self.codec.to_dict()
        self.config.save(folder)
        save_module(self.unet, folder / "unet", dtype)
        if self.controlnet is not None:
            save_module(self.controlnet, folder / "controlnet", dtype)
        save_module(self.text_encoder, folder / "text_encoder", dtype)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(folder / "scheduler")
        self.codec.save(folder, dtype)
        if self.guide is not None:
            save_guide(folder, guide_of_model(self.guide, self.unet, self.controlnet), self.guide.source, dtype)
        elif (folder / GUIDE_FOLDER).is_dir():  # a guide saved there before holds another model's differences
            shutil.rmtree(folder / GUIDE_FOLDER)
        write_diffusers_files(folder, self.config, self.controlnet is not None)  # model_index.json + pipeline code
        write_model_card(folder)  # README.md from the folder's files: generated, or a hand-written one left as it is
        return folder

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    dtype: torch.dtype | None = None, commit_message: str | None = None) -> str:
        """Save to a temporary folder (in `dtype`, e.g. float16 for a small download) and upload it to the hub
        model repo `repo_id` with a model card; returns the commit URL. A trained run folder is uploaded with
        `siamese.hub.push_folder` (`python -m siamese push`), which keeps its training record."""
        with tempfile.TemporaryDirectory(prefix="siamese-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / (self.config.name or "model"), dtype)
            return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)


def tiny_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (printable ASCII, no merges): made here, nothing downloaded."""
    chars = [chr(i) for i in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int = 64, num_hidden_layers: int = 2) -> CLIPTextModel:
    """A small CLIP text encoder for `tokenizer`, random weights from the global RNG, in eval mode:
    (B, 77) token ids -> (B, 77, hidden_size) prompt embeddings."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=128,
        num_hidden_layers=num_hidden_layers, num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()


def build_tiny(
    resolution: int = 256,
    prompt: str = "",
    codec: PatchCodec | None = None,
    seed: int = 0,
    name: str = "siamese-tiny",
    block_out_channels: tuple[int, ...] = (48, 96, 192),
    norm_num_groups: int = 16,
) -> SiameseModel:
    """The tiny CPU preset, built from config alone (random weights, seeded).

    Linear patch codec (8x8 patches -> 16 channels; pass one fitted on the data), a 3-level UNet at resolution/8, a
    small frozen CLIP text encoder with a character tokenizer. The ControlNet is added later from the
    UNet encoder (`add_controlnet`), as for Stable Diffusion. Tests pass narrower `block_out_channels`.
    """
    if resolution % 64:
        raise ValueError(f"resolution must be a multiple of 64 for the tiny preset, got {resolution}")
    codec = codec if codec is not None else PatchCodec(PatchCodecConfig())
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution // codec.downscale,
            in_channels=codec.latent_channels,
            out_channels=codec.latent_channels,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=4,
            norm_num_groups=norm_num_groups,
        )
        text_encoder = tiny_text_encoder(tokenizer)
    config = SiameseConfig(resolution=resolution, prompt=prompt, codec=codec.to_dict(),
                           dhi_widths=(4, 8, 16, 32, 64), name=name)
    return SiameseModel(config, unet, codec, text_encoder, tokenizer, SCHEDULE, source="tiny")


def resolve_folder(path_or_id: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local folder as is; otherwise a hub repo id fetched with huggingface-hub (offline mode honoured)."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; expected a model folder (with unet/ and siamese_config.json)")
        return path
    text = str(path_or_id)
    if not is_hub_id(text):
        raise ModelLoadError(f"No model folder at '{text}', and it is not a hub repo id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(
            text, cache_dir=cache_dir,
            allow_patterns=HUB_ALLOW_PATTERNS, ignore_patterns=HUB_IGNORE_PATTERNS,
        ))
    except LocalEntryNotFoundError as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        why = "offline mode (HF_HUB_OFFLINE) is on" if offline else "the hub could not be reached"
        raise ModelLoadError(f"Hub model '{text}' is not in the local cache and {why}: {e}") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelLoadError(f"Could not download hub model '{text}': {e}") from None


def load_model(
    path_or_id: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
) -> SiameseModel:
    """Load a model folder (ours or a diffusers Stable Diffusion 1.5 folder) or a hub repo id."""
    folder = resolve_folder(path_or_id, cache_dir)
    for sub in ("unet", "text_encoder", "tokenizer"):
        if not (folder / sub).is_dir():
            raise ModelLoadError(f"{folder} has no {sub}/ folder; expected a model folder written by "
                                 "`python -m siamese train` or a diffusers Stable Diffusion folder")
    config = SiameseConfig.load(folder)
    _check_weight_files(folder)
    kw = dict(torch_dtype=dtype, use_safetensors=True)  # never a pickled .bin: unpickling can run code
    try:
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", **kw)
        text_encoder = _load_text_encoder(folder / "text_encoder", dtype)
        tokenizer = _load_tokenizer(folder / "tokenizer", text_encoder)
        controlnet = (DHIControlNetModel.from_pretrained(folder / "controlnet", **kw)
                      if (folder / "controlnet").is_dir() else None)
        if config.codec.get("type") == "patch":
            codec: Codec = PatchCodec.load(folder, PatchCodecConfig(**{k: v for k, v in config.codec.items() if k != "type"}))
        else:
            codec = VAECodec(AutoencoderKL.from_pretrained(folder / "vae", **kw))
        scheduler_config = _load_schedule(folder / "scheduler" / "scheduler_config.json")
        guide = load_guide(folder, unet, controlnet)
    except GuideError as e:
        raise ModelLoadError(f"{folder}: {e}") from None
    except ModelLoadError:  # it names the file already
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"Could not load the model in {folder}: {e}") from None
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise ModelLoadError(f"{folder / 'text_encoder' / 'config.json'}: hidden_size {text_encoder.config.hidden_size} "
                             f"does not match the UNet's cross_attention_dim {unet.config.cross_attention_dim}: the "
                             "text encoder is not this model's")
    schedule = {k: scheduler_config.get(k) for k in ("beta_schedule", "num_train_timesteps", "prediction_type")}
    if schedule["prediction_type"] not in (None, "epsilon"):
        raise ModelLoadError(f"{folder}: only epsilon prediction is supported, got {schedule}")
    if config.autoguidance != 1 and guide is None:
        raise ModelLoadError(f"{folder}: siamese_config.json recommends autoguidance {config.autoguidance:g}, which "
                             f"needs a guide, but the folder has no guide/ (add one with `python -m siamese add-guide`, "
                             f"or set autoguidance to 1)")
    model = SiameseModel(config, unet, codec, text_encoder, tokenizer, scheduler_config, controlnet,
                         source=str(path_or_id), guide=guide)
    logger.info("loaded model %s from %s", config.name, folder)
    return model.to(device=device, dtype=dtype).eval()


# -- checks of a model folder's parts, each a ModelLoadError naming the file -----------------------------
def _check_weight_files(folder: Path) -> None:
    """Every safetensors file of the model's subfolders opens: its header is whole and covers the data (a copy or
    download cut short fails here, named, rather than deep inside a library with no file name)."""
    for sub in MODEL_SUBFOLDERS:
        for path in sorted((folder / sub).glob("*.safetensors")):
            if ".fp16." in path.name or "non_ema" in path.name:  # variants load_model never reads
                continue
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except (SafetensorError, OSError) as e:
                raise ModelLoadError(f"{path} could not be read ({e}): not a complete safetensors file; copy or "
                                     "download the model again") from None


def _load_text_encoder(folder: Path, dtype: torch.dtype) -> CLIPTextModel:
    """text_encoder/ in eval mode; weights that do not fit its config.json (a changed hidden_size) are a
    ModelLoadError naming the first tensor, checked from the file's header before anything is loaded."""
    weights = folder / "model.safetensors"
    try:
        config = CLIPTextConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder / 'config.json'}: cannot be read ({e})") from None
    if weights.is_file():
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            expected = {k: tuple(v.shape) for k, v in CLIPTextModel(config).state_dict().items()}
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                want, got = expected.get(key.removeprefix("text_model.")), tuple(f.get_slice(key).get_shape())
                if want is not None and got != want:
                    raise ModelLoadError(f"{weights}: '{key}' is {list(got)} but {folder / 'config.json'} (hidden_size "
                                         f"{config.hidden_size}, vocab_size {config.vocab_size}) makes it {list(want)}: "
                                         "the config was changed, or the weights are another model's")
    try:
        return CLIPTextModel.from_pretrained(folder, dtype=dtype, use_safetensors=True).eval()
    except RuntimeError as e:  # transformers: tensors whose sizes differ from the config's
        if "mismatched" not in str(e):
            raise
        raise ModelLoadError(f"{folder / 'model.safetensors'}: the weights do not fit {folder / 'config.json'} "
                             "(tensor sizes differ: its hidden_size, vocab_size or layers were changed, or the "
                             "weights are another model's)") from None


def _load_tokenizer(folder: Path, text_encoder: CLIPTextModel) -> CLIPTokenizer:
    """tokenizer/, which must hold a vocabulary and cut prompts to at most the text encoder's positions."""
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        raise ModelLoadError(f"{folder}: no tokenizer files (expected tokenizer.json, or vocab.json and merges.txt)")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder}: the tokenizer files cannot be read ({e})") from None
    limit = text_encoder.config.max_position_embeddings
    if not is_whole(tokenizer.model_max_length) or not 1 <= tokenizer.model_max_length <= limit:
        raise ModelLoadError(f"{folder}: model_max_length must be a whole number between 1 and the text encoder's "
                             f"{limit} positions, got {tokenizer.model_max_length!r}")
    return tokenizer


def _load_schedule(path: Path) -> dict:
    """scheduler/scheduler_config.json (SCHEDULE when absent), checked: a JSON object, a whole number of training
    timesteps (1 or more), a schedule the samplers can build."""
    if not path.exists():
        return SCHEDULE
    try:
        schedule = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(schedule, dict):
        raise ModelLoadError(f"{path}: expected a JSON object of settings, got {type(schedule).__name__}")
    steps = schedule.get("num_train_timesteps", 1000)
    if not is_whole(steps) or not 1 <= steps <= 100_000:
        raise ModelLoadError(f"{path}: 'num_train_timesteps' must be a whole number between 1 and 100000, got {steps!r}")
    try:
        alphas = DDIMScheduler.from_config(schedule).alphas_cumprod  # DDIM, DPM++ and UniPC share the beta schedules
    except (ValueError, TypeError, NotImplementedError) as e:
        raise ModelLoadError(f"{path}: not a noise schedule the samplers can use ({e})") from None
    if not (torch.isfinite(alphas).all() and (alphas > 0).all() and (alphas < 1).all()):
        raise ModelLoadError(f"{path}: the betas give cumulative alphas outside (0, 1): check beta_start and beta_end")
    return schedule

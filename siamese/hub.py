"""Upload a model folder to the Hugging Face hub: `python -m siamese push RUN REPO_ID`.

What is uploaded: the model (siamese_config.json, model_index.json, the pipeline code, unet/, controlnet/,
codec/ or vae/, text_encoder/, tokenizer/, scheduler/), its model card (README.md, refreshed first), and the
run's records (train_config.json, metrics.csv, evaluation.json, figures). What is not: checkpoints/ (optimiser
state), init/ and base/ (the run's starting points), previews/, logs/ and temporary files.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .card import write_model_card

logger = logging.getLogger(__name__)

__all__ = ["PUSH_IGNORE_PATTERNS", "push_folder"]

# huggingface_hub matches these with fnmatch on paths relative to the folder ("*" also matches "/")
PUSH_IGNORE_PATTERNS = ["build/*", "checkpoints/*", "init/*", "base/*", "previews/*", "logs/*", "*.tmp", "*.tmp/*", ".*",
                        "*/.*", "*.ckpt", "*.pt", "*.pth", "*.bin", "*.pkl"]
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Create the hub model repo `repo_id` (if needed) and upload the model folder; returns the commit URL.

    The model card is rewritten first (with `repo_id` in its examples; a hand-written card keeps its text);
    when the folder cannot be written, the card is uploaded as it is. `token`: a hub token (default: the
    stored login or HF_TOKEN)."""
    folder = Path(folder).expanduser()
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith(".git"):
        raise ValueError(f"repo id must be 'owner/name' or 'name' (letters, digits, '-', '_', '.'), got {repo_id!r}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; expected a model folder written by `python -m siamese train`")
    for need in ("siamese_config.json", "unet", "text_encoder", "tokenizer"):
        if not (folder / need).exists():
            raise ValueError(f"{folder} has no {need}: expected a model folder written by `python -m siamese "
                             "train` (a run still in progress has no model yet; a stopped run has one)")
    if not (folder / "controlnet").is_dir():
        logger.warning("%s has no controlnet/: uploading a base model (it cannot generate from masks)", folder)
    try:
        write_model_card(folder, repo_id=repo_id)
    except OSError as e:
        logger.warning("model card not refreshed (%s cannot be written: %s); uploading it as it is", folder, e)

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=url.repo_id, folder_path=folder, repo_type="model", ignore_patterns=PUSH_IGNORE_PATTERNS,
            commit_message=commit_message or "Upload Siamese-Diffusion model",
        )
    except (OSError, ValueError):  # the hub's HTTP errors (not logged in, no write access) are OSErrors
        raise
    except Exception as e:  # connection errors of the HTTP client
        raise OSError(f"could not upload to the hub repo {repo_id}: {type(e).__name__}: {e}") from None
    logger.info("uploaded %s to %s", folder, url)
    return str(getattr(commit, "commit_url", commit))

"""Values sent by visitors, each read once, where it enters (the handler), with a message naming it.

The page sends what its widgets hold, but an API call can send anything. The events that take visitors' values run
without Gradio's own preprocessing (`preprocess=False` in the page's wiring), so the handlers get the raw values
and this module is the one place they are checked: numbers against the ranges their widgets show, texts, seeds,
and files. A file arrives as Gradio's FileData (a dict; only files in Gradio's upload folder are read) or, from a
direct Python call, as a path or an array; an image file is checked from its header (`siamese.data.MAX_PIXELS`)
before anything decodes it. Every refusal is a ValueError (DataError for data) that names the value.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gradio.utils import get_upload_folder

from siamese import DataError, read_image
from siamese.sampling import MAX_SEED, random_seed

MAX_TEXT_CHARS = 2000  # a prompt, a folder or a model name longer than this is refused


def number(value, name: str, whole: bool = False, optional: bool = False, low: float | None = None,
           high: float | None = None) -> float | int | None:
    """A number (a whole one with `whole`), from `low` to `high` when given: a JSON number or the text of one; None
    only when `optional`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if optional:
            return None
        raise ValueError(f"{name} is missing: give a number")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    try:
        x = float(value)
    except (ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got '{str(value)[:40]}'") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if whole:
        if x != int(x):
            raise ValueError(f"{name} must be a whole number, got {value}")
        x = int(x)
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {x:g}")
    return x


def text(value, name: str, max_chars: int = MAX_TEXT_CHARS) -> str | None:
    """Text, stripped; None for nothing or blanks."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise ValueError(f"{name} must be at most {max_chars:,} characters, got {len(value):,}")
    return value.strip() or None


def flag(value, name: str) -> bool:
    """A checkbox: true or false (None: false)."""
    if value is None:
        return False
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ValueError(f"{name} must be true or false, got {str(value)[:40]!r}")
    return bool(value)


def seed(value, randomize: bool = False) -> int:
    """A seed: 0 to MAX_SEED; None, a negative number or `randomize`: a random one."""
    x = number(value, "seed", whole=True, optional=True)
    if randomize or x is None or x < 0:
        return random_seed()
    if x > MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED} (or negative: random), got {x}")
    return x


def fraction(value, name: str, optional: bool = False) -> float | None:
    """A number from 0 to 1 (None only when `optional`)."""
    return number(value, name, optional=optional, low=0.0, high=1.0)


def upload(value, name: str) -> Path | None:
    """An uploaded file -> its path on the server, or None for nothing. From the network a file is a FileData dict
    (`{"path": ..., "meta": {"_type": "gradio.FileData"}}`), read only when it lies in Gradio's upload folder; a
    path (str or Path) comes from a direct Python call."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, Path)):
        return Path(value)
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        raise DataError(f"{name} must be an uploaded file (gradio_client: handle_file(...)), got "
                        f"{type(value).__name__}")
    path = Path(value["path"])
    try:
        inside = path.resolve().is_relative_to(Path(get_upload_folder()).resolve())
    except (OSError, ValueError):
        inside = False
    if not path.is_absolute() or not inside:
        raise DataError(f"{name} was not uploaded to this server: upload the file (gradio_client: handle_file(...)) "
                        "and send what the upload returned")
    return path


def uploads(value, name: str) -> list[Path]:
    """Uploaded files (a list, or one file) -> their paths; nothing: []."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [p for p in (upload(v, name) for v in values) if p is not None]


def shown_name(value) -> str:
    """How a message names an uploaded file: the name the visitor gave it (FileData's orig_name), else the file's."""
    if isinstance(value, dict) and isinstance(value.get("orig_name"), str) and value["orig_name"].strip():
        return Path(value["orig_name"]).name
    return Path(str(value.get("path") if isinstance(value, dict) else value)).name


def image(value, name: str) -> np.ndarray | None:
    """An image (a reference, a canvas backdrop) -> (H, W, 3) uint8 RGB, or None: an array as it is, a file checked
    from its header before it is decoded (`siamese.read_image`)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    path = upload(value, name)
    if path is None:
        return None
    try:
        return read_image(path)
    except DataError as e:
        raise DataError(f"{name}: {str(e).replace(str(path), shown_name(value))}") from None

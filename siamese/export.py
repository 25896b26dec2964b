"""Writing generated pairs: PNG files with their parameters, metadata.jsonl, zip and nnU-Net v2 layout.

Every file is written to a temporary name and renamed into place, so an interrupted export never
leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .sampling import Generated

logger = logging.getLogger(__name__)

__all__ = ["png_bytes", "parameters_text", "write_pairs", "remove_pairs", "export_zip", "pair_name", "atomic_write",
           "atomic_folder", "check_writable"]


def parameters_text(params: dict) -> str:
    """The "parameters" PNG text of Stable Diffusion tools: prompt line, then `Key: value` pairs."""
    model = params.get("model", {})
    fields = {
        "Steps": params.get("steps"), "Sampler": params.get("scheduler"), "CFG scale": params.get("guidance_scale"),
        "Control scale": params.get("control_scale"), "Control end": params.get("control_end"),
        "Autoguidance": params.get("autoguidance"),
        "Seed": params.get("seed"), "Size": f"{params.get('resolution')}x{params.get('resolution')}",
        "Eta": params.get("eta"), "Model": model.get("name"), "Model hash": model.get("fingerprint"),
    }
    return f"{params.get('prompt', '')}\n" + ", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None)


def png_bytes(array: np.ndarray, params: dict | None = None) -> bytes:
    """An (H, W, 3) or (H, W) uint8 array as PNG bytes, with the generation parameters embedded."""
    info = None
    if params is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters_text(params))
        info.add_text("siamese", json.dumps(params, sort_keys=True))
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def pair_name(index: int, item: Generated) -> str:
    return f"{index:05d}_seed{item.seed}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _metadata_line(name: str, item: Generated) -> str:
    return json.dumps({"image": f"images/{name}.png", "mask": f"masks/{name}.png", **item.params}, sort_keys=True)


@contextlib.contextmanager
def atomic_folder(folder: str | Path):
    """Yield FOLDER.tmp, emptied, to be filled; when the block ends it replaces `folder` by a rename, so the
    folder is complete or absent (a process killed mid-write leaves only FOLDER.tmp, removed by the next write)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def check_writable(folder: str | Path) -> None:
    """Raise ValueError unless `folder` is, or can be created as, a folder this process may write in. Nothing is
    left behind: the test file goes in the nearest existing folder and is removed at once."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot write to {folder}: it is a file, not a folder")
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write to {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ValueError(f"cannot write to {folder}: a file cannot be created in {existing} "
                         f"({e.strerror or e})") from None


def write_pairs(items: Sequence[Generated], folder: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """Write `images/NAME.png`, `masks/NAME.png` (0/255) and their lines of `metadata.jsonl`; returns the names.

    `metadata.jsonl` keeps one line per pair: lines of earlier calls for other names stay, a name written again
    replaces its line (the file is rewritten atomically)."""
    folder = Path(folder)
    names = list(names) if names is not None else [pair_name(i, it) for i, it in enumerate(items)]
    lines = []
    for name, item in zip(names, items):
        atomic_write(folder / "images" / f"{name}.png", png_bytes(item.image, item.params))
        atomic_write(folder / "masks" / f"{name}.png", png_bytes(item.mask))
        lines.append(_metadata_line(name, item))
    meta = folder / "metadata.jsonl"
    replaced = {f"images/{name}.png" for name in names}
    kept = [line for line in _read_lines(meta) if _metadata_image(line) not in replaced]
    atomic_write(meta, "".join(line + "\n" for line in kept + lines).encode("utf-8", "surrogateescape"))
    return names


def remove_pairs(folder: str | Path, names: Sequence[str]) -> list[str]:
    """Remove `images/NAME.png`, `masks/NAME.png` and their `metadata.jsonl` lines where present (the line
    first: a pair is listed only while its files exist); returns the names that were there."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    targets = {f"images/{name}.png": name for name in names}
    lines = _read_lines(meta)
    kept = [line for line in lines if _metadata_image(line) not in targets]
    if len(kept) != len(lines):
        atomic_write(meta, "".join(line + "\n" for line in kept).encode("utf-8", "surrogateescape"))
    removed = []
    for name in names:
        paths = [folder / "images" / f"{name}.png", folder / "masks" / f"{name}.png"]
        if any(p.is_file() for p in paths):
            removed.append(name)
        for p in paths:
            p.unlink(missing_ok=True)
    return removed


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_bytes().decode("utf-8", "surrogateescape").splitlines() if line.strip()]


def _metadata_image(line: str) -> str | None:
    """The image a metadata.jsonl line describes (None for a line that is not one of ours)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("image") if isinstance(record, dict) else None


README_TEXT = """Synthetic image-mask pairs made with Siamese-Diffusion Studio.

images/NAME.png   generated image (RGB); its generation parameters are in the PNG text "parameters"
masks/NAME.png    the mask it was generated from (binary 0/255, same size)
metadata.jsonl    one JSON object per pair: file names, prompt, seed, steps, guidance, scheduler, control scale
                  and end, model
{nnunet}
Each image can be reproduced from its seed with the same model and settings.
"""


def _nnunet_entries(items: Sequence[Generated], names: Sequence[str], label: str) -> Iterable[tuple[str, bytes]]:
    for name, item in zip(names, items):
        yield f"nnunet/imagesTr/{name}_0000.png", png_bytes(item.image)
        yield f"nnunet/labelsTr/{name}.png", png_bytes((item.mask > 0).astype(np.uint8))
    dataset = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, label: 1},
               "numTraining": len(items), "file_ending": ".png",
               "overwrite_image_reader_writer": "NaturalImage2DIO"}
    yield "nnunet/dataset.json", json.dumps(dataset, indent=2).encode()


def export_zip(
    items: Sequence[Generated], path: str | Path, nnunet: bool = False, label: str = "lesion"
) -> Path:
    """A zip of the pairs (images/, masks/, metadata.jsonl, README.txt; optionally nnunet/ in the nnU-Net
    v2 layout: imagesTr/NAME_0000.png, labelsTr/NAME.png with labels 0/1, dataset.json)."""
    if not items:
        raise ValueError("nothing to export: keep at least one generated image first")
    path = Path(path)
    names = [pair_name(i, it) for i, it in enumerate(items)]
    note = ("nnunet/           the same pairs in the nnU-Net v2 layout (imagesTr/, labelsTr/ with labels 0/1, "
            "dataset.json)\n" if nnunet else "")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, item in zip(names, items):
            zf.writestr(f"images/{name}.png", png_bytes(item.image, item.params))
            zf.writestr(f"masks/{name}.png", png_bytes(item.mask))
        zf.writestr("metadata.jsonl", "".join(_metadata_line(n, it) + "\n" for n, it in zip(names, items)))
        zf.writestr("README.txt", README_TEXT.format(nnunet=note))
        if nnunet:
            for arcname, data in _nnunet_entries(items, names, label):
                zf.writestr(arcname, data)
    atomic_write(path, buf.getvalue())
    logger.info("exported %d pairs to %s", len(items), path)
    return path

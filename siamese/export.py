"""Writing generated pairs: PNG files with their parameters, metadata.jsonl, zip and nnU-Net v2 layout.

Every file is written to a temporary name and renamed into place, so an interrupted export never
leaves a half-written file behind.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .files import atomic_write
from .params import Generated

logger = logging.getLogger(__name__)

__all__ = ["check_apart", "check_nnunet_label", "png_bytes", "parameters_text", "write_pairs", "remove_pairs",
           "export_zip", "pair_name", "read_lines", "metadata_image"]


def parameters_text(params: dict) -> str:
    """The "parameters" PNG text of Stable Diffusion tools: prompt line, then `Key: value` pairs."""
    model = params.get("model", {})
    fields = {
        "Steps": params.get("steps"), "Sampler": params.get("scheduler"), "CFG scale": params.get("guidance_scale"),
        "Control scale": params.get("control_scale"), "Control end": params.get("control_end"),
        "Autoguidance": params.get("autoguidance"), "Cache interval": params.get("cache_interval"),
        "Precision": params.get("precision"),
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


def _metadata_line(name: str, item: Generated) -> str:
    return json.dumps({"image": f"images/{name}.png", "mask": f"masks/{name}.png", **item.params}, sort_keys=True)


def check_apart(output: str | Path, source: str | Path, what: str = "masks") -> None:
    """Raise ValueError when the output folder is, contains or lies inside the input folder `source` (for a file: is
    or contains its folder): the generated pairs (OUTPUT/masks/ among them) would land among the inputs, and a run
    again would take them for new ones. `what` names the input in the message."""
    out, src = Path(output).resolve(), Path(source).resolve()
    folder = src.parent if src.is_file() else src
    if out == folder:
        where = "is"
    elif out in folder.parents:
        where = "contains"
    elif folder in out.parents and not src.is_file():
        where = "is inside"
    else:
        return
    shown = Path(source).parent if src.is_file() else Path(source)  # as the caller named it
    raise ValueError(f"the output folder {output} {where} the {what} folder {shown}: the generated pairs would mix "
                     f"with the input {what} (and a run again would take them for new ones); write them elsewhere")


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
    kept = [line for line in read_lines(meta) if metadata_image(line) not in replaced]
    atomic_write(meta, "".join(line + "\n" for line in kept + lines).encode("utf-8", "surrogateescape"))
    return names


def remove_pairs(folder: str | Path, names: Sequence[str]) -> list[str]:
    """Remove `images/NAME.png`, `masks/NAME.png` and their `metadata.jsonl` lines where present (the line
    first: a pair is listed only while its files exist); returns the names that were there."""
    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    targets = {f"images/{name}.png": name for name in names}
    lines = read_lines(meta)
    kept = [line for line in lines if metadata_image(line) not in targets]
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


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a metadata.jsonl ([] when there is none); undecodable bytes kept as they are."""
    if not path.is_file():
        return []
    return [line for line in path.read_bytes().decode("utf-8", "surrogateescape").splitlines() if line.strip()]


def metadata_image(line: str) -> str | None:
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


# nnU-Net v2's own label names: "background" is label 0, "ignore" marks pixels left out of the loss
NNUNET_RESERVED_LABELS = ("background", "ignore")


def check_nnunet_label(label: str) -> None:
    """The name of label 1 in an nnU-Net dataset.json: text, not empty, and none of nnU-Net's reserved names (in
    any case), which would replace label 0 or turn the lesion into ignored pixels."""
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"the nnU-Net label name must be a non-empty text, got {label!r}")
    if label.strip().lower() in NNUNET_RESERVED_LABELS:
        raise ValueError(f"the nnU-Net label name cannot be '{label}': nnU-Net reserves "
                         f"{' and '.join(repr(n) for n in NNUNET_RESERVED_LABELS)} (background is label 0); name "
                         "the lesion, e.g. 'lesion' or 'polyp'")


def export_zip(
    items: Sequence[Generated], path: str | Path, nnunet: bool = False, label: str = "lesion"
) -> Path:
    """A zip of the pairs (images/, masks/, metadata.jsonl, README.txt; optionally nnunet/ in the nnU-Net
    v2 layout: imagesTr/NAME_0000.png, labelsTr/NAME.png with labels 0/1, dataset.json, label 1 named `label`)."""
    if not items:
        raise ValueError("nothing to export: keep at least one generated image first")
    if nnunet:
        check_nnunet_label(label)
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

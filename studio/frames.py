"""Frames in the app (issue 24): the example frames shipped with it, and the frames a batch paints its masks into
(uploaded images, zips of a folder of frames with an optional masks/ or of a dataset folder, or a frames folder of
the server's data folder), read at the model resolution with one message naming a bad one, never a server path."""

from __future__ import annotations

from pathlib import Path

from siamese import DataError, read_image, read_mask
from siamese.data import IMAGE_EXTENSIONS
from siamese.inpaint import Frame, list_frames, prepare_frame

from . import inputs
from .datasets import dataset_folder, extract_zip
from .masks import MAX_MASK_FILE_BYTES
from .replies import Redactor
from .settings import Settings


def example_frames(folder: Path) -> list[tuple[Path, Path | None]]:
    """The example frames of a folder (images, with masks/ of the same stems) as `siamese.inpaint.list_frames`
    lists them; none when the folder is missing or holds no frame."""
    try:
        return list_frames(folder)
    except DataError:
        return []


def _frames_root(root: Path) -> Path:
    """The folder of an unpacked zip of frames: the shallowest one with images/ or image files in it."""
    todo = [root]
    while todo:
        folder = todo.pop(0)
        if (folder / "images").is_dir() or any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                                               for p in folder.iterdir()):
            return folder
        todo += sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in ("masks", "__MACOSX"))
    return root


def read_batch_frames(entries: list[tuple[Path, Path | None, str]], where: str, resolution: int) -> list[Frame]:
    """(frame file, its mask file or None, its name) -> Frames at the model resolution; an unreadable frame or
    mask, or a mask of another aspect than its frame, is one message naming it (never a server path)."""
    frames = []
    for image_path, mask_path, name in entries:
        try:
            own = read_mask(mask_path) if mask_path is not None else None
            frames.append(prepare_frame(read_image(image_path), resolution, own, name))
        except DataError as e:
            text = str(e).replace(str(image_path), name)
            if mask_path is not None:
                text = text.replace(str(mask_path), f"masks/{mask_path.name}")
            raise DataError(f"{where}: {text if text.startswith((name, 'masks/')) else f'{name}: {text}'}") from None
    return frames


def batch_frames(frame_files, frames_folder: str | None, settings: Settings, redact: Redactor, resolution: int,
                 tmp: Path) -> list[Frame] | None:
    """The batch's frames at the model resolution (None: no frames): uploaded images (their own lesions
    unknown) or zips (a folder of frames with an optional masks/, or a dataset folder), else the frames folder
    of the server's data folder."""
    uploaded = [(path, inputs.shown_name(value)) for value in
                (frame_files if isinstance(frame_files, (list, tuple)) else [frame_files])
                if (path := inputs.upload(value, "frame file")) is not None]
    limit = settings.batch_max_masks
    entries: list[tuple[Path, Path | None, str]] = []
    if uploaded:
        budget = settings.max_unpacked_bytes
        for k, (path, name) in enumerate(uploaded):
            if path.suffix.lower() == ".zip":
                root = extract_zip(path, tmp / f"frames-{k}", max_bytes=budget, max_files=2 * limit + 100,
                                   max_file_bytes=MAX_MASK_FILE_BYTES, shown=name)
                budget -= sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
                try:
                    found = list_frames(_frames_root(root))
                except DataError as e:
                    raise DataError(f"{name}: {str(e).split(': ', 1)[-1]}") from None
                entries += [(image, own, f"{name}/{image.name}" if len(uploaded) > 1 else image.name)
                            for image, own in found]
            else:
                entries.append((path, None, name))
        where = f"{len(uploaded)} uploaded frame files" if len(uploaded) > 1 else f"the uploaded {uploaded[0][1]}"
    elif frames_folder:
        folder = dataset_folder(frames_folder, settings.data_root)
        where = f"`{redact(str(folder))}`"
        try:
            found = list_frames(folder)
        except DataError as e:
            raise DataError(str(e).replace(str(folder), where.strip("`"))) from None
        for image, own in found:
            for p in (image, own):  # a link that leads out of the data folder is not followed
                if p is not None and not p.resolve().is_relative_to(settings.data_root.resolve()):
                    raise DataError(f"{where}: {p.name} leads outside the server's data folder")
        entries = [(image, own, image.name) for image, own in found]
    else:
        return None
    if len(entries) > limit:
        raise DataError(f"{where} holds {len(entries):,} frames; a batch takes at most {limit:,} "
                        "(SIAMESE_BATCH_MAX_MASKS): split them")
    return read_batch_frames(entries, where, resolution)

"""Data from visitors: a folder under the server's data root, or an uploaded zip (training datasets, batch masks).

A typed folder is read relative to the data root ($SIAMESE_DATA_ROOT, default: the working directory) and must
stay inside it after following links; anything else gets one message, whether or not it exists. A zip is
unpacked into a temporary folder the server owns, refusing unsafe entries, archives that unpack to more than
the cap (4x the upload limit) and archives the free disk space cannot hold.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

from siamese import DataError
from siamese.data import IMAGE_EXTENSIONS, find_pairs, list_masks

from .settings import DEFAULT_MAX_UPLOAD, ZIP_EXPANSION, parse_size

MAX_ZIP_UNPACKED_BYTES = ZIP_EXPANSION * parse_size(DEFAULT_MAX_UPLOAD)  # Settings.max_unpacked_bytes by default
MAX_ZIP_FILES = 100_000
DISK_RESERVE_BYTES = 2**30  # left free after unpacking: the run still writes checkpoints and previews


def human_size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n} bytes"


def dataset_folder(text: str, data_root: Path) -> Path:
    """A dataset folder typed by a visitor -> the server folder, only inside `data_root` (relative to it, or an
    absolute path inside it). The refusal is the same for folders that exist and folders that do not."""
    root = Path(data_root).resolve()
    typed = Path(text.strip())
    folder = (typed if typed.is_absolute() else root / typed).resolve()
    if not folder.is_relative_to(root):
        raise DataError("the dataset folder must be inside the server's data folder (SIAMESE_DATA_ROOT): type its "
                        "path relative to that folder, e.g. kvasir-seg, or upload a zip")
    return folder


def extract_zip(path: str | Path, dest: Path, max_bytes: int = MAX_ZIP_UNPACKED_BYTES,
                max_files: int = MAX_ZIP_FILES, reserve_bytes: int = DISK_RESERVE_BYTES) -> Path:
    """Extract a zip into `dest`, refusing absolute paths, `..`, links, archives that unpack to more than
    `max_bytes`, and archives that would leave less than `reserve_bytes` of free disk space. Returns `dest`,
    resolved."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path.name} is not a readable zip file ({e})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
        if len(infos) > max_files:
            raise DataError(f"{path.name} holds {len(infos)} files; at most {max_files} are accepted")
        total = sum(i.file_size for i in infos)  # zipfile never writes more than these sizes (checked below too)
        if total > max_bytes:
            raise DataError(f"{path.name} unpacks to {human_size(total)}; at most {human_size(max_bytes)} are "
                            f"accepted ({ZIP_EXPANSION}x the upload limit)")
        dest.mkdir(parents=True, exist_ok=True)
        if total + reserve_bytes > shutil.disk_usage(dest).free:
            raise DataError(f"{path.name} unpacks to {human_size(total)}, more than the server's free disk space "
                            "allows: upload a smaller dataset")
        root = dest.resolve()
        written = 0
        for info in infos:
            name = info.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or is_link:
                raise DataError(f"{path.name}: refusing the unsafe entry '{info.filename}' (absolute path, "
                                "'..' or link)")
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise DataError(f"{path.name}: refusing the entry '{info.filename}' outside the archive folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > min(total, max_bytes):  # the sizes in the header may lie
                        raise DataError(f"{path.name} unpacks to more than its listed {human_size(total)}")
                    out.write(chunk)
    return root


def safe_extract_zip(path: str | Path, dest: Path, max_bytes: int = MAX_ZIP_UNPACKED_BYTES,
                     max_files: int = MAX_ZIP_FILES, reserve_bytes: int = DISK_RESERVE_BYTES) -> Path:
    """Extract a dataset zip into `dest` (safely: `extract_zip`). Returns the dataset folder inside: the
    shallowest folder with images/ + masks/ or prompt.json."""
    path = Path(path)
    root = extract_zip(path, dest, max_bytes, max_files, reserve_bytes)
    candidates = [p for p in [root, *sorted(root.rglob("*"))] if p.is_dir()
                  and ((p / "prompt.json").is_file() or ((p / "images").is_dir() and (p / "masks").is_dir()))]
    if not candidates:
        raise DataError(f"{path.name}: no dataset inside (expected images/ and masks/ folders, or prompt.json)")
    return min(candidates, key=lambda p: len(p.parts))


def mask_sources(folder: Path, shown: str) -> list[tuple[str, Path]]:
    """The masks of a folder as (name, file): its masks/ folder (a dataset), the masks its prompt.json names, else
    every image file in it and its subfolders (named by their path inside it, without the suffix). `shown` names
    the folder in messages; two files of one name are an error, files that are not images are skipped."""
    if not folder.is_dir():
        raise DataError(f"{shown}: no such folder")
    if (folder / "masks").is_dir():
        return _inside(folder, [(p.stem, p) for p in list_masks(folder / "masks")], shown)
    if (folder / "prompt.json").is_file():
        return _inside(folder, [(Path(pair.mask).stem, Path(pair.mask)) for pair in find_pairs(folder)], shown)
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if (p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file()
                or any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)):
            continue
        name = rel.with_suffix("").as_posix()
        if name in found:
            raise DataError(f"{shown}: {found[name].relative_to(folder)} and {rel} have the same name; keep one")
        found[name] = p
    if not found:
        raise DataError(f"{shown}: no mask images in it (PNG, JPEG, BMP, TIFF or WebP files)")
    return _inside(folder, list(found.items()), shown)


def _inside(folder: Path, files: list[tuple[str, Path]], shown: str) -> list[tuple[str, Path]]:
    """`files`, if none is a link that leads out of `folder`."""
    root = folder.resolve()
    for name, path in files:
        if not path.resolve().is_relative_to(root):
            raise DataError(f"{shown}: {name} is a link that leads out of the folder")
    return files

"""Data from visitors: a folder under the server's data root, or an uploaded zip (training datasets, batch masks).

A typed folder is read relative to the data root ($SIAMESE_DATA_ROOT, default: the working directory) and must
stay inside it after following links; anything else gets one message, whether or not it exists. A zip is
unpacked into a folder of the server's scratch folder after its directory is checked (entry names, counts and
sizes: unsafe entries, archives that unpack to more than the cap, 4x the upload limit, more files or masks than
allowed), and only if the free disk space can hold it; a damaged entry is named.
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from siamese import DataError
from siamese.data import IMAGE_EXTENSIONS, find_pairs, list_masks

from .replies import os_reason, shorten
from .settings import DEFAULT_MAX_UPLOAD, ZIP_EXPANSION, parse_size

MAX_ZIP_UNPACKED_BYTES = ZIP_EXPANSION * parse_size(DEFAULT_MAX_UPLOAD)  # Settings.max_unpacked_bytes by default
MAX_ZIP_FILES = 100_000
DISK_RESERVE_BYTES = 2**30  # left free after unpacking: the run still writes checkpoints and previews
MAX_NAME_CHARS = 1024  # a folder or zip entry name longer than this is refused


def human_size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n} bytes"


def _too_long(path: PurePosixPath | Path) -> bool:
    """Whether a name has a part longer than file systems take (255 bytes) or is longer than MAX_NAME_CHARS."""
    return len(str(path)) > MAX_NAME_CHARS or any(len(part.encode()) > 255 for part in path.parts)


def dataset_folder(text: str, data_root: Path) -> Path:
    """A dataset folder typed by a visitor -> the server folder, only inside `data_root` (relative to it, or an
    absolute path inside it). The refusal is the same for folders that exist and folders that do not."""
    root = Path(data_root).resolve()
    typed = Path(text.strip())
    if _too_long(typed):
        raise DataError(f"the dataset folder's name is too long ('{shorten(text)}'): at most 255 characters per "
                        "folder name")
    try:
        folder = (typed if typed.is_absolute() else root / typed).resolve()
    except (OSError, RuntimeError):  # a loop of links
        folder = None
    if folder is None or not folder.is_relative_to(root):
        raise DataError("the dataset folder must be inside the server's data folder (SIAMESE_DATA_ROOT): type its "
                        "path relative to that folder, e.g. kvasir-seg, or upload a zip")
    return folder


def _mask_count(names: list[str]) -> int | None:
    """How many masks a zip's file names hold, as `mask_sources` will count them after unpacking: the image files
    under a masks/ folder when there is one, else every image file; None when a prompt.json decides."""
    if any(PurePosixPath(n).name == "prompt.json" for n in names):
        return None
    images = [PurePosixPath(n) for n in names if PurePosixPath(n).suffix.lower() in IMAGE_EXTENSIONS]
    in_masks = [p for p in images if "masks" in p.parts[:-1]]
    return len(in_masks or images)


def zip_entries(zf: zipfile.ZipFile, shown: str, max_bytes: int, max_files: int, max_file_bytes: int | None = None,
                max_masks: int | None = None) -> list[zipfile.ZipInfo]:
    """The entries of a zip to unpack (`__MACOSX/` left out), checked from its directory before anything is
    written: at most `max_files` files, `max_bytes` in all and `max_file_bytes` each, at most `max_masks` masks
    (as a batch counts them), names that stay inside the folder (no absolute path, '..', drive or link) and that
    file systems take, no name twice and none that is both a file and a folder."""
    infos = [i for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
    files = [i for i in infos if not i.is_dir()]
    if len(files) > max_files:
        raise DataError(f"{shown} holds {len(files):,} files; at most {max_files:,} are accepted")
    big = next((i for i in files if max_file_bytes is not None and i.file_size > max_file_bytes), None)
    if big is not None:
        raise DataError(f"{shown}: {shorten(big.filename)} is {human_size(big.file_size)}; a file in it may be at "
                        f"most {human_size(max_file_bytes)}")
    total = sum(i.file_size for i in files)
    if total > max_bytes:
        raise DataError(f"{shown} unpacks to {human_size(total)}; at most {human_size(max_bytes)} are "
                        f"accepted ({ZIP_EXPANSION}x the upload limit)")
    file_names, folders = set(), set()
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or is_link:
            raise DataError(f"{shown}: refusing the unsafe entry '{shorten(info.filename)}' (absolute path, "
                            "'..' or link)")
        if _too_long(PurePosixPath(name)):
            raise DataError(f"{shown}: the entry name '{shorten(name)}' is too long: at most 255 characters per "
                            "folder or file name")
        key = "/".join(parts)
        if info.is_dir():
            folders.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
            continue
        if key in file_names:
            raise DataError(f"{shown}: '{shorten(key)}' is in it twice")
        file_names.add(key)
        folders.update("/".join(parts[:k]) for k in range(1, len(parts)))
    clash = file_names & folders
    if clash:
        raise DataError(f"{shown}: '{shorten(min(clash))}' is both a file and a folder in it")
    count = _mask_count(sorted(file_names)) if max_masks is not None else None
    if count is not None and count > max_masks:
        raise DataError(f"{shown} holds {count:,} masks; a batch takes at most {max_masks:,} "
                        "(SIAMESE_BATCH_MAX_MASKS): split them")
    return infos


def extract_zip(path: str | Path, dest: Path, max_bytes: int = MAX_ZIP_UNPACKED_BYTES,
                max_files: int = MAX_ZIP_FILES, reserve_bytes: int = DISK_RESERVE_BYTES,
                max_file_bytes: int | None = None, max_masks: int | None = None, shown: str | None = None) -> Path:
    """Extract a zip into `dest` after checking its directory (`zip_entries`) and that it leaves `reserve_bytes` of
    free disk space; an entry that proves damaged, or larger than listed, is named. `shown` names the zip in
    messages (default: its file name). Returns `dest`, resolved."""
    path = Path(path)
    shown = shown or path.name
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise DataError(f"{shown} is not a readable zip file") from None
    with zf:
        infos = zip_entries(zf, shown, max_bytes, max_files, max_file_bytes, max_masks)
        total = sum(i.file_size for i in infos if not i.is_dir())  # never more is written (checked below too)
        try:
            dest.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(dest).free
        except OSError as e:
            raise DataError(f"{shown} cannot be unpacked here ({os_reason(e)})") from None
        if total + reserve_bytes > free:
            raise DataError(f"{shown} unpacks to {human_size(total)}, more than the server's free disk space "
                            "allows: upload a smaller dataset")
        root = dest.resolve()
        written = 0
        for info in infos:
            name = info.filename.replace("\\", "/")
            target = (root / name).resolve()
            if not target.is_relative_to(root):
                raise DataError(f"{shown}: refusing the entry '{shorten(info.filename)}' outside the archive folder")
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > min(total, max_bytes):  # the sizes in the directory may lie
                            raise DataError(f"{shown} unpacks to more than its listed {human_size(total)}")
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError):
                raise DataError(f"{shown}: the entry '{shorten(name)}' is damaged (its data or checksum is wrong): "
                                "make the zip again") from None
            except NotImplementedError:
                raise DataError(f"{shown}: the entry '{shorten(name)}' is compressed in a way this server cannot "
                                "unpack: use deflate (the default of most zip tools)") from None
            except RuntimeError:  # zipfile: an encrypted entry
                raise DataError(f"{shown}: the entry '{shorten(name)}' is encrypted: upload a zip without a "
                                "password") from None
            except OSError as e:
                raise DataError(f"{shown}: the entry '{shorten(name)}' cannot be unpacked ({os_reason(e)})") from None
    return root


def safe_extract_zip(path: str | Path, dest: Path, max_bytes: int = MAX_ZIP_UNPACKED_BYTES,
                     max_files: int = MAX_ZIP_FILES, reserve_bytes: int = DISK_RESERVE_BYTES,
                     shown: str | None = None) -> Path:
    """Extract a dataset zip into `dest` (safely: `extract_zip`). Returns the dataset folder inside: the
    shallowest folder with images/ + masks/ or prompt.json."""
    path = Path(path)
    shown = shown or path.name
    root = extract_zip(path, dest, max_bytes, max_files, reserve_bytes, shown=shown)
    candidates = [p for p in [root, *sorted(root.rglob("*"))] if p.is_dir()
                  and ((p / "prompt.json").is_file() or ((p / "images").is_dir() and (p / "masks").is_dir()))]
    if not candidates:
        raise DataError(f"{shown}: no dataset inside (expected images/ and masks/ folders, or prompt.json)")
    return min(candidates, key=lambda p: len(p.parts))


def mask_sources(folder: Path, shown: str) -> list[tuple[str, Path]]:
    """The masks of a folder as (name, file): its masks/ folder (a dataset), the masks its prompt.json names, else
    every image file in it and its subfolders (named by their path inside it, without the suffix). `shown` names
    the folder in messages; two files of one name are an error, files that are not images are skipped."""
    try:
        return _mask_sources(folder, shown)
    except OSError as e:
        raise DataError(f"{shown}: cannot be read ({os_reason(e)})") from None


def _mask_sources(folder: Path, shown: str) -> list[tuple[str, Path]]:
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

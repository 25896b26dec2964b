"""Files and names: atomic writes, writable folders, and what names a model (a local folder or a hub repo id).

The lowest layer of the package with `data`, `networks`, `codec` and `params`: it imports nothing of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "atomic_folder", "check_writable", "same_folder", "is_hub_id", "default_model",
           "DEFAULT_MODEL_NAME"]

DEFAULT_MODEL_NAME = "siamese-kvasir-tiny"
# a hub repo id "owner/name": letters, digits, "_", "-" and "." (the owner starts with a letter or digit)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_model() -> str:
    """The model used when none is named: $SIAMESE_MODEL (a folder or hub id), else the bundled one."""
    return os.environ.get("SIAMESE_MODEL") or str(Path(__file__).resolve().parent.parent / "checkpoints" / DEFAULT_MODEL_NAME)


def is_hub_id(text: str) -> bool:
    """Whether `text` reads as a hub repo id ("owner/name"); a local folder of that name is the caller's to
    prefer."""
    return bool(HUB_ID.match(str(text)))


def same_folder(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same folder (False when either cannot be resolved)."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


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

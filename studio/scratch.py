"""The server's scratch folder: every file visitors' requests make (gallery PNGs, export zips, unpacked uploads,
the batches' pairs) lies in one temporary folder per server process, `siamese-app-*` in the system's temporary
folder, with the process id in `server.pid`.

It is removed when the server exits (`Studio.close`, also at interpreter exit; `app.main` turns SIGTERM into a
normal exit), and a server that was killed leaves it for the next one, which removes the scratch folders of
servers that no longer run when it starts.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from siamese import Generated, export_zip
from siamese.export import png_bytes

logger = logging.getLogger(__name__)

PREFIX = "siamese-app-"
OWNER = "server.pid"
UNOWNED_AFTER_S = 24 * 3600  # a scratch folder without a pid file (older versions) is removed after a day


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process: running
    return True


def remove_stale(parent: str | Path | None = None) -> list[Path]:
    """Remove the scratch folders in `parent` (default: the system's temporary folder) of servers that no longer
    run: their pid file names a process that has ended, or they have none and are older than a day. Returns them."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in parent.glob(PREFIX + "*"):
        try:
            owner = folder / OWNER
            if owner.is_file():
                text = owner.read_text().strip()
                stale = text.isdigit() and not _running(int(text))
            else:
                stale = folder.is_dir() and time.time() - folder.stat().st_mtime > UNOWNED_AFTER_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        logger.info("removed %d scratch folders of servers that no longer run", len(removed))
    return removed


def export_label(label: str | None) -> str:
    """The nnU-Net label name of an export: letters, digits, '_' and '-' ('lesion' when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", (label if isinstance(label, str) else "").strip()) or "lesion"


class Scratch:
    """One server's scratch folder (`path`), removed by `cleanup()` or at interpreter exit."""

    def __init__(self, parent: str | Path | None = None) -> None:
        remove_stale(parent)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        (self.path / OWNER).write_text(str(os.getpid()))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def png(self, array: np.ndarray, params: dict | None = None) -> str:
        """Write a PNG (with `params` in its text) for a gallery; returns its path."""
        path = self.path / f"{uuid.uuid4().hex}.png"
        path.write_bytes(png_bytes(array, params))
        return str(path)

    def folder(self, prefix: str) -> Path:
        """A new empty folder for one request (an unpacked upload, an export)."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.path))

    def export(self, items: Sequence[Generated], stem: str, nnunet: bool = False, label: str | None = "lesion") -> str:
        """The zip of pairs a visitor downloads (`siamese.export_zip`: images/, masks/, metadata.jsonl, README.txt;
        the nnU-Net v2 layout as an option), in a folder of its own; returns its path."""
        path = self.folder("export-") / f"{stem}-{len(items)}.zip"
        return str(export_zip(items, path, nnunet=bool(nnunet), label=export_label(label)))

    def cleanup(self) -> None:
        self._finalizer()

"""Text shown to visitors: Markdown escaping, server paths replaced by public names, and the one-line answer a
handler gives whatever went wrong.

Replies and error messages never show a server path: the app's folders appear under their public names
(`runs/app/NAME`, `checkpoints/NAME`, `models/PATH`, a dataset folder relative to the data root), and
any other absolute path is cut to its last part (`…/NAME`).

Every handler ends in `refusal` for any exception: the library's errors and the app's own checks (ValueError:
DataError, ModelLoadError, ...) and the app's `Busy` keep their message, which names the file, entry or setting; an
OSError or a damaged zip is named by the setting the handler was reading, never by the library's bare text; anything
else is logged on the server and answered with a line that names the request only.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import gradio as gr

logger = logging.getLogger(__name__)

MAX_REPLY_CHARS = 400  # an error line longer than this is cut

# an absolute path not inside a word, a URL or a relative path; it ends at white space, quotes or brackets
_ABSOLUTE = re.compile(r"(?<![\w.:/~\\…-])/[^\s'\"`,;()\[\]<>]+")


class Busy(RuntimeError):
    """The server cannot take the request now (a run in progress, the batch limit reached); the message says why."""


def md_escape(text: str) -> str:
    """Plain text shown in a Markdown component: no accidental bold, links or code."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", text)


def shorten(text: str, limit: int = 80) -> str:
    """A name a visitor sent, cut to `limit` characters for a message."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Redactor:
    """Server paths in a text -> public names: `Redactor([(folder, "runs/app"), ...])(text)`.

    A folder named "" is the base of relative names (the data root): its own path becomes ".".
    """

    def __init__(self, names: Iterable[tuple[str | Path | None, str]]) -> None:
        pairs: dict[str, str] = {}
        for folder, name in names:
            if folder is None:
                continue
            for spelling in (str(folder), str(Path(folder).resolve())):
                if spelling != "/":
                    pairs.setdefault(spelling.rstrip("/"), name)
        self._pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))  # the most specific folder first

    def __call__(self, text: str) -> str:
        for folder, name in self._pairs:
            # the folder itself, or followed by "/": never a longer name that only starts like it
            text = re.sub(re.escape(folder) + r"(/|(?![\w.-]))",
                          lambda m, name=name: (name + "/" if name else "") if m[1] else (name or "."), text)
        return _ABSOLUTE.sub(lambda m: "…/" + m[0].rstrip("/").rsplit("/", 1)[-1], text)


def os_reason(e: OSError) -> str:
    """What an OSError says, without the file name it carries: "file name too long", "no space left on device"."""
    return (e.strerror or type(e).__name__).lower()


def one_line(text: str, redact: Redactor) -> str:
    """A message as one line with no server path, at most MAX_REPLY_CHARS long."""
    text = " ".join(redact(str(text)).split())
    return shorten(text, MAX_REPLY_CHARS)


def refusal(e: BaseException, redact: Redactor, what: str) -> gr.Error:
    """Any exception a handler met -> the one-line gr.Error the visitor sees. `what` names what the handler was
    doing or reading ("generation", "the batch's masks"): it names an OSError, a damaged zip and unexpected errors,
    whose own text may hold server paths or a library's internals."""
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, ValueError):  # DataError, ModelLoadError, GuideError and the app's checks
        return gr.Error(one_line(str(e), redact), title="Input problem")
    if isinstance(e, Busy):
        return gr.Error(one_line(str(e), redact), title="Busy")
    if isinstance(e, zipfile.BadZipFile):
        return gr.Error(one_line(f"{what}: not a readable zip file", redact), title="Input problem")
    if isinstance(e, OSError):
        logger.warning("%s: %r", what, e)
        return gr.Error(one_line(f"{what}: {os_reason(e)}", redact), title="Input problem")
    logger.error("%s failed", what, exc_info=e)
    return gr.Error(one_line(f"{what} failed on the server ({type(e).__name__}); its log has the details",
                             redact), title="Error")

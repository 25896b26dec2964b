"""Text shown to visitors: Markdown escaping, and server paths replaced by the names visitors know.

Replies and error messages never show a server path: the app's folders appear under their public names
(`runs/app/NAME`, `checkpoints/NAME`, `models/PATH`, a dataset folder relative to the data root), and
any other absolute path is cut to its last part (`…/NAME`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import gradio as gr

from siamese import DataError

# an absolute path not inside a word, a URL or a relative path; it ends at white space, quotes or brackets
_ABSOLUTE = re.compile(r"(?<![\w.:/~\\…-])/[^\s'\"`,;()\[\]<>]+")


def md_escape(text: str) -> str:
    """Plain text shown in a Markdown component: no accidental bold, links or code."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", text)


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


def user_error(e: Exception, redact: Redactor) -> gr.Error:
    """A library error as the message a visitor sees (no server paths)."""
    return gr.Error(redact(str(e)), title="Input problem" if isinstance(e, (DataError, ValueError)) else "Error")

"""Stopping a long job: the `threading.Event` that the CLI's Ctrl-C and the app's Stop button set."""

from __future__ import annotations

import threading

__all__ = ["Stopped", "check_stop"]


class Stopped(Exception):
    """A long job whose stop event was set; what it had saved is kept, and the same call resumes or starts over."""


def check_stop(stop: threading.Event | None, message: str) -> None:
    """Raise Stopped(message) when `stop` is set (None: the job cannot be stopped)."""
    if stop is not None and stop.is_set():
        raise Stopped(message)

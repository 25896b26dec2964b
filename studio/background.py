"""What the training job and the batch job share: one piece of work at a time in a background thread, a stop
flag it checks between steps, a state and message the page polls, and a version bumped on every change."""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundJob:
    """A stoppable background thread with the state the page shows (subclasses add what they report)."""

    def __init__(self, message: str) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.version = 0  # bumped on every change the page shows
        self.state = "idle"  # idle | running | stopping | finished | stopped | failed
        self.message = message
        self.error = ""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _launch(self, target: Callable[..., None], args: tuple, name: str) -> None:
        """Start `target(*args)` in a daemon thread with a fresh stop flag (called with the lock held, after the
        state is set)."""
        self._stop = threading.Event()
        self.version += 1
        self._thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._thread.start()

    def _stop_with(self, message: str) -> bool:
        """Ask the running work to stop after its current step; False when nothing runs."""
        with self._lock:
            if not self.running:
                return False
            self._stop.set()
            self.state = "stopping"
            self.message = message
            self.version += 1
            return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

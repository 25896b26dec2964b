"""What the background jobs share, and who uses the models next.

`BackgroundJob`: one piece of work at a time in a background thread, a stop flag it checks between steps, a state
and message the page polls (only while the state is one of `ACTIVE_STATES`, every `POLL_SECONDS`), and a version
bumped on every change. The training job and the batch job are its two kinds.

`Turns`: a visitor's Generate before any batch, and the batches of all sessions in turn. Batches run one
image-batch at a time (`with turns.batch(): next(pairs)`); a Generate request (`with turns.interactive(): ...`)
waits at most for the image-batch in progress, no batch starts another while a request waits, and after a request
the batches wait `grace_s` more, so that the next request in the server's queue goes first too. Batches take
tickets, so several sessions' batches alternate fairly.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ACTIVE_STATES = ("running", "stopping")  # the page polls a job only while it is in one of these
POLL_SECONDS = 1.5
STATE_ICONS = {"idle": "", "running": "⏳ ", "stopping": "⏳ ", "finished": "✅ ", "stopped": "⏹️ ",
               "failed": "❌ "}
GRACE_S = 0.3  # after a Generate, batches wait this long for the next queued Generate


def duration(seconds: float) -> str:
    """1h02m, 3m05s or 7s."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


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


class Cancelled(Exception):
    """The request was cancelled, or its client left, while it waited or sampled."""


class Turns:
    """A lock with a priority: interactive requests first, then batch steps in ticket order."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0  # interactive requests waiting for their turn
        self._next_ticket = 0
        self._serving = 0  # the batch ticket whose turn it is
        self._last_interactive = -math.inf  # when the last interactive request ended (time.monotonic)

    @contextmanager
    def interactive(self, cancelled: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the models for one interactive request (a Generate). `cancelled()` is asked while it waits: Cancelled
        when it turns true."""
        with self._cond:
            self._waiting += 1
            try:
                while self._busy:
                    self._cond.wait(0.25 if cancelled is not None else None)
                    if cancelled is not None and self._busy and cancelled():
                        raise Cancelled("the request was cancelled while it waited for the models")
            finally:
                self._waiting -= 1
                self._cond.notify_all()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._last_interactive = time.monotonic()
                self._cond.notify_all()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the models for one step of a batch, after every waiting request and earlier batch step."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while True:
                ready = not self._busy and not self._waiting and self._serving == ticket
                left = self._last_interactive + self.grace_s - time.monotonic()
                if ready and left <= 0:
                    break
                self._cond.wait(left if ready else None)
            self._serving += 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

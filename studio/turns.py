"""Who uses the models next: a visitor's Generate before any batch, and the batches of all sessions in turn.

Batches run in background threads one image-batch at a time (`with turns.batch(): next(pairs)`); a Generate
request (`with turns.interactive(): ...`) waits at most for the image-batch in progress, and no batch starts
another while a request waits. Batches take tickets, so several sessions' batches alternate fairly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Turns:
    """A lock with a priority: interactive requests first, then batch steps in ticket order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0  # interactive requests waiting for their turn
        self._next_ticket = 0
        self._serving = 0  # the batch ticket whose turn it is

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """Hold the models for one interactive request (a Generate)."""
        with self._cond:
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._busy)
            finally:
                self._waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the models for one step of a batch, after every waiting request and earlier batch step."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: not self._busy and not self._waiting and self._serving == ticket)
            self._serving += 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

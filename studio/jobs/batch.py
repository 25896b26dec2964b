"""Batches in the background: one job per browser session, kept on the server so that a reloaded page finds it.

A session is named by a key the page keeps in its local storage (gr.BrowserState). The key is made here, with
`secrets`, when the session's first batch starts, so no one can guess another session's key. A job runs the
library's `siamese.batch.run_batch` in a thread, one image-batch per turn of the models (`Turns`), and writes
every pair as two PNG files in its own folder (the image with its parameters and score in the PNG text, and the
mask): a 1,000-mask batch costs disk, not memory.

The registry keeps a session's batch, running or finished, until no page has asked for it for `MAX_IDLE_S` since
it ended (then it is dropped with its files); another session never evicts it. It holds at most `MAX_KEPT`
sessions' batches: when full, a new session's batch is refused until one expires (a session may always start a new
batch of its own, which replaces its last).
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from siamese import DataError, Generated, ModelLoadError
from siamese.export import png_bytes

from ..replies import Busy, md_escape, os_reason
from .base import BackgroundJob, Turns, duration

logger = logging.getLogger(__name__)

MAX_KEPT = 16  # sessions' batches kept (with their pairs) for their sessions to come back to
MAX_IDLE_S = 6 * 3600  # a batch no page has looked at for this long since it ended is dropped with its files


@dataclass
class BatchPair:
    """A pair a batch made: its PNG files, how it was made, its fidelity and the set it is in."""

    id: int
    name: str  # the mask it was made from
    seed: int
    image: str  # PNG files in the job's folder
    mask: str
    params: dict  # its metadata line at export (fidelity and threshold included)
    fidelity: float | None  # None: unscored (the model has no scorer)
    accepted: bool
    moved: bool = False  # moved to the other set by hand

    def generated(self) -> StoredPair:
        """The pair for `siamese.export_zip` (a `Generated` read from its files when the export reaches it: a big
        batch is never all in memory), with how it was curated in its params."""
        curation = "moved by hand" if self.moved else "threshold" if self.fidelity is not None else "unscored"
        return StoredPair(self.image, self.mask, self.seed, {**self.params, "curation": curation})


class StoredPair(Generated):
    """A `Generated` whose image and mask are read from PNG files each time they are used."""

    def __init__(self, image: str, mask: str, seed: int, params: dict) -> None:  # noqa: D107 - no dataclass init
        self._files, self.seed, self.params = (image, mask), seed, params

    @property
    def image(self) -> np.ndarray:
        with Image.open(self._files[0]) as im:
            return np.asarray(im.convert("RGB"))

    @property
    def mask(self) -> np.ndarray:
        with Image.open(self._files[1]) as im:
            return np.asarray(im.convert("L"))


class BatchJob(BackgroundJob):
    """One session's batch: started, polled, stopped, curated (pairs moved between the sets) and exported."""

    def __init__(self, key: str, folder: Path, public: Callable[[str], str] = str) -> None:
        super().__init__("No batch yet: upload masks (or name a dataset folder), then Start.")
        self.key, self.folder, self.public = key, folder, public
        self.pairs: list[BatchPair] = []
        self.total = 0
        self.min_fidelity: float | None = None
        self.scored = False
        self.describe = ""
        self._t0 = self._t1 = 0.0
        self.seen = time.monotonic()  # when a page last asked for it (the registry drops long-unseen jobs)
        self.ended = time.monotonic()  # when its work last ended (or it was made)

    def idle_s(self) -> float:
        """Seconds since it was last asked for or ended, whichever came later; 0 while it runs."""
        return 0.0 if self.running else time.monotonic() - max(self.seen, self.ended)

    def start(self, make_pairs: Callable[[threading.Event], Iterator], total: int, min_fidelity: float | None,
              scored: bool, describe: str, turns: Turns) -> None:
        """Run `make_pairs(stop)` (the library's iterator of ScoredPair) in a thread, one step per turn."""
        with self._lock:
            if self.running:
                raise Busy("a batch is already running in this session: stop it first")
            self.state, self.pairs, self.total, self.error = "running", [], total, ""
            self.min_fidelity, self.scored, self.describe = min_fidelity, scored, describe
            self.message = "Starting: sampling the first images..."
            self._t0, self._t1 = time.monotonic(), 0.0
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            self._launch(self._run, (make_pairs, turns), "siamese-batch")

    def stop(self) -> bool:
        return self._stop_with("Stopping after the images in progress; the pairs made are kept...")

    def _run(self, make_pairs: Callable[[threading.Event], Iterator], turns: Turns) -> None:
        try:
            pairs = iter(make_pairs(self._stop))
            while True:
                with turns.batch():  # one image-batch; a waiting Generate goes first
                    scored = next(pairs, None)
                if scored is None:
                    break
                self._add(scored)
        except (DataError, ModelLoadError, ValueError) as e:
            self._end("failed", str(e))
        except OSError as e:  # its text names server files: the reason only
            logger.exception("batch failed")
            self._end("failed", f"a file could not be read or written ({os_reason(e)})")
        except Exception as e:  # noqa: BLE001 - a failed batch must not take the server down
            logger.exception("batch failed")
            self._end("failed", f"{type(e).__name__}: {e}")
        else:
            self._end("stopped" if self._stop.is_set() else "finished")

    def _add(self, scored) -> None:
        """A ScoredPair from the library -> two PNG files and a BatchPair."""
        item, fidelity = scored.item, None if scored.fidelity is None else float(scored.fidelity)
        params = {**item.params, "fidelity": None if fidelity is None else round(fidelity, 4),
                  "min_fidelity": self.min_fidelity if self.scored else None}
        params.setdefault("source_mask", scored.name)
        n = len(self.pairs)
        image, mask = self.folder / f"{n:05d}.png", self.folder / f"{n:05d}_mask.png"
        image.write_bytes(png_bytes(item.image, params))
        mask.write_bytes(png_bytes(item.mask))
        with self._lock:
            self.pairs.append(BatchPair(n, scored.name, item.seed, str(image), str(mask), params, fidelity,
                                        bool(scored.accepted)))
            self._t1 = time.monotonic()
            self.version += 1

    def _end(self, state: str, error: str = "") -> None:
        with self._lock:
            self.state, self.error = state, " ".join(self.public(error).split())
            self.ended = time.monotonic()
            done = len(self.pairs)
            if state == "failed":
                self.message = f"The batch failed after {done} pairs (kept): {md_escape(self.error)}"
            else:
                verb, kept = ("Stopped", " (those made are kept)") if state == "stopped" else ("Finished", "")
                self.message = (f"{verb}: {done} of {self.total} pairs made{kept}. Click a pair to move it to the "
                                "other set; export the accepted ones.")
            self.version += 1

    def move(self, pair_id: int) -> BatchPair:
        """Move a pair to the other set (accepted <-> rejected)."""
        with self._lock:
            if not 0 <= pair_id < len(self.pairs):
                raise ValueError(f"pair #{pair_id} is not in this batch: it holds pairs #0 to #{len(self.pairs) - 1}"
                                 if self.pairs else "this batch holds no pairs yet")
            pair = self.pairs[pair_id]
            pair.accepted, pair.moved = not pair.accepted, not pair.moved
            self.version += 1
            return pair

    def snapshot(self) -> dict:
        with self._lock:
            done = len(self.pairs)
            accepted = sum(p.accepted for p in self.pairs)
            per_pair = (self._t1 - self._t0) / done if done else 0.0
            return dict(version=self.version, state=self.state, message=self.message, done=done, total=self.total,
                        accepted=accepted, rejected=done - accepted, s_per_pair=per_pair,
                        eta_s=per_pair * (self.total - done), min_fidelity=self.min_fidelity, scored=self.scored,
                        describe=self.describe, error=self.error, pairs=list(self.pairs))


class BatchRegistry:
    """The sessions' jobs by key; a key the registry did not make (or has dropped) gets a new job and key."""

    def __init__(self, root: Path, max_active: int, public: Callable[[str], str] = str,
                 max_kept: int = MAX_KEPT, max_idle_s: float = MAX_IDLE_S) -> None:
        self.root, self.max_active, self.public = Path(root), max_active, public
        self.max_kept, self.max_idle_s = max_kept, max_idle_s
        self._jobs: dict[str, BatchJob] = {}
        self._lock = threading.Lock()

    def get(self, key: object) -> BatchJob | None:
        with self._lock:
            job = self._jobs.get(key) if isinstance(key, str) else None
            if job is not None:
                job.seen = time.monotonic()
            return job

    def active(self) -> int:
        with self._lock:
            return sum(job.running for job in self._jobs.values())

    def _expire(self) -> None:
        """Drop, with their files, the jobs no page has asked for in `max_idle_s` since they ended (lock held)."""
        for key in [k for k, job in self._jobs.items() if job.idle_s() > self.max_idle_s]:
            shutil.rmtree(self._jobs.pop(key).folder, ignore_errors=True)

    def check(self, key: object) -> None:
        """Busy unless the session may start a batch: none running in it, room for one more running batch on the
        server, and, for a session without a batch, room in the registry."""
        job = self.get(key)
        if job is not None and job.running:
            raise Busy("a batch is already running in this session: stop it first, or wait")
        if self.active() >= self.max_active:
            raise Busy(f"the server is running {self.max_active} batches (its limit, "
                       "SIAMESE_BATCH_MAX_ACTIVE): try again when one has finished")
        if job is None:
            with self._lock:
                self._check_room()

    def _check_room(self) -> None:
        """Busy when the registry holds `max_kept` sessions' batches that have not expired (lock held)."""
        self._expire()
        if len(self._jobs) >= self.max_kept:
            soonest = self.max_idle_s - max(job.idle_s() for job in self._jobs.values())
            raise Busy(f"the server keeps the batches of {self.max_kept} sessions (its limit) until their pages "
                       f"leave them for {duration(self.max_idle_s)}: try again in {duration(max(soonest, 60))}")

    def job_for(self, key: object) -> BatchJob:
        """The session's job, ready to start (`check`): its own, else a new one with a new key."""
        self.check(key)
        job = self.get(key)
        with self._lock:
            if job is None:
                self._check_room()
                key = secrets.token_urlsafe(16)
                job = self._jobs[key] = BatchJob(key, self.root / key, self.public)
            return job

    def stop_all(self, timeout: float | None = None) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop()
        for job in jobs:
            job.wait(timeout)

"""Batches in the background: one job per browser session, kept on the server so that a reloaded page finds it.

A session is named by a key the page keeps in its local storage (gr.BrowserState). The key is made here, with
`secrets`, when the session's first batch starts, so no one can guess another session's key. A job runs the
library's `siamese.batch.run_batch` in a thread, one image-batch per turn of the models (`studio.turns`), and
writes every pair as two PNG files in its own folder (the image with its parameters and score in the PNG text,
and the mask): a 1,000-mask batch costs disk, not memory. The registry keeps the `MAX_KEPT` jobs used last and
drops (with their files) older ones and those no page has asked for in `MAX_IDLE_S`.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from siamese import DataError, Generated, ModelLoadError
from siamese.export import png_bytes

from .background import BackgroundJob
from .messages import md_escape
from .turns import Turns

logger = logging.getLogger(__name__)

ACTIVE_STATES = ("running", "stopping")  # the page polls only while its batch is in one of these
MAX_KEPT = 16  # jobs kept (with their pairs) for sessions to come back to; running ones are never dropped
MAX_IDLE_S = 24 * 3600  # a job no page has looked at for this long is dropped with its files


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

    def start(self, make_pairs: Callable[[threading.Event], Iterator], total: int, min_fidelity: float | None,
              scored: bool, describe: str, turns: Turns) -> None:
        """Run `make_pairs(stop)` (the library's iterator of ScoredPair) in a thread, one step per turn."""
        with self._lock:
            if self.running:
                raise RuntimeError("a batch is already running in this session: stop it first")
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
            self.state, self.error = state, self.public(error)
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
                 max_kept: int = MAX_KEPT) -> None:
        self.root, self.max_active, self.public, self.max_kept = Path(root), max_active, public, max_kept
        self._jobs: OrderedDict[str, BatchJob] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> BatchJob | None:
        with self._lock:
            job = self._jobs.get(key) if isinstance(key, str) else None
            if job is not None:
                self._jobs.move_to_end(key)
                job.seen = time.monotonic()
            return job

    def active(self) -> int:
        with self._lock:
            return sum(job.running for job in self._jobs.values())

    def check(self, key: object) -> None:
        """RuntimeError unless the session may start a batch: none running in it, and room on the server."""
        job = self.get(key)
        if job is not None and job.running:
            raise RuntimeError("a batch is already running in this session: stop it first, or wait")
        if self.active() >= self.max_active:
            raise RuntimeError(f"the server is running {self.max_active} batches (its limit, "
                               "SIAMESE_BATCH_MAX_ACTIVE): try again when one has finished")

    def job_for(self, key: object) -> BatchJob:
        """The session's job, ready to start (`check`): its own, else a new one with a new key."""
        self.check(key)
        job = self.get(key)
        with self._lock:
            if job is None:
                key = secrets.token_urlsafe(16)
                job = self._jobs[key] = BatchJob(key, self.root / key, self.public)
            idle = [k for k, j in self._jobs.items() if not j.running and j is not job]
            stale = {k for k in idle if time.monotonic() - self._jobs[k].seen > MAX_IDLE_S}
            for old in stale | set(idle[:max(0, len(self._jobs) - self.max_kept)]):  # the least recently used first
                shutil.rmtree(self._jobs.pop(old).folder, ignore_errors=True)
            return job

    def stop_all(self, timeout: float | None = None) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.stop()
        for job in jobs:
            job.wait(timeout)

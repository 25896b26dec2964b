"""Timing on a shared machine: interleaved repeats, medians, paired ratios.

Ours and its baseline are timed in the same process, alternating (A B, then B A, ...), so that a load
change on the machine hits both; a speedup is the median of the per-repeat ratios. On the CPU the
process CPU time is recorded beside the wall time: it is less sensitive to other jobs taking the cores.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["Timings", "interleaved", "synchronize", "median", "load_average"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load_average() -> float | None:
    """1-minute load average of the machine (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@dataclass
class Timings:
    """Seconds per call of each variant, in the order they were measured (wall and process CPU time)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str, clock: str = "wall") -> float:
        return median(getattr(self, clock)[name])

    def ratio(self, slow: str, fast: str, clock: str = "wall") -> float:
        """Median over repeats of slow_i / fast_i (paired: measured back to back)."""
        times = getattr(self, clock)
        return median([s / f for s, f in zip(times[slow], times[fast])])

    def summary(self) -> dict:
        return {name: {"median_s": round(self.median(name), 4), "wall_s": [round(v, 4) for v in self.wall[name]],
                       "cpu_s": [round(v, 4) for v in self.cpu[name]]} for name in self.wall}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> Timings:
    """Time each function `repeats` times, alternating the order every repeat. Call each once before
    (warm-up: allocator, oneDNN primitives, cuDNN autotuning, compilation) outside this function."""
    out = Timings({n: [] for n in fns}, {n: [] for n in fns})
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            synchronize(device)
            out.wall[name].append(time.perf_counter() - w0)
            out.cpu[name].append(time.process_time() - c0)
    return out

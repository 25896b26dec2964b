"""Peak memory (and warm step time) of one training variant, measured in a fresh process.

The CPU allocator of torch is not instrumented and tracemalloc does not see it, so each variant runs in
its own process: build the model and batch, run one warm-up step, reset the kernel's resident-memory
high-water mark (`/proc/self/clear_refs`), run one step, and report the high-water mark above the
resident memory before that step (garbage collected first: the naive objective's deep copies of the
previous step would otherwise still be resident and hide the new ones). Large tensors are returned to
the OS as soon as they are freed (glibc's mmap threshold fixed at 128 KiB for the worker), so the
figure is the step's real peak: its activations, its graphs and the gradients it writes. Where
clear_refs is not available, the growth of ru_maxrss over the step is used. On CUDA:
`torch.cuda.max_memory_allocated` above the memory allocated before the step, and the absolute peak.

    python -m bench.worker '{"variant": "ours", "preset": "tiny", "batch": 8}'   # prints one JSON line
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = ["measure", "run"]

ROOT = Path(__file__).resolve().parent.parent
# timed_steps: warm steps timed after the measured one (which is timed too)
DEFAULTS = dict(variant="ours", preset="tiny", resolution=None, batch=8, device="cpu", amp_dtype="float32",
                threads=None, channels_last=True, compile=False, gradient_checkpointing=False, timed_steps=0,
                seed=0, model_path=None, optimizer=None)


def measure(spec: dict, timeout: float = 1800) -> dict:
    """Run one worker process for `spec` (see DEFAULTS) and return what it reports."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "bench.worker", json.dumps(spec)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"worker exited with {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


# -- inside the worker ---------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc (macOS): the lifetime peak is the best lower bound there is
        return _maxrss_bytes()


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _make_optimizer(kind: str | None, params: list[torch.nn.Parameter]):
    if kind is None:
        return None
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-5)
    return torch.optim.AdamW(params, lr=1e-5)


def run(spec: dict) -> dict:
    from siamese.model import load_model

    from .training import step_function
    from .workload import PRESETS, build_preset, parse_dtype, prepare_networks, train_batch

    s = {**DEFAULTS, **spec}
    if s["threads"]:
        torch.set_num_threads(int(s["threads"]))
    device = torch.device(s["device"])
    if s["model_path"]:
        model = load_model(s["model_path"])
        if s["resolution"]:
            model.config.resolution = int(s["resolution"])
        if model.controlnet is None:
            model.add_controlnet(s["seed"])
    else:
        model = build_preset(PRESETS[s["preset"]], s["resolution"], s["seed"])
    params = prepare_networks(model, device, channels_last=s["channels_last"], compile=s["compile"],
                              gradient_checkpointing=s["gradient_checkpointing"], train=True)
    batch = train_batch(model, s["batch"], s["seed"], s["channels_last"])
    step = step_function(s["variant"], model, batch, params, parse_dtype(s["amp_dtype"]))
    optimizer = _make_optimizer(s["optimizer"], list(params.values()))

    def full_step():
        step()
        if optimizer is not None:
            optimizer.step()

    full_step()  # warm-up: lazy initialisation, oneDNN primitives, optimiser state
    for p in params.values():
        p.grad = None
    gc.collect()  # the naive objective's deep copies are cyclic garbage: gone before the step, not counted in it
    out: dict = {"spec": s, "resolution": model.config.resolution}
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        full_step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        out.update(peak_bytes=peak - before, peak_total_bytes=peak, before_bytes=before,
                   method="torch.cuda.max_memory_allocated")
    else:
        before = _rss_bytes()
        if _reset_hwm():
            full_step()
            out.update(peak_bytes=_hwm_bytes() - before, method="VmHWM after clear_refs")
        else:
            start = _maxrss_bytes()
            full_step()
            out.update(peak_bytes=max(0, _maxrss_bytes() - max(start, before)), method="ru_maxrss growth")
        out.update(before_bytes=before, peak_total_bytes=before + out["peak_bytes"])
    times = [round(time.perf_counter() - t0, 4)]  # the measured step is warm: it counts as a timed one
    for _ in range(int(s["timed_steps"])):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        full_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(round(time.perf_counter() - t0, 4))
    out["step_s"] = times
    return out


def main() -> int:
    spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    try:
        result = run(spec)
    except torch.OutOfMemoryError as e:
        result = {"spec": spec, "error": f"out of memory: {str(e).splitlines()[0]}"}
    except Exception as e:  # reported, not hidden: e.g. the library objective under gradient checkpointing
        result = {"spec": spec, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Synthesis across processes: `torchrun --nproc_per_node N -m siamese sample ...` (or `accelerate launch`).

Each process takes a contiguous share of the masks (`process_share`) and writes its pairs into its own part folder
(`OUTPUT/.parts/rank-R/`, with its own metadata.jsonl); after a barrier, process 0 moves the files into OUTPUT and
merges the metadata lines in mask order. Seeds are a function of a mask's index in the whole list, and the random
base seed (no `--seed`) is chosen by process 0 and broadcast, so N processes write the same files (the same images
up to float rounding: an occasional pixel 1 level off) and the same metadata lines, in the same order, as one
process: no line lost or doubled, whatever the order in which the processes finish.

One process (no RANK/WORLD_SIZE in the environment, or WORLD_SIZE=1) writes straight into OUTPUT, as before;
nothing distributed is started.

    share = start_share(len(masks))
    base_seed = share.agree(random_seed())
    folder = clear_part(share, out)
    for m in share.indices:
        write_pairs(items_of(m), folder, names_of(m))
    share.finish(out)            # barrier; process 0 merges the parts into OUTPUT
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .export import metadata_image, read_lines, remove_pairs
from .files import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["process_share", "Share", "start_share", "clear_part", "merge_parts", "PARTS"]

PARTS = ".parts"  # OUTPUT/.parts/rank-R/: one process's pairs until they are merged


def process_share(n: int, rank: int, world: int) -> range:
    """The indices of `n` items process `rank` of `world` takes: contiguous, sizes differ by at most one, every item
    in exactly one share (rank order = item order, so merging the shares in rank order keeps the items' order)."""
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise ValueError(f"process rank must be in 0..world size - 1 and the world size at least 1, got rank {rank} "
                         f"of {world}")
    if n < 0:
        raise ValueError(f"number of items must be 0 or more, got {n}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


@dataclass
class Share:
    """This process's place among the processes of one run, and its share of the items."""

    rank: int
    world: int
    indices: range
    device: torch.device | None = None  # the process's device (its GPU under torchrun); None: the caller decides
    _state: Any = field(default=None, repr=False)  # accelerate's PartialState when world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, value):
        """Process 0's `value` in every process (e.g. a random seed); the value itself with one process."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def part_folder(self, out: str | Path) -> Path:
        """Where this process writes its pairs: OUTPUT itself with one process, else OUTPUT/.parts/rank-R/."""
        return Path(out) if self.world == 1 else Path(out) / PARTS / f"rank-{self.rank:05d}"

    def sum(self, counts: dict[str, int]) -> dict[str, int]:
        """Every process's `counts` added up (the counts themselves with one process)."""
        if self.world == 1:
            return counts
        from accelerate.utils import gather_object

        return {k: sum(c[k] for c in gather_object([counts])) for k in counts}

    def wait(self) -> None:
        if self.world > 1:
            self._state.wait_for_everyone()

    def finish(self, out: str | Path, sides: tuple[str, ...] = ("",)) -> int | None:
        """Barrier, then process 0 merges every part into OUTPUT (`sides`: its subfolders with pairs, "" for
        OUTPUT itself); returns the number of pairs merged (process 0; None elsewhere). With one process:
        nothing to merge, returns None."""
        if self.world == 1:
            return None
        self.wait()
        merged = merge_parts(out, self.world, sides) if self.main else None
        self.wait()  # no process leaves before OUTPUT is complete
        # leave the process group in order: a process that exits with gloo's threads still running can abort
        # ("terminate called without an active exception") and take the whole torchrun down with it
        self._state.destroy_process_group()
        return merged


def start_share(n: int, cpu: bool | None = None) -> Share:
    """This process's share of `n` items. Under torchrun / accelerate launch (WORLD_SIZE > 1), accelerate's
    PartialState joins the process group (gloo on CPUs, NCCL on GPUs) and gives the process's device (`cpu`: force
    the CPU; None: the CPU when there is no CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Share(0, 1, process_share(n, 0, 1))
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)
    rank, world = state.process_index, state.num_processes
    logger.info("process %d of %d takes %s of %d items", rank, world, process_share(n, rank, world), n)
    # accelerate names the CPU "cpu:0"; moving the weights there gave images 1 level off (in a few pixels) from one
    # process's on "cpu": plain "cpu" keeps them byte-identical
    device = torch.device("cpu") if state.device.type == "cpu" else state.device
    return Share(rank, world, process_share(n, rank, world), device, state)


def clear_part(share: Share, out: str | Path) -> Path:
    """Empty this process's part folder (what an interrupted earlier run left there) and return it; one process
    writes into OUTPUT itself and removes the parts an interrupted multi-process run left (OUTPUT/.parts/)."""
    folder = share.part_folder(out)
    shutil.rmtree(folder if share.world > 1 else Path(out) / PARTS, ignore_errors=True)
    return folder


def merge_parts(out: str | Path, world: int, sides: tuple[str, ...] = ("",)) -> int:
    """Move OUTPUT/.parts/rank-R/SIDE/{images,masks}/* into OUTPUT/SIDE and merge their metadata.jsonl lines into
    OUTPUT/SIDE/metadata.jsonl in rank order, with `write_pairs`' rule: a name written again replaces its line, lines
    of other names stay. A pair merged into one side leaves the others (as `sample` does with one process: made
    before with other settings, it was accepted then and is rejected now, or the reverse). Returns the number of
    pairs merged; the parts are removed."""
    out = Path(out)
    names: dict[str, list[str]] = {}
    for side in sides:
        lines: list[str] = []
        for rank in range(world):
            part = out / PARTS / f"rank-{rank:05d}" / side
            for sub in ("images", "masks"):
                if (part / sub).is_dir():
                    (out / side / sub).mkdir(parents=True, exist_ok=True)
                    for path in sorted((part / sub).iterdir()):
                        os.replace(path, out / side / sub / path.name)
            lines += read_lines(part / "metadata.jsonl")
        replaced = {metadata_image(line) for line in lines}
        if lines:
            meta = out / side / "metadata.jsonl"
            kept = [line for line in read_lines(meta) if metadata_image(line) not in replaced]
            atomic_write(meta, "".join(line + "\n" for line in kept + lines).encode("utf-8", "surrogateescape"))
        names[side] = [Path(image).stem for image in replaced if image]
    for side in sides:
        for other in sides:
            if other != side:
                remove_pairs(out / other, names[side])
    shutil.rmtree(out / PARTS, ignore_errors=True)
    total = sum(len(v) for v in names.values())
    logger.info("merged %d pairs from %d processes into %s", total, world, out)
    return total

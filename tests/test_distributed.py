"""Synthesis across processes: the split of the masks, the merge of the parts, and a real 2-process torchrun on
the CPU (gloo) writing the same files and the same metadata lines as one process (images equal to the last bit
of float rounding)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_dataset
from siamese.cli import main
from siamese.distributed import PARTS, Share, merge_parts, process_share

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n, world", [(0, 2), (1, 3), (5, 2), (10, 3), (7, 7), (64, 8)])
def test_every_item_goes_to_exactly_one_process_in_order(n, world):
    shares = [process_share(n, rank, world) for rank in range(world)]
    assert [i for share in shares for i in share] == list(range(n))  # contiguous, in rank order
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("rank, world", [(2, 2), (-1, 2), (0, 0)])
def test_a_bad_rank_is_named(rank, world):
    with pytest.raises(ValueError, match=f"rank {rank} of {world}"):
        process_share(4, rank, world)


def test_merge_keeps_one_line_per_pair_in_rank_order(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "old.png").write_bytes(b"old")
    earlier = [{"image": "images/old.png", "seed": 1}, {"image": "images/b_00.png", "seed": 2}]
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))
    for rank, names in enumerate((["a_00", "a_01"], ["b_00"])):
        part = Share(rank, 2, range(0)).part_folder(out)
        for sub in ("images", "masks"):
            (part / sub).mkdir(parents=True)
            for name in names:
                (part / sub / f"{name}.png").write_bytes(f"{sub}/{name}".encode())
        (part / "metadata.jsonl").write_text("".join(json.dumps({"image": f"images/{n}.png", "rank": rank}) + "\n"
                                                     for n in names))
    assert merge_parts(out, 2) == 3
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["image"] for r in lines] == ["images/old.png", "images/a_00.png", "images/a_01.png", "images/b_00.png"]
    assert lines[-1]["rank"] == 1  # the line of a name written again is replaced, not doubled
    assert (out / "images" / "b_00.png").read_bytes() == b"images/b_00"
    assert not (out / PARTS).exists()


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "siamese",
           *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_same_outputs(one: dict[str, bytes], two: dict[str, bytes]) -> None:
    """The same files; metadata.jsonl line for line; images equal but for float rounding: torch on a CPU does
    not promise bit-equal sums across processes (memory alignment picks the vector kernels), and a 2-step
    sample from t = 999 magnifies the last bit into an occasional 1-level pixel step. A mask sampled with a
    wrong seed or put in the wrong place differs everywhere."""
    assert one.keys() == two.keys()  # no .parts/ left behind
    for name in one:
        if not name.endswith(".png") or one[name] == two[name]:
            assert one[name] == two[name], name
            continue
        a, b = (np.asarray(Image.open(io.BytesIO(one[name]))).astype(int),
                np.asarray(Image.open(io.BytesIO(two[name]))).astype(int))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3, name


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(tiny_model_dir, tmp_path):
    data = write_dataset(tmp_path / "data", n=5)  # 5 masks: 3 for process 0, 2 for process 1
    sample = ["sample", "--model", str(tiny_model_dir), "--masks", str(data / "masks"), "--num-images", "2",
              "--steps", "2", "--device", "cpu"]
    assert main([*sample, "--seed", "11", "--output", str(tmp_path / "one")]) == 0
    done = _torchrun([*sample, "--seed", "11", "--output", str(tmp_path / "two")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote 10 pairs") == 1  # one summary, from process 0
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len([k for k in one if k.startswith("images/")]) == 10
    _assert_same_outputs(one, two)

    # no --seed: process 0 draws the seed and every process uses it (mask m's images have seeds base + 2m + i);
    # sampling again into the same folder replaces the pairs' lines, one line per pair
    done = _torchrun([*sample, "--output", str(tmp_path / "two")])
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "two" / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 10 and len({r["image"] for r in records}) == 10
    base = records[0]["seed"]
    assert [r["seed"] for r in records] == [(base + k) % 2**32 for k in range(10)]
    assert base != 11


@pytest.mark.slow
def test_a_bad_mask_stops_every_process_before_anything_is_written(tiny_model_dir, tmp_path):
    data = write_dataset(tmp_path / "data", n=3)
    (data / "masks" / "case02.png").write_bytes(open(data / "masks" / "case00.png", "rb").read()[:40])  # truncated
    done = _torchrun(["sample", "--model", str(tiny_model_dir), "--masks", str(data / "masks"), "--steps", "1",
                      "--device", "cpu", "--output", str(tmp_path / "out")])
    assert done.returncode != 0 and "case02.png" in done.stderr
    assert not (tmp_path / "out").exists()


def test_one_process_removes_the_parts_an_interrupted_run_left(tmp_path):
    from siamese.distributed import clear_part

    stale = tmp_path / "out" / PARTS / "rank-00001" / "images"
    stale.mkdir(parents=True)
    (stale / "x.png").write_bytes(b"half a run")
    assert clear_part(Share(0, 1, range(3)), tmp_path / "out") == tmp_path / "out"
    assert not (tmp_path / "out" / PARTS).exists()
    own = clear_part(Share(1, 2, range(0)), tmp_path / "other")
    assert own == tmp_path / "other" / PARTS / "rank-00001" and not own.exists()


@pytest.mark.slow
def test_two_processes_curate_as_one_process_does(scored_model_dir, tmp_path):
    """With the model's fidelity scorer, --min-fidelity and --keep-rejected: two processes write the accepted pairs
    and rejected/ as one process does; pairs a looser run had accepted move to rejected/ (no pair on both sides)."""
    data = write_dataset(tmp_path / "data", n=3)
    sample = ["sample", "--model", str(scored_model_dir), "--masks", str(data / "masks"), "--num-images", "2",
              "--steps", "2", "--device", "cpu", "--seed", "5", "--keep-rejected"]
    done = _torchrun([*sample, "--min-fidelity", "0", "--output", str(tmp_path / "two")])
    assert done.returncode == 0, done.stderr[-3000:]
    scores = sorted(json.loads(line)["fidelity"] for line in (tmp_path / "two" / "metadata.jsonl").read_text().splitlines())
    assert len(scores) == 6
    threshold = f"{(scores[2] + scores[3]) / 2:.6f}"  # three pairs on each side
    assert main([*sample, "--min-fidelity", threshold, "--output", str(tmp_path / "one")]) == 0
    done = _torchrun([*sample, "--min-fidelity", threshold, "--output", str(tmp_path / "two")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 accepted, 3 rejected" in done.stdout and "3 already there, kept" in done.stdout  # resumed
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len([k for k in one if k.startswith("rejected/images/")]) == 3
    _assert_same_outputs(one, two)

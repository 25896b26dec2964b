"""--report-to: the loss terms, lr and previews reach TensorBoard through accelerate's trackers; metrics.csv and
the live events are unchanged; a tracker whose package is missing is refused before anything is written."""

from __future__ import annotations

import csv
import importlib.util

import pytest

import siamese.tracking
from siamese.cli import main
from siamese.objective import LOSS_KEYS
from siamese.train import TrainConfig, train

pytest.importorskip("tensorboard", reason="tensorboard is in requirements-dev.txt")


def _config(data, out, **kw) -> TrainConfig:
    settings = dict(data=str(data), output=str(out), resolution=64, batch_size=2, max_steps=3, lr=1e-3,
                    checkpoint_every=2, log_every=1, preview_every=2, seed=3)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.mark.slow
def test_tensorboard_gets_every_loss_term_lr_and_the_previews(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = []
    out = train(_config(dataset, tmp_path / "run", report_to="tensorboard"), callback=events.append)
    files = list((out / "logs" / "siamese").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert {*LOSS_KEYS, "lr", "it_per_s"} <= set(acc.Tags()["scalars"])
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in (*LOSS_KEYS, "lr"):  # the same values as metrics.csv, step by step
        logged = {e.step: e.value for e in acc.Scalars(key)}
        assert sorted(logged) == [1, 2, 3], key
        for row in rows:
            assert logged[int(row["step"])] == pytest.approx(float(row[key]), rel=1e-3), (key, row["step"])
    assert [e.step for e in acc.Images("preview")] == [2]
    # the app's live curves: the same events as without a tracker
    logs = [e for e in events if e["type"] == "log"]
    assert [e["step"] for e in logs if e["row"]] == [1, 2, 3] and all(k in logs[0] for k in LOSS_KEYS)


@pytest.mark.slow
def test_no_tracker_by_default_writes_no_logs(dataset, tmp_path):
    out = train(_config(dataset, tmp_path / "run", max_steps=1, preview_every=0))
    assert not (out / "logs").exists() and (out / "metrics.csv").is_file()


def test_a_missing_tracker_package_is_refused_before_anything_is_written(dataset, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(siamese.tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "tensorboard", "tensorboardX") else real(name, *a))
    for tracker in ("wandb", "tensorboard"):
        with pytest.raises(ValueError, match=f"needs the {tracker} package.*pip install {tracker}"):
            train(_config(dataset, tmp_path / tracker, report_to=tracker))
        assert not (tmp_path / tracker).exists()
    code = main(["train", "--data", str(dataset), "--output", str(tmp_path / "cli"), "--report-to", "wandb"])
    assert code == 2 and "needs the wandb package" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(dataset), "--output", str(tmp_path / "cli"), "--report-to", "mlflow"])
    assert exit_.value.code == 2
    assert "invalid choice: 'mlflow'" in capsys.readouterr().err and not (tmp_path / "cli").exists()

"""Optional loggers: the same rows as metrics.jsonl, and a clear error when their library is
missing."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metarun import run
from metarun.errors import ConfigError


def test_tensorboard_logger_records_every_metrics_row(make_cfg, tmp_path):
    run.train(make_cfg(*TINY, "logger=tensorboard"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for name in ("train_loss", "val_accuracy", "val_accuracy_ci95", "tasks_per_s"):
        logged = [(e.step, e.value) for e in events.Scalars(name)]
        expected = [(row["iteration"], row[name]) for row in rows if name in row]
        assert [step for step, _ in logged] == [step for step, _ in expected]
        assert [value for _, value in logged] == pytest.approx(
            [value for _, value in expected], rel=1e-6
        )


@pytest.mark.parametrize("logger, package", [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_logger_without_its_library_names_the_package_to_install(
    logger, package, make_cfg, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(
        ConfigError, match=f"logger={logger} needs the {package} package.*pip install {package}"
    ):
        run.train(make_cfg(*TINY, f"logger={logger}"), tmp_path)


class Recorder:
    """Stands in for wandb's run and the mlflow module: keeps what it is given."""

    def __init__(self) -> None:
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_wandb_and_mlflow_loggers_receive_the_metrics_rows(make_cfg, tmp_path, monkeypatch):
    run_recorder, mlflow, wandb = Recorder(), Recorder(), Recorder()
    wandb.init = lambda **kwargs: run_recorder
    for name, module in (("wandb", wandb), ("mlflow", mlflow)):
        monkeypatch.setitem(sys.modules, name, module)
        run.train(make_cfg(*TINY, f"logger={name}"), tmp_path / name)
    rows = [
        json.loads(line) for line in (tmp_path / "wandb" / "metrics.jsonl").read_text().splitlines()
    ]
    for recorder, method in ((run_recorder, "log"), (mlflow, "log_metrics")):
        logged = [call for call in recorder.calls if call[0] == method]
        assert [call[2]["step"] for call in logged] == [row["iteration"] for row in rows]
        assert {"train_loss", "val_accuracy"} <= set(logged[-1][1][0])
    assert ("finish", (), {}) in run_recorder.calls and ("end_run", (), {}) in mlflow.calls

"""Sweeps: a report of a finished Hydra multirun, and re-runs that skip finished jobs.

Each job's folder is named by its overrides (hydra.sweep.subdir), so running the same
sweep command again finds every job's earlier folder: finished jobs (results.json
present) are skipped and unfinished ones resume from their newest checkpoint.

The report lists the jobs this sweep ran: those whose Hydra files were written after it
started. It is read from the job folders rather than collected from job callbacks because
parallel and cluster launchers (joblib, submitit) run those callbacks in other processes.
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metarun.errors import ConfigError
from metarun.report import find_runs, write_report


class SweepSummary(Callback):
    """Writes report.md and report.csv into the sweep folder and prints the Markdown table."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()

    def _written_since_start(self, path: Path) -> bool:
        return path.is_file() and path.stat().st_mtime >= self.started - 1

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            runs = find_runs([sweep_dir])
        except ConfigError:  # no job got as far as its run folder; each has reported why
            return
        ran = [
            run
            for run in runs
            if self._written_since_start(run.folder / ".hydra" / "overrides.yaml")
        ]
        if not ran:
            return
        md, table = write_report(ran, sweep_dir)
        print(f"\nSweep report ({md}, {table.name}):\n\n{md.read_text()}")

"""Sweeps: one table of a finished Hydra multirun, and re-runs that skip finished jobs.

Each job's folder is named by its overrides (hydra.sweep.subdir), so running the same
sweep command again finds every job's earlier folder: finished jobs (results.json
present) are skipped and unfinished ones resume from their newest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metarun.evaluator import describe


def result_line(job_dir: Path) -> str:
    results_file = Path(job_dir) / "results.json"
    if not results_file.is_file():
        return "no results (failed or unfinished)"
    return describe(json.loads(results_file.read_text()))


class SweepSummary(Callback):
    """Collects the jobs of this sweep as they end and prints their results as one table."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, Path]] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        output_dir = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
        self.jobs.append((" ".join(job_return.overrides or []), output_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not self.jobs:
            return
        rows = [(overrides, result_line(job_dir)) for overrides, job_dir in self.jobs]
        width = max(len(overrides) for overrides, _ in rows)
        lines = [f"{'overrides':<{width}}  result"] + [f"{o:<{width}}  {r}" for o, r in rows]
        table = "\n".join(lines)
        sweep_dir = Path(config.hydra.sweep.dir)
        (sweep_dir / "summary.txt").write_text(table + "\n")
        print(f"\nSweep summary ({sweep_dir}):\n{table}")

"""Prints one table of a finished Hydra sweep: each job's overrides and its test result."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def sweep_rows(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        overrides_file, results_file = job / ".hydra" / "overrides.yaml", job / "results.json"
        if not overrides_file.is_file():
            continue
        row = {"job": job.name, "overrides": " ".join(OmegaConf.load(overrides_file))}
        if results_file.is_file():
            results = json.loads(results_file.read_text())
            metric = next(k for k, v in results.items() if isinstance(v, dict) and "ci95" in v)
            row["result"] = f"{metric} {results[metric]['mean']:.4f} +- {results[metric]['ci95']:.4f}"
        else:
            row["result"] = "no results (failed or unfinished)"
        rows.append(row)
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sweep_rows(sweep_dir)
        if not rows:
            return
        width = max(len(r["overrides"]) for r in rows)
        lines = [f"{'job':>4}  {'overrides':<{width}}  result"]
        lines += [f"{r['job']:>4}  {r['overrides']:<{width}}  {r['result']}" for r in rows]
        table = "\n".join(lines)
        (sweep_dir / "summary.txt").write_text(table + "\n")
        print(f"\nSweep summary ({sweep_dir}):\n{table}")

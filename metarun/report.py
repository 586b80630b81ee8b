"""Sweep reports: one table of runs (what each changed, its test result) in Markdown and CSV.

A run is any folder holding the config.yaml that `metarun train` writes; what it changed
is read from Hydra's .hydra/overrides.yaml beside it. Columns are the settings whose
values differ between the runs (the settings all share are listed once above the table),
so a sweep's table shows exactly what was swept. Runs that differ only by `seed` are
also summarised as one row per setting: the mean over seeds and its spread.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from metarun.errors import ConfigError

SEED = "seed"
# Columns from results' `robust` (accuracy under eval.attack) and `calibration`.
MEASURES = ("robust", "robust ci95", "ECE", "ECE ci95", "coverage95", "NLL", "Brier")


@dataclass(frozen=True)
class RunResult:
    folder: Path
    overrides: dict[str, str]
    metric: str | None  # None: the run has not finished (no results.json)
    mean: float | None
    ci95: float | None
    episodes: int | None
    best_iteration: int | None
    wall_time_s: float | None
    commit: str | None = (
        None  # the code that made the result: short commit, "+" for uncommitted changes
    )
    by_instance: tuple[
        float, ...
    ] = ()  # online protocol: accuracy at a class's 1st, 2nd... showing
    measures: tuple[tuple[str, float], ...] = ()  # (MEASURES column, value) pairs


def _overrides(folder: Path) -> dict[str, str]:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    overrides = {}
    for item in OmegaConf.load(path):
        key, _, value = str(item).lstrip("+~").partition("=")
        if not key.startswith("hydra."):
            overrides[key] = value
    return overrides


def read_run(folder: Path) -> RunResult:
    results_file = folder / "results.json"
    if not results_file.is_file():
        return RunResult(folder, _overrides(folder), None, None, None, None, None, None)
    results = json.loads(results_file.read_text())
    summary, training = results[results["metric"]], results.get("training", {})
    code = results.get("code") or {}
    commit = code.get("commit") and code["commit"][:10] + (
        "+" if code.get("uncommitted_changes") else ""
    )
    return RunResult(
        folder,
        _overrides(folder),
        results["metric"],
        summary["mean"],
        summary["ci95"],
        results["episodes"],
        results.get("iteration"),
        training.get("wall_time_s"),
        commit,
        tuple(s["mean"] for s in results.get(f"{results['metric']}_by_instance", ())),
        _measures(results),
    )


def _measures(results: dict) -> tuple[tuple[str, float], ...]:
    """The report's further columns a result has: robust accuracy where the test attacked;
    ECE and Brier score for classifiers, 95% coverage for regressors, NLL for both."""
    values: dict[str, float] = {}
    if robust := results.get("robust"):
        values |= {"robust": robust["accuracy"]["mean"], "robust ci95": robust["accuracy"]["ci95"]}
    calibration = results.get("calibration") or {}
    if "nll" in calibration:
        values["NLL"] = calibration["nll"]["mean"]
    if "ece" in calibration:
        values |= {
            "ECE": calibration["ece"]["value"],
            "ECE ci95": calibration["ece"]["ci95"],
            "Brier": calibration["brier"]["mean"],
        }
    if "coverage95" in calibration:
        values["coverage95"] = calibration["coverage95"]["mean"]
    return tuple((column, values[column]) for column in MEASURES if column in values)


def find_runs(folders: list[Path]) -> list[RunResult]:
    """Every run folder at or below `folders`, in path order."""
    found: set[Path] = set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise ConfigError(
                f"{folder} is not a folder. Pass run or sweep folders written by metarun train, "
                "e.g. outputs/multirun."
            )
        found.update(
            path.parent for path in folder.rglob("config.yaml") if path.parent.name != ".hydra"
        )
    if not found:
        raise ConfigError(
            f"No run folders (with a config.yaml from metarun train) under "
            f"{', '.join(map(str, folders))}. Pass the folders of finished runs or sweeps."
        )
    return [read_run(folder) for folder in sorted(found)]


def _metric(runs: list[RunResult]) -> str:
    return next((run.metric for run in runs if run.metric), "accuracy")


def varying_keys(runs: list[RunResult]) -> list[str]:
    keys = sorted({key for run in runs for key in run.overrides})
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def _shared(runs: list[RunResult], varying: list[str]) -> dict[str, str]:
    return {
        key: value
        for key, value in runs[0].overrides.items()
        if key not in varying and all(run.overrides.get(key) == value for run in runs)
    }


def run_rows(runs: list[RunResult]) -> tuple[list[str], list[list]]:
    """The per-run table: the commit when runs differ in it, the varying settings, the result."""
    varying = varying_keys(runs)
    commits = ["commit"] if len({run.commit for run in runs}) > 1 else []
    instances = max(len(run.by_instance) for run in runs)
    measured = {column for run in runs for column, _ in run.measures}
    measures = [column for column in MEASURES if column in measured]
    header = [
        *commits,
        *varying,
        f"test {_metric(runs)}",
        "ci95",
        *(f"instance {k + 1}" for k in range(instances)),
        *measures,
        "episodes",
        "best iteration",
        "wall time (s)",
        "folder",
    ]
    rows = [
        [
            *([run.commit or "unknown"] if commits else []),
            *(run.overrides.get(key, "") for key in varying),
            run.mean,
            run.ci95,
            *(run.by_instance + ("",) * (instances - len(run.by_instance))),
            *(dict(run.measures).get(column, "") for column in measures),
            run.episodes,
            run.best_iteration,
            run.wall_time_s,
            str(run.folder),
        ]
        for run in runs
    ]
    return header, rows


def seed_rows(runs: list[RunResult]) -> tuple[list[str], list[list]]:
    """One row per setting run with several seeds: mean over seeds, sample std, min and max."""
    varying = [key for key in varying_keys(runs) if key != SEED]
    groups: dict[tuple, list[float]] = {}
    for run in runs:
        if run.mean is not None:
            groups.setdefault(tuple(run.overrides.get(key, "") for key in varying), []).append(
                run.mean
            )
    header = [*varying, "seeds", f"mean test {_metric(runs)}", "std over seeds", "min", "max"]
    rows = [
        [*key, len(means), statistics.fmean(means), statistics.stdev(means), min(means), max(means)]
        for key, means in groups.items()
        if len(means) > 1
    ]
    return header, rows


def _cell(value, percent: bool) -> str:
    if value is None:
        return "unfinished"
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.4g}"
    return str(value)


def _markdown_table(header: list[str], rows: list[list], percent_columns: set[int]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_cell(v, i in percent_columns) for i, v in enumerate(row)) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def markdown(runs: list[RunResult]) -> str:
    """The report for people: accuracies in percent, settings all runs share listed once."""
    header, rows = run_rows(runs)
    root = Path(os.path.commonpath([run.folder.absolute() for run in runs]))
    for row in rows:  # folders relative to what the runs share; report.csv keeps the full paths
        folder = Path(row[-1]).absolute()
        row[-1] = str(folder.relative_to(root)) if len(runs) > 1 else folder.name
    percent = _metric(runs) == "accuracy"
    first = header.index(f"test {_metric(runs)}")  # then ci95, by instance, robust, ECE
    last = header.index("NLL") if "NLL" in header else header.index("episodes")
    shared = _shared(runs, varying_keys(runs))
    parts = [
        f"{len(runs)} runs"
        + (
            f"; shared settings: {' '.join(f'{k}={v}' for k, v in shared.items())}"
            if shared
            else ""
        ),
        _markdown_table(header, rows, set(range(first, last)) if percent else set()),
    ]
    seed_header, grouped = seed_rows(runs)
    if grouped:
        first = len(seed_header) - 4  # mean, std, min, max
        parts += [
            "Over seeds:",
            _markdown_table(
                seed_header, grouped, set(range(first, first + 4)) if percent else set()
            ),
        ]
    return "\n\n".join(parts) + "\n"


def csv_text(runs: list[RunResult]) -> str:
    """The per-run table with full-precision numbers, for other tools."""
    header, rows = run_rows(runs)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


def write_report(runs: list[RunResult], output: Path) -> tuple[Path, Path]:
    """Writes report.md and report.csv into `output`."""
    output.mkdir(parents=True, exist_ok=True)
    md, table = output / "report.md", output / "report.csv"
    md.write_text(markdown(runs))
    table.write_text(csv_text(runs))
    return md, table

"""Pictures of runs: learning curves from metrics.jsonl and, for a sweep, result against setting."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

from metarun.report import SEED, RunResult, varying_keys  # noqa: E402


def _label(run: RunResult, keys: list[str]) -> str:
    return " ".join(f"{key}={run.overrides.get(key, '')}" for key in keys) or run.folder.name


def learning_curves(runs: list[RunResult], output: Path) -> Path:
    """Training loss, and the validation score with its 95% interval band, against iteration."""
    figure, (loss_axes, val_axes) = plt.subplots(1, 2, figsize=(12, 4))
    keys, metric = varying_keys(runs), "accuracy"
    for run in runs:
        path = run.folder / "metrics.jsonl"
        rows = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        )
        metric = _validated_metric(rows) or metric
        trained = [row for row in rows if "train_loss" in row]
        loss_axes.plot(
            [r["iteration"] for r in trained],
            [r["train_loss"] for r in trained],
            label=_label(run, keys),
        )
        validated = [row for row in rows if f"val_{metric}" in row]
        steps = [r["iteration"] for r in validated]
        mean = [r[f"val_{metric}"] for r in validated]
        half = [r[f"val_{metric}_ci95"] for r in validated]
        (line,) = val_axes.plot(steps, mean, marker=".", label=_label(run, keys))
        val_axes.fill_between(
            steps,
            [m - h for m, h in zip(mean, half)],
            [m + h for m, h in zip(mean, half)],
            color=line.get_color(),
            alpha=0.2,
        )
    loss_axes.set(xlabel="iteration", ylabel="training loss", title="meta-training loss")
    val_axes.set(
        xlabel="iteration",
        ylabel=f"validation {metric}",
        title=f"validation {metric} (95% interval)",
    )
    for axes in (loss_axes, val_axes):
        axes.grid(alpha=0.3)
    if len(runs) > 1:
        val_axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    return _save(figure, output / "learning_curves.png")


def sweep_plot(runs: list[RunResult], output: Path) -> Path | None:
    """Test score with its 95% interval against the swept setting (the one with most values);
    one line per value of the other swept settings. None when nothing was swept."""
    finished = [run for run in runs if run.mean is not None]
    swept = [key for key in varying_keys(finished) if key != SEED] if len(finished) > 1 else []
    if not swept:
        return None
    x_key = max(swept, key=lambda key: len({run.overrides.get(key) for run in finished}))
    others = [key for key in swept if key != x_key]
    values = sorted({run.overrides.get(x_key, "") for run in finished}, key=_number_first)
    figure, axes = plt.subplots(figsize=(6, 4))

    def group(run: RunResult) -> str:  # seeds of one setting share a colour
        return " ".join(f"{key}={run.overrides.get(key, '')}" for key in others)

    for name in sorted({group(run) for run in finished}):
        members = [run for run in finished if group(run) == name]
        xs = [values.index(run.overrides.get(x_key, "")) for run in members]
        axes.errorbar(
            xs,
            [run.mean for run in members],
            yerr=[run.ci95 for run in members],
            fmt="o",
            capsize=3,
            label=name or None,
        )
    axes.set_xticks(
        range(len(values)),
        values,
        rotation=30 if max(map(len, values)) > 8 else 0,
        ha="right" if max(map(len, values)) > 8 else "center",
    )
    axes.set(xlabel=x_key, ylabel=f"test {finished[0].metric} (95% interval)")
    axes.grid(alpha=0.3)
    if others:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    return _save(figure, output / "sweep.png")


def _validated_metric(rows: list[dict]) -> str | None:
    """'accuracy' or 'mse': the name behind the val_<name> columns of metrics.jsonl."""
    names = (key.removeprefix("val_") for row in rows for key in row if key.startswith("val_"))
    return next((name for name in names if not name.endswith("_ci95")), None)


def _number_first(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

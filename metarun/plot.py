"""Pictures of runs: learning curves from metrics.jsonl and, for a sweep, result against setting.

Runs are grouped by the metric they are scored with (accuracy, mse): each group gets its own
pictures, so an accuracy curve never shares an axis with an MSE curve. A setting counts as
swept when every run of the group sets it and the values differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

from metarun.report import SEED, RunResult  # noqa: E402


def _rows(run: RunResult) -> list[dict]:
    path = run.folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _metric(run: RunResult) -> str:
    """'accuracy' or 'mse': from results.json, else from the val_<name> columns of metrics.jsonl."""
    if run.metric:  # finished runs name it; only unfinished ones need their log read
        return run.metric
    names = (
        key.removeprefix("val_") for row in _rows(run) for key in row if key.startswith("val_")
    )
    return next((n for n in names if not n.endswith("_ci95")), "accuracy")


def swept_keys(runs: list[RunResult]) -> list[str]:
    """Settings every run sets, to values that differ between runs."""
    shared = set.intersection(*(set(run.overrides) for run in runs)) if runs else set()
    return sorted(key for key in shared if len({run.overrides[key] for run in runs}) > 1)


def _label(run: RunResult, keys: list[str]) -> str:
    return " ".join(f"{key}={run.overrides.get(key, '')}" for key in keys) or run.folder.name


def _by_metric(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(_metric(run), []).append(run)
    return groups


def _file(output: Path, stem: str, metric: str, groups: int) -> Path:
    return output / (f"{stem}.png" if groups == 1 else f"{stem}_{metric}.png")


def learning_curves(runs: list[RunResult], output: Path) -> list[Path]:
    """Per metric: training loss, and the validation score with its 95% band, against iteration."""
    groups = _by_metric(runs)
    return [
        _curves(members, metric, _file(output, "learning_curves", metric, len(groups)))
        for metric, members in groups.items()
    ]


# Training columns drawn in the left panel: the loss, or for environment tasks (whose surrogate
# loss is zero at every step by construction) the return before and after adaptation.
TRAINING_COLUMNS = {"return": {"train_return_before": "pre-update", "train_return": "post-update"}}


def _curves(runs: list[RunResult], metric: str, path: Path) -> Path:
    figure, (loss_axes, val_axes) = plt.subplots(1, 2, figsize=(12, 4))
    keys = swept_keys(runs) or sorted({key for run in runs for key in run.overrides if key != SEED})
    columns = TRAINING_COLUMNS.get(metric, {"train_loss": None})
    for run in runs:
        rows = _rows(run)
        for column, kind in columns.items():
            trained = [row for row in rows if column in row]
            label = " ".join(filter(None, [kind, _label(run, keys) if len(runs) > 1 else None]))
            loss_axes.plot(
                [r["iteration"] for r in trained], [r[column] for r in trained], label=label or None
            )
        validated = [row for row in rows if f"val_{metric}" in row]
        steps = [r["iteration"] for r in validated]
        mean = [r[f"val_{metric}"] for r in validated]
        half = [r[f"val_{metric}_ci95"] for r in validated]
        (line,) = val_axes.plot(steps, mean, marker=".", label=_label(run, keys))
        low, high = [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)]
        val_axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    if metric in TRAINING_COLUMNS:
        loss_axes.set(
            xlabel="meta-iteration",
            ylabel=f"training {metric}",
            title=f"meta-training {metric}, before and after adaptation",
        )
        loss_axes.legend(fontsize="small", loc="best")
    else:
        loss_axes.set(xlabel="iteration", ylabel="training loss", title="meta-training loss")
    val_axes.set(
        xlabel="iteration",
        ylabel=f"validation {metric}",
        title=f"validation {metric} (95% interval)",
    )
    for axes in (loss_axes, val_axes):
        axes.grid(alpha=0.3)
    if len(runs) > 1:
        val_axes.legend(fontsize="small", loc="best")
    return save(figure, path)


def sweep_plot(runs: list[RunResult], output: Path) -> list[Path]:
    """Per metric: test score with its 95% interval against the swept setting with most values,
    one series per value of the other swept settings. None drawn where nothing was swept."""
    finished = _by_metric([run for run in runs if run.mean is not None])
    drawn = []
    for metric, members in finished.items():
        swept = [key for key in swept_keys(members) if key != SEED] if len(members) > 1 else []
        if swept:
            drawn.append(
                _sweep(members, swept, metric, _file(output, "sweep", metric, len(finished)))
            )
    return drawn


def _sweep(runs: list[RunResult], swept: list[str], metric: str, path: Path) -> Path:
    x_key = max(swept, key=lambda key: len({run.overrides[key] for run in runs}))
    others = [key for key in swept if key != x_key]
    values = sorted({run.overrides[x_key] for run in runs}, key=_number_first)
    figure, axes = plt.subplots(figsize=(6, 4))

    def group(run: RunResult) -> str:  # seeds of one setting share a colour
        return " ".join(f"{key}={run.overrides[key]}" for key in others)

    for name in sorted({group(run) for run in runs}):
        members = [run for run in runs if group(run) == name]
        xs = [values.index(run.overrides[x_key]) for run in members]
        means = [float(run.mean or 0.0) for run in members]  # finished runs: a mean each
        intervals = [float(run.ci95 or 0.0) for run in members]
        axes.errorbar(xs, means, yerr=intervals, fmt="o", capsize=3, label=name or None)
    long = max(map(len, values)) > 8
    axes.set_xticks(
        range(len(values)), values, rotation=30 if long else 0, ha="right" if long else "center"
    )
    axes.set(xlabel=x_key, ylabel=f"test {metric} (95% interval)")
    axes.grid(alpha=0.3)
    if others:
        axes.legend(fontsize="small", loc="best")
    return save(figure, path)


def _after_steps(run: RunResult) -> list[dict] | None:
    """Test scores after 0, 1, ... adaptation steps (environment tasks), from eval.json or
    results.json."""
    for name in ("eval.json", "results.json"):
        path = run.folder / name
        if path.is_file():
            results = json.loads(path.read_text())
            steps = results.get(f"{results.get('metric')}_after_steps")
            if steps:
                return steps
    return None


def adaptation_plot(runs: list[RunResult], output: Path) -> list[Path]:
    """Test score with its 95% interval against the number of adaptation steps, one line per run
    that reports it (environment tasks)."""
    measured = [(run, steps) for run in runs if (steps := _after_steps(run))]
    if not measured:
        return []
    figure, axes = plt.subplots(figsize=(6, 4))
    keys = swept_keys([run for run, _ in measured])
    for run, steps in measured:
        means, intervals = [s["mean"] for s in steps], [s["ci95"] for s in steps]
        axes.errorbar(
            range(len(steps)), means, yerr=intervals, marker="o", capsize=3, label=_label(run, keys)
        )
    metric = measured[0][0].metric or "return"
    axes.set(xlabel="adaptation steps", ylabel=f"test {metric} (95% interval)")
    axes.set_xticks(range(max(len(steps) for _, steps in measured)))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return [save(figure, output / "adaptation.png")]


def _calibration(run: RunResult) -> dict | None:
    """A classifier's test calibration (with its reliability diagram), from eval.json or
    results.json."""
    for name in ("eval.json", "results.json"):
        path = run.folder / name
        calibration = json.loads(path.read_text()).get("calibration") if path.is_file() else None
        if calibration and "reliability" in calibration:
            return calibration
    return None


def reliability_diagrams(runs: list[RunResult], output: Path) -> list[Path]:
    """Per classifier run: accuracy against confidence in the test's equal-width bins, with the
    diagonal a calibrated model would follow and each bin's share of the queries."""
    drawn = []
    for run in runs:
        if not (calibration := _calibration(run)):
            continue
        bins, diagram = calibration["bins"], calibration["reliability"]
        centres = [(k + 0.5) / bins for k in range(bins)]
        used = [k for k in range(bins) if diagram["queries"][k]]
        total = sum(diagram["queries"])
        figure, (top, bottom) = plt.subplots(
            2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        top.bar(
            [centres[k] for k in used],
            [diagram["accuracy"][k] for k in used],
            width=1 / bins,
            edgecolor="black",
            label="accuracy",
        )
        top.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
        top.plot(
            [diagram["confidence"][k] for k in used],
            [diagram["accuracy"][k] for k in used],
            "o",
            color="C3",
            markersize=3,
            label="mean confidence",
        )
        ece = calibration["ece"]
        ece = f"ECE {100 * ece['value']:.2f} +- {100 * ece['ci95']:.2f}%"
        top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{run.folder.name}: {ece}")
        top.legend(fontsize="small", loc="upper left")
        bottom.bar(
            centres, [n / total for n in diagram["queries"]], width=1 / bins, edgecolor="black"
        )
        bottom.set(xlabel="confidence", ylabel="share of queries")
        drawn.append(save(figure, output / f"reliability_{run.folder.name}.png"))
    return drawn


def _number_first(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

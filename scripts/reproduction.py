"""docs/reproduction.md from run folders: one row per paper's system listed in
scripts/reproduction.yaml (the paper's number, the reference code's, the paper's budget, the
parity result), with ours, its 95% interval, our budget as a fraction of the paper's, the commit
and the command taken from the newest finished run that matches the row (of seed 0, the preset's,
where there is one): it sets the row's `match` overrides and otherwise only budget and runtime
settings. Runs of other seeds at the same budget are listed after it.

    python scripts/reproduction.py outputs/ > docs/reproduction.md

Verdicts: *reproduced* (at the paper's budget or more, and every compared number within the
two 95% intervals of ours, or better), *below, cause not found* (at the paper's budget or more,
and not), *below, cause known* (the row names a measured cause), *at parity* (equal to the
reference implementation at equal budget, as the row's parity result records), *full budget,
no paper number* (the paper reports none to compare with), *short budget* otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from metarun.report import find_runs

SPEC = Path(__file__).with_name("reproduction.yaml")
COLUMNS = ("system", "paper", "reference code", "ours (95%)", "budget", "parity", "commit, command")
HEADER = ("| " + " | ".join([*COLUMNS, "verdict"]) + " |", "|---" * (len(COLUMNS) + 1) + "|")


def scores(results: dict) -> list[tuple[float, float]]:
    """The run's compared scores as (mean, 95% half-width): accuracy in %, one per adaptation
    step (RL) or per showing (online), else the test metric."""
    metric = results["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    listed = results.get(f"{metric}_after_steps") or results.get(f"{metric}_by_instance")
    summaries = listed or [results[metric]]
    return [(s["mean"] * scale, s["ci95"] * scale) for s in summaries]


def pick(row: dict, scored: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The scores the paper reports: instances 1, 2, ... as the row lists them."""
    if "instances" in row:
        return [scored[k - 1] for k in row["instances"] if k <= len(scored)]
    return scored[: len(row.get("compare", scored))]


def verdict(
    row: dict, ours: list[tuple[float, float]], fraction: float, lower_is_better: bool = False
) -> str:
    if row.get("cause"):
        return "below, cause known"
    compared = [(paper, ci or 0.0) for paper, ci in row["compare"]] if "compare" in row else []
    if fraction >= 1 and compared and len(ours) == len(compared):
        sign = -1 if lower_is_better else 1  # a score better than the paper's is not below it
        within = all(sign * (m - p) >= -(c + pc) for (m, c), (p, pc) in zip(ours, compared))
        return "reproduced" if within else "below, cause not found"
    if row.get("at_parity"):
        return "at parity"
    return "full budget, no paper number" if fraction >= 1 and not compared else "short budget"


# Overrides that change a run's budget or how it computes, not the method: a run with any other
# override beyond its row's `match` is a variant, not the preset.
BUDGET_AND_RUNTIME = ("trainer.", "threads", "processes", "compile", "device", "engine", "seed")


def matches(run, match: dict) -> bool:
    """The run sets the row's `match` (on its command line, or as its saved config's value, so a
    setting that became the default still matches) and otherwise only budget and runtime."""
    if run.metric is None:
        return False
    config = OmegaConf.load(run.folder / "config.yaml")
    value = lambda key: run.overrides.get(key, OmegaConf.select(config, key, default=None))
    others = [key for key in run.overrides if key not in match]
    return all(str(value(key)) == str(wanted) for key, wanted in match.items()) and all(
        key.startswith(BUDGET_AND_RUNTIME) for key in others
    )


def _numbers(ours: list[tuple[float, float]], digits: int) -> str:
    return " / ".join(f"{m:.{digits}f} +- {c:.{digits}f}" for m, c in ours)


def table_row(row: dict, runs: list) -> str:
    found = [run for run in runs if matches(run, row["match"])]
    command = "metarun train " + " ".join(f"{k}={v}" for k, v in row["match"].items())
    cells = [row["system"], row["paper"], row.get("reference", "")]
    if not found:
        cells += ["no run", "", row.get("parity", "not run"), f"`{command}`"]
        return "| " + " | ".join(cells + [verdict(row, [], 0.0)]) + " |"
    newest = lambda group: max(group, key=lambda r: (r.folder / "results.json").stat().st_mtime)
    by_seed: dict[str, list] = {}
    for found_run in found:
        by_seed.setdefault(found_run.overrides.get("seed", "0"), []).append(found_run)
    run = newest(by_seed.get("0", found))  # the preset's own seed, else the newest run
    results = json.loads((run.folder / "results.json").read_text())
    iterations = OmegaConf.load(run.folder / "config.yaml").trainer.iterations
    fraction = iterations / row["budget"]
    ours = pick(row, scores(results))
    digits = 3 if results["metric"] == "mse" else 2
    shown = _numbers(ours, digits)
    for seed, group in sorted(by_seed.items()):
        other = newest(group)
        if (
            other is run
            or OmegaConf.load(other.folder / "config.yaml").trainer.iterations != iterations
        ):
            continue
        numbers = pick(row, scores(json.loads((other.folder / "results.json").read_text())))
        shown += f"; seed {seed}: {_numbers(numbers, digits)}"
    overrides = " ".join(f"{k}={v}" for k, v in run.overrides.items())
    cells += [
        shown,
        f"{iterations:,} of {row['budget']:,} ({fraction:.0%})",
        row.get("parity", "not run"),
        f"{run.commit} `metarun train {overrides}`",
    ]
    lower_is_better = results["metric"] == "mse"
    return "| " + " | ".join(cells + [verdict(row, ours, fraction, lower_is_better)]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders")
    args = parser.parse_args()
    rows = yaml.safe_load(SPEC.read_text())["rows"]
    runs = find_runs(args.folders)
    print("\n".join([*HEADER, *(table_row(row, runs) for row in rows)]))


if __name__ == "__main__":
    main()

"""Markdown table of meta-RL runs: return after each number of adaptation steps (mean +- 95%
interval over the held-out tasks), with the run's budget, next to a paper's row if given.

    python scripts/rl_table.py outputs/rl/maml_nav outputs/rl/fomaml_nav \
        --paper "MAML paper, Table 4: -40.41, -11.68, -3.33, -3.23"

Reads each run folder's eval.json when present (metarun eval), else results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf


def row(folder: Path) -> list[str]:
    name = "eval.json" if (folder / "eval.json").is_file() else "results.json"
    results = json.loads((folder / name).read_text())
    config = OmegaConf.load(folder / "config.yaml")
    steps = [f"{s['mean']:.2f} +- {s['ci95']:.2f}" for s in results["return_after_steps"]]
    if (folder / "results.json").is_file():
        training = json.loads((folder / "results.json").read_text())["training"]
        budget = (
            f"{config.trainer.iterations} it. (best {training['best_iteration']}), "
            f"{training['wall_time_s'] / 60:.0f} min"
        )
    else:  # stopped before the end: evaluated with metarun eval
        last = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
        best = torch.load(folder / "checkpoints" / "best.pt", weights_only=True)
        budget = f"stopped at {last['iteration']} it. (best {best['iteration']})"
    algo = config.algo._target_.rsplit(".", 1)[-1]
    kind = "first-order " if config.algo.first_order else ""
    kind += "pretrained " if config.algo.inner_steps == 0 else ""
    tasks = f"{results['episodes']} (seed {results['protocol']['eval_seed']})"
    return [f"{kind}{algo}", *steps, tasks, budget, folder.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--paper", default=None, help="a label, then the paper's returns")
    args = parser.parse_args()
    rows = [row(folder) for folder in args.folders]
    width = max(len(r) for r in rows) - 4
    header = ["method", *[f"{k} steps" for k in range(width)], "test tasks", "budget", "run"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.paper:
        label, _, numbers = args.paper.partition(":")
        values = [v.strip() for v in numbers.split(",")]
        print("| " + " | ".join([label, *values, "", "", ""]) + " |")


if __name__ == "__main__":
    main()

"""Post-update MSE of a sinusoid run at several support sizes K and inner-step counts.

    python scripts/sinusoid_table.py outputs/results/maml_sinusoid --shots 5 10 --steps 1 10

Reports the mean with its 95% interval over the run's fixed test tasks (eval.seed), and
also the median and the number of diverged tasks (MSE above 100 or not finite), because a
few tasks can diverge when the inner loop runs more steps than it was meta-trained for;
the mean is then also given over the tasks that did not diverge.
"""

from __future__ import annotations

import argparse

import torch

import metarun
from metarun.engine import make_engine
from metarun.evaluator import episode_scores
from metarun.metrics import mean_ci95

DIVERGED = 100.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--tasks", type=int, default=600)
    args = parser.parse_args()
    model = metarun.load(args.run_dir)
    cfg, device = model.config, torch.device("cpu")
    engine = make_engine(cfg, model.algo, device)
    print(
        "| K | steps | MSE mean +- 95% (all tasks) | median | diverged tasks | mean +- 95% "
        "without them |"
    )
    print("|---|---|---|---|---|---|")
    for shots in args.shots:
        sampler = model.dataset.sampler("test", 1, shots, cfg.eval.queries, device)
        for steps in args.steps:
            scores = episode_scores(
                model.algo, engine, sampler, args.tasks, cfg.eval.seed, cfg.eval.batch_tasks, steps
            )
            scores = torch.nan_to_num(scores, nan=float("inf"))
            kept = scores <= DIVERGED
            every, stable = mean_ci95(scores), mean_ci95(scores[kept])
            print(
                f"| {shots} | {steps} | {every['mean']:.3g} +- {every['ci95']:.3g} | "
                f"{scores.median():.3f} | {int((~kept).sum())} of {args.tasks} | "
                f"{stable['mean']:.3f} +- {stable['ci95']:.3f} |"
            )


if __name__ == "__main__":
    main()

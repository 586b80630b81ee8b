"""Scores a model on fixed episodes: the same seed gives every model the same episodes."""

from __future__ import annotations

import torch
from tqdm import tqdm

from metarun.algorithms.base import Algorithm
from metarun.engine import Engine
from metarun.metrics import mean_ci95


def episode_scores(
    algo: Algorithm,
    engine: Engine,
    sampler,
    episodes: int,
    seed: int,
    batch_tasks: int,
    steps: int | None = None,
) -> torch.Tensor:
    """Per-episode scores on `episodes` episodes drawn from a generator seeded by `seed` alone.

    All episodes are planned in one draw before any is built, so the episodes do not
    depend on how many are evaluated at once, nor on how many processes share them (each
    scores a contiguous part of the plan; the parts are gathered in order).
    """
    plan = engine.world.my_share(sampler.draw(episodes, torch.Generator().manual_seed(seed)))
    parts = tqdm(
        plan.split(batch_tasks),
        desc="evaluating",
        unit="batch",
        leave=False,
        disable=not engine.world.is_main,
    )
    chunks = [engine.scores(algo, sampler.build(part), steps) for part in parts]
    mine = (
        torch.cat(chunks).cpu() if chunks else torch.empty(0)
    )  # none: more processes than episodes
    return engine.world.gather(mine)


def summarise(scores: torch.Tensor, metric: str) -> dict:
    """The results.json core: {"metric": name, name: {"mean", "ci95"}, "episodes": n}. Scores
    per adaptation step ([episodes, steps + 1], environment tasks) also give
    `<name>_after_steps`, one {"mean", "ci95"} per step count; the headline is the last."""
    summary = {"metric": metric, metric: mean_ci95(scores if scores.dim() == 1 else scores[:, -1]),
               "episodes": scores.shape[0]}  # fmt: skip
    if scores.dim() == 2:
        summary[f"{metric}_after_steps"] = [mean_ci95(column) for column in scores.T]
    return summary


def describe(results: dict) -> str:
    """One line for people: 'accuracy 0.9725 +- 0.0029 (600 episodes)'."""
    summary = results[results["metric"]]
    mean, ci95 = summary["mean"], summary["ci95"]
    line = f"{results['metric']} {mean:.4f} +- {ci95:.4f} ({results['episodes']} episodes)"
    steps = results.get(f"{results['metric']}_after_steps")
    if steps:
        line += "; after " + ", ".join(
            f"{k} steps {s['mean']:.2f} +- {s['ci95']:.2f}" for k, s in enumerate(steps)
        )
    return line

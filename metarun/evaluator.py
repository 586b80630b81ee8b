"""Scores a model on fixed episodes: the same seed gives every model the same episodes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from metarun.algorithms.base import Algorithm
from metarun.attacks import Attack, attacked_task
from metarun.engine import Engine
from metarun.episode import Episode
from metarun.metrics import gaussian_scores, mean_ci95, predictive_scores


def episode_measures(
    engine: Engine,
    sampler,
    episodes: int,
    seed: int,
    batch_tasks: int,
    measure: Callable[[Episode], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """`measure` of `episodes` episodes drawn from a generator seeded by `seed` alone, each of
    its entries concatenated over episodes ([episodes, ...]).

    The global generators are seeded by `seed` too, inside a fork that leaves training's state
    as it was. All episodes are planned in one draw before any is built, so the episodes do not
    depend on how many are evaluated at once, nor on how many processes share them (each
    measures a contiguous part of the plan; the parts are gathered in order).
    """
    plan = engine.world.my_share(sampler.draw(episodes, torch.Generator().manual_seed(seed)))
    parts = tqdm(
        plan.split(batch_tasks),
        desc="evaluating",
        unit="batch",
        leave=False,
        disable=not engine.world.is_main,
    )
    with torch.random.fork_rng():  # models that sample draw the same noise at every
        torch.manual_seed(seed)  # evaluation, and training's random stream is untouched
        chunks = [measure(sampler.build(part)) for part in parts]
    if not chunks:  # more processes than episodes: shapes from one episode, none of it kept
        chunks = [
            {
                k: v[:0]
                for k, v in measure(sampler.build(sampler.draw(1, torch.Generator()))).items()
            }
        ]
    return {
        name: engine.world.gather(torch.cat([c[name] for c in chunks]).cpu()) for name in chunks[0]
    }


def episode_scores(
    algo: Algorithm,
    engine: Engine,
    sampler,
    episodes: int,
    seed: int,
    batch_tasks: int,
    steps: int | None = None,
) -> torch.Tensor:
    """Per-episode scores (the dataset's metric) on fixed episodes; see `episode_measures`."""
    measure = lambda batch: {"score": engine.scores(algo, batch, steps)}
    return episode_measures(engine, sampler, episodes, seed, batch_tasks, measure)["score"]


def episode_predictions(
    algo: Algorithm,
    engine: Engine,
    sampler,
    episodes: int,
    seed: int,
    batch_tasks: int,
    steps: int | None = None,
    bins: int = 15,
    noise_std: float | None = None,
    attack: Attack | None = None,
    attack_target: str = "query",
) -> dict[str, torch.Tensor]:
    """Per-episode scores of the predictive distributions on fixed episodes: a classifier's
    accuracy, NLL, Brier score and reliability counts (`metrics.predictive_scores`), a
    regressor's MSE and, with a spread, NLL and 95% coverage (`metrics.gaussian_scores`).
    With an attack, also each episode's accuracy under it (`robust_accuracy`) and the largest
    perturbation it applied (`perturbation`)."""

    def measure(batch: Episode) -> dict[str, torch.Tensor]:
        if batch.query_y.dtype.is_floating_point:
            outputs = engine.query_outputs(algo, batch, steps, algo.gaussian)
            return gaussian_scores(outputs, batch.query_y, noise_std)
        if attack is None:
            outputs = engine.query_outputs(algo, batch, steps, algo.probabilities)
            return predictive_scores(outputs, batch.query_y, bins)
        task = attacked_task(algo, attack, attack_target, batch.ways, steps)
        clean, attacked, perturbation = engine.per_task(algo, batch, task)
        scores = predictive_scores(algo.probabilities(clean), batch.query_y, bins)
        correct = algo.probabilities(attacked).argmax(-1) == batch.query_y
        return {**scores, "robust_accuracy": correct.float().mean(-1), "perturbation": perturbation}

    return episode_measures(engine, sampler, episodes, seed, batch_tasks, measure)


# How a sampler's scores per column ([episodes, columns]) give the headline per episode.
HEADLINES = {
    "after_steps": lambda scores: scores[:, -1],  # environments: the return after the last step
    "by_instance": lambda scores: scores.mean(1),  # online sequences: every step alike
}


def summarise(scores: torch.Tensor, metric: str, columns: str | None = None) -> dict:
    """The results.json core: {"metric": name, name: {"mean", "ci95"}, "episodes": n}. Scores
    with columns ([episodes, k]; `columns` names them: `after_steps` for the return after 0..k-1
    adaptation steps, `by_instance` for the accuracy at a class's 1st..k-th showing) also give
    `<name>_<columns>`, one {"mean", "ci95"} per column."""
    headline = scores if columns is None else HEADLINES[columns](scores)
    summary = {"metric": metric, metric: mean_ci95(headline), "episodes": scores.shape[0]}
    if columns is not None:
        summary[f"{metric}_{columns}"] = [mean_ci95(column) for column in scores.T]
    return summary


def describe(results: dict) -> str:
    """One line for people: 'accuracy 0.9725 +- 0.0029 (600 episodes)'."""
    metric = results["metric"]
    summary = results[metric]
    line = (
        f"{metric} {summary['mean']:.4f} +- {summary['ci95']:.4f} ({results['episodes']} episodes)"
    )
    if steps := results.get(f"{metric}_after_steps"):
        line += "; after " + ", ".join(
            f"{k} steps {s['mean']:.2f} +- {s['ci95']:.2f}" for k, s in enumerate(steps)
        )
    if instances := results.get(f"{metric}_by_instance"):
        line += "; by instance " + ", ".join(
            f"{k + 1}: {s['mean']:.3f}" for k, s in enumerate(instances)
        )
    calibration = results.get("calibration") or {}
    if "ece" in calibration:
        ece, nll, brier = calibration["ece"], calibration["nll"], calibration["brier"]
        line += (
            f"; ECE {ece['value']:.4f} +- {ece['ci95']:.4f}, NLL {nll['mean']:.4f}, "
            f"Brier {brier['mean']:.4f}"
        )
    elif "coverage95" in calibration:
        nll, coverage = calibration["nll"], calibration["coverage95"]
        line += (
            f"; NLL {nll['mean']:.4f} +- {nll['ci95']:.4f}, "
            f"95% interval coverage {coverage['mean']:.4f}"
        )
    if robust := results.get("robust"):
        attack, accuracy = robust["attack"], robust["accuracy"]
        line += (
            f"; under {attack['kind']} on the {attack['target']} (epsilon {attack['epsilon']}): "
            f"accuracy {accuracy['mean']:.4f} +- {accuracy['ci95']:.4f}"
        )
    return line

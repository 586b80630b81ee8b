"""A run's evaluation protocol: samplers built from its settings (an impossible episode shape
names the setting that fed it), scores on fixed episodes, and the protocol stamp of results.json."""

from __future__ import annotations

import itertools

import torch
from omegaconf import DictConfig, OmegaConf

from metarun import batchnorm
from metarun.attacks import Attack, make_attack, pixel_range
from metarun.build import ATTACK_KEYS
from metarun.data.base import EpisodeShapeError
from metarun.data.environments import EnvironmentDataset
from metarun.data.sampler import VariableShape
from metarun.engine import Engine
from metarun.errors import ConfigError
from metarun.evaluator import episode_predictions, episode_scores, summarise
from metarun.metrics import calibration_summary, mean_ci95, regression_summary


def _key_set(cfg: DictConfig, key: str, source: str) -> str:
    """`source` when `key` only repeats its value (e.g. eval.shots: ${task.shots}), else `key`:
    the setting an error should name."""
    return source if OmegaConf.select(cfg, key) == OmegaConf.select(cfg, source) else key


def sampler(
    cfg: DictConfig,
    dataset,
    split: str,
    device: torch.device,
    keys: tuple[str, ...],
    shots: int | None = None,
    queries: int | None = None,
):
    """The dataset's sampler of `split` with (ways, shots, queries, protocol) read from `keys`,
    which an impossible shape names; `shots` and `queries` replace the values of their keys."""
    ways, shots_set, queries_set, kind = (OmegaConf.select(cfg, key) for key in keys)
    shots = shots_set if shots is None else shots
    queries = queries_set if queries is None else queries
    try:
        if kind == "online":
            return dataset.online_sequences(split, ways, shots, device)
        return dataset.sampler(split, ways, shots, queries, device)
    except EpisodeShapeError as error:
        raise ConfigError(error.explain(*keys[:3])) from None


def eval_sampler(cfg: DictConfig, dataset, split: str, device: torch.device):
    """Validation and test episodes: eval.ways/shots/queries/protocol (which default to task.*)."""
    keys = (
        _key_set(cfg, "eval.ways", "task.ways"),
        _key_set(cfg, "eval.shots", "task.shots"),
        "eval.queries",
        "eval.protocol",
    )
    return sampler(cfg, dataset, split, device, keys)


def train_sampler(cfg: DictConfig, dataset, algo, device: torch.device):
    """Meta-training episodes (each meta-batch's shots drawn from task.min_shots..task.shots
    and its queries from task.min_queries..task.queries where those are set), or labelled
    batches for algorithms trained as classifiers."""
    if algo.capabilities.learns_from == "labelled_batches":
        return dataset.labelled_batches("train", cfg.task.batch_size, device)
    keys = (
        _key_set(cfg, "task.train_ways", "task.ways"),
        "task.shots",
        "task.queries",
        "task.protocol",
    )
    task = cfg.task
    if task.min_shots is None and task.min_queries is None:
        return sampler(cfg, dataset, "train", device, keys)
    shapes = itertools.product(
        range(task.min_shots or task.shots, task.shots + 1),
        range(task.min_queries or task.queries, task.queries + 1),
    )
    return VariableShape(
        {(k, q): sampler(cfg, dataset, "train", device, keys, k, q) for k, q in shapes}
    )


def validation_seed(cfg: DictConfig) -> int:
    """Validation episodes come from eval.seed + 1: where a dataset's splits share one task
    distribution (sinusoid, environments), the checkpoint is then never chosen on the very
    episodes it is tested on."""
    return cfg.eval.seed + 1


def evaluation_attack(cfg: DictConfig, dataset) -> Attack | None:
    """eval.attack as an Attack for the test (None for none), checked against the dataset."""
    kind = cfg.eval.attack
    if kind == "none":
        return None
    if cfg.eval.protocol != "episodic":
        raise ConfigError(
            f"eval.attack={kind} attacks episodes, but eval.protocol={cfg.eval.protocol} tests "
            "on sequences. Set eval.attack=none, or eval.protocol=episodic."
        )
    epsilon, steps, step_size = (
        OmegaConf.select(cfg, f"eval.{key}", default=None) for key in ATTACK_KEYS
    )
    return make_attack(kind, epsilon, steps, step_size, pixel_range(dataset, "eval.attack"), "eval")


def score(
    cfg: DictConfig,
    algo,
    engine: Engine,
    sampler,
    metric: str,
    episodes: int,
    seed: int | None = None,
    calibration: bool = False,
    attack: Attack | None = None,
) -> dict:
    """Mean and 95% interval over `episodes` fixed episodes, seeded by `seed` alone (default
    eval.seed: the test episodes). `calibration`: results.json's `calibration` from the same
    predictions: a classifier's ECE, MCE, NLL, Brier score and reliability diagram; a regressor's
    NLL and 95% coverage when it predicts a spread or eval.noise_std gives it one. `attack`:
    results.json's `robust`, the accuracy on the same episodes under eval.attack."""
    seed = cfg.eval.seed if seed is None else seed
    columns = getattr(sampler, "score_columns", None)
    args = (algo, engine, sampler, episodes, seed, cfg.eval.batch_tasks, cfg.eval.inner_steps)
    if calibration and columns is None:
        e = cfg.eval
        measures = episode_predictions(
            *args,
            bins=e.calibration_bins,
            noise_std=e.noise_std,
            attack=attack,
            attack_target=e.attack_target,
        )
        summary = summarise(measures[metric], metric)
        if attack is not None:
            summary["robust"] = {
                "attack": attack_stamp(cfg, attack),
                "accuracy": mean_ci95(measures["robust_accuracy"]),
                "largest_perturbation": measures["perturbation"].max().item(),
            }
        if metric == "accuracy":
            return {**summary, "calibration": calibration_summary(measures)}
        if "nll" in measures:  # regressors with a predictive spread (their own, or noise_std)
            return {**summary, "calibration": regression_summary(measures, e.noise_std)}
        return summary
    return summarise(episode_scores(*args), metric, columns)


def inner_steps(cfg: DictConfig) -> tuple[int | None, int | None]:
    """(inner steps at meta-training, at test): eval.inner_steps=null tests with the training
    value; None for algorithms without inner steps."""
    train = cfg.algo.get("inner_steps")
    return train, cfg.eval.inner_steps if cfg.eval.inner_steps is not None else train


def attack_stamp(cfg: DictConfig, attack: Attack | None) -> dict | str:
    """What a robust accuracy depends on: the attack, its target and settings; "none"."""
    if attack is None:
        return "none"
    return {"kind": cfg.eval.attack, "target": cfg.eval.attack_target, **attack.describe()}


def protocol(cfg: DictConfig, dataset, engine: Engine, attack: Attack | None = None) -> dict:
    """What a published number must share with ours to be comparable."""
    train_steps, test_steps = inner_steps(cfg)
    shared = {
        "inner_steps_train": train_steps,
        "inner_steps_test": test_steps,
        "eval_seed": cfg.eval.seed,
    }
    if isinstance(dataset, EnvironmentDataset):  # shots and queries count trajectories
        return {
            **dataset.protocol(),
            "tasks": cfg.eval.episodes,
            "trajectories_per_step": cfg.eval.shots,
            "trajectories_per_update_train": cfg.task.queries,
            "inner_lr": cfg.algo.get("inner_lr"),
            "later_inner_lr": cfg.algo.get("later_inner_lr"),
            **shared,
        }
    return {
        **dataset.protocol(),
        "eval_split": "test",
        "batchnorm": f"{cfg.bn}: {batchnorm.MODES[cfg.bn]}",
        "protocol": cfg.eval.protocol,
        "ways": cfg.eval.ways,
        "shots": cfg.eval.shots,
        "queries_test": cfg.eval.queries,
        "train_shots": [cfg.task.min_shots or cfg.task.shots, cfg.task.shots],
        "train_queries": [cfg.task.min_queries or cfg.task.queries, cfg.task.queries],
        "episodes": cfg.eval.episodes,
        "attack": attack_stamp(cfg, attack),
        **shared,
        **engine.describe(),
    }

"""`metarun show [overrides]`: what a configuration (a preset, say) resolves to, before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf

from metarun.build import RUNTIME_SETTINGS
from metarun.data.environments import EnvironmentDataset
from metarun.protocol import inner_steps


def _name(target: str | None) -> str | None:
    return target.rsplit(".", 1)[-1] if target else None


def episode(
    ways: int,
    shots: int,
    queries: int,
    protocol: str = "episodic",
    min_shots: int | None = None,
    min_queries: int | None = None,
) -> str:
    """'5-way 1-shot, 15 queries per class', '5-way 1..5-shot, ...' or an online sequence."""
    if protocol == "online":
        return f"online sequences of {ways} classes x {shots} instances"
    drawn = f"{min_shots}..{shots}" if min_shots is not None else f"{shots}"
    asked = f"{min_queries}..{queries}" if min_queries is not None else f"{queries}"
    return f"{ways}-way {drawn}-shot, {asked} queries per class"


def attack(node) -> str:
    """'none', 'fgsm, epsilon 0.1' (task.*) or 'pgd-10, epsilon 0.1, on the query' (eval.*)."""
    kind = node.get("attack", "none")
    if kind in ("none", None):
        return "none"
    steps = f"-{node['attack_steps']}" if kind == "pgd" else ""
    target = f", on the {node['attack_target']}" if "attack_target" in node else ""
    return f"{kind}{steps}, epsilon {node['epsilon']}{target}"


def augmentation(dataset: dict) -> str:
    """'none' or the training transforms' names: 'RandomCrop, ColorJitter, RandomHorizontalFlip'."""
    node = dataset.get("augment") or {}
    steps = node.get("transforms", [node] if node else [])
    return ", ".join(str(_name(step.get("_target_"))) for step in steps) or "none"


def settings(cfg: DictConfig) -> dict:
    """The values that decide what a run reproduces: episode shapes, rates, inner steps, budget,
    BatchNorm mode and runtime settings, resolved."""
    train_steps, test_steps = inner_steps(cfg)
    values = cast(dict, OmegaConf.to_container(cfg, resolve=True))
    task, ev = values["task"], values["eval"]
    ways, shots, queries = task["train_ways"], task["shots"], task["queries"]
    scheduler, optimizer = values.get("scheduler") or {}, values["optimizer"]
    rate = f"lr {optimizer['lr']}" if "lr" in optimizer else f"max_kl {optimizer.get('max_kl')}"
    return {
        "algorithm": _name(values["algo"]["_target_"]),
        "dataset": _name(values["dataset"]["_target_"]),
        "backbone": _name(values["backbone"]["_target_"]),
        "augment": augmentation(values["dataset"]),
        "train_episode": episode(
            ways, shots, queries, task["protocol"], task["min_shots"], task["min_queries"]
        ),
        "test_episode": episode(ev["ways"], ev["shots"], ev["queries"], ev["protocol"]),
        "meta_batch_size": task["meta_batch_size"],
        "inner_lr": values["algo"].get("inner_lr"),
        "inner_steps_train": train_steps,
        "inner_steps_test": test_steps,
        "optimizer": f"{_name(optimizer['_target_'])} {rate}",
        "scheduler": _name(scheduler.get("_target_")),
        "iterations": values["trainer"]["iterations"],
        "train_attack": attack(task),
        "test_attack": attack(ev),
        "bn": values["bn"],
        **{key: values[key] for key in RUNTIME_SETTINGS},
    }


def render(values: dict) -> str:
    width = max(map(len, values))
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in values.items())


def banner(
    cfg: DictConfig, run_dir: Path, algo, dataset, engine, start: int, machine_note: str = ""
) -> str:
    """What a run is about to do and where its output goes, printed before the first iteration."""
    t, task, data, e = cfg.trainer, cfg.task, dataset.protocol(), engine.describe()
    split = f" ({data['split']} split)" if "split" in data else ""
    compiled = "on" if e["compile"] else "off"
    engine_used = e["engine"]
    if e["evaluation_engine"] != e["engine"]:
        engine_used += f" (evaluation {e['evaluation_engine']})"
    computing = f"engine {engine_used}, compile {compiled}, {e['precision']}, bn={cfg.bn}"
    test = f"{episode(cfg.eval.ways, cfg.eval.shots, cfg.eval.queries, cfg.eval.protocol)}, "
    test += f"{cfg.eval.episodes} episodes"
    if isinstance(dataset, EnvironmentDataset):  # shots and queries count trajectories
        training = (
            f"{task.shots} trajectories per adaptation step, {task.queries} per "
            f"meta-update, horizon {data['horizon']}, meta-batch {task.meta_batch_size}"
        )
        test = f"{cfg.eval.episodes} tasks, {cfg.eval.shots} trajectories per step"
        computing = "the algorithm collects and differentiates (engine settings do not apply)"
    elif algo.capabilities.learns_from == "episodes":
        shape = episode(
            task.train_ways,
            task.shots,
            task.queries,
            task.protocol,
            task.min_shots,
            task.min_queries,
        )
        training = f"{shape}, meta-batch {task.meta_batch_size}"
    else:
        training = f"labelled batches of {task.batch_size}"
    if cfg.task.get("attack", "none") != "none":
        training += f", adversarial ({attack(cfg.task)})"
    if cfg.eval.get("attack", "none") != "none":
        test += f", also under {attack(cfg.eval)}"
    device = next(algo.parameters()).device
    processes, threads = engine.world.size, torch.get_num_threads()
    plural = lambda count, word, ending: f"{count} {word}{ending if count > 1 else ''}"
    machine = f"{plural(processes, 'process', 'es')} x {plural(threads, 'thread', 's')}"
    machine += f" ({machine_note})" if machine_note else ""
    resumed = f", resuming at {start}" if start else ""
    return (
        f"metarun train: {type(algo).__name__} on {data['dataset']}{split}: {training}\n"
        f"  {t.iterations} iterations{resumed}; validation every {t.val_every} on {t.val_episodes} "
        f"episodes; test: {test}\n"
        f"  device {device}, {machine}; {computing}\n"
        f"  run folder {run_dir}: checkpoints/ (best.pt, last.pt every {t.ckpt_every}), "
        "metrics.jsonl, config.yaml; results.json at the end"
    )

"""evaluate(cfg): `metarun eval` re-tests a run's checkpoint with its saved settings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from metarun import batchnorm
from metarun.build import (
    RUNTIME_SETTINGS,
    build,
    build_algorithm,
    check_settings,
)
from metarun.checkpoint import (
    load_checkpoint,
    restore_model,
)
from metarun.data.environments import EnvironmentDataset
from metarun.distributed import World
from metarun.engine import make_engine
from metarun.errors import ConfigError
from metarun.launch import plan_threads
from metarun.old_runs import upgrade_old_config
from metarun.protocol import (
    eval_sampler,
    evaluation_attack,
    protocol,
    score,
)
from metarun.provenance import code_stamp
from metarun.run import dataset_nodes
from metarun.runtime import resolve_device


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        if not path.is_file():
            raise ConfigError(
                f"The run folder {run_dir} has no checkpoints/{checkpoint}.pt. Check "
                "run_dir, or train it first; checkpoint=last|best|<path> picks another file."
            )
        return path
    return Path(checkpoint)


def _evaluation_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The run's saved config with what this command changes: non-null eval.* values, runtime
    settings given on its command line (`overrides`), bn and dataset_root."""
    run_cfg = upgrade_old_config(
        cast(DictConfig, OmegaConf.load(Path(cfg.run_dir) / "config.yaml"))
    )
    for key, value in cfg.eval.items():
        if value is not None and key != "output":
            run_cfg.eval[key] = value
    given = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    for key in RUNTIME_SETTINGS:
        if key in given:
            run_cfg[key] = cfg[key]
    if cfg.dataset_root is not None:
        for node in dataset_nodes(run_cfg.dataset):
            if "root" in node:
                node.root = cfg.dataset_root
    check_settings(run_cfg)
    return run_cfg


def _task_kind(config) -> str | None:
    """What the dataset a config names gives (its class only: nothing is loaded); None for an
    unreadable config, whose real mismatch restore_model reports."""
    try:
        environments = issubclass(get_class(config["dataset"]["_target_"]), EnvironmentDataset)
    except Exception:
        return None
    return "environment tasks (reinforcement learning)" if environments else "labelled episodes"


def _check_same_kind(run_cfg: DictConfig, state: dict, path: Path) -> None:
    """A checkpoint of environment tasks cannot be tested on labelled episodes, nor the reverse:
    say so instead of a shape mismatch."""
    trained, asked = _task_kind(state.get("config") or {}), _task_kind(run_cfg)
    if None not in (trained, asked) and trained != asked:
        raise ConfigError(
            f"The checkpoint {path} was trained on {trained} "
            f"but this run folder's config tests on {asked}. "
            "Pass a checkpoint of the same kind of run (checkpoint=best|last, or a .pt file from "
            "a run with the same dataset), or evaluate the checkpoint's own run folder."
        )


def _switch_batchnorm(algo, run_cfg: DictConfig, mode: str) -> None:
    """Tests a trained model under another `bn` mode; running statistics must come from training."""
    if mode == "running" and run_cfg.bn != "running":
        raise ConfigError(
            f"bn=running tests with running statistics gathered in meta-training, but this run "
            f"was trained with bn={run_cfg.bn} and has none. Drop the bn override, or retrain "
            "with bn=running."
        )
    run_cfg.bn = mode
    batchnorm.use_mode(algo, mode)


def evaluate(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict:
    """Rebuilds the model from the run folder's saved config and tests a checkpoint.

    `overrides`: the command line's settings; runtime settings (configs/runtime/) named there
    replace the run's, the others keep the values it was trained with."""
    run_dir = Path(cfg.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"run_dir={run_dir} is not a metarun run folder (no config.yaml there). "
            "Pass the folder that `metarun train` wrote, e.g. outputs/<date>/<time>."
        )
    path = _checkpoint_path(run_dir, cfg.checkpoint)
    run_cfg = _evaluation_config(cfg, overrides)
    device = resolve_device(run_cfg.device)
    code = code_stamp(device)
    dataset = build("dataset", run_cfg.dataset)
    algo = build_algorithm(run_cfg, dataset)  # as trained, so the checkpoint's BatchNorm state fits
    state = load_checkpoint(path)
    _check_same_kind(run_cfg, state, path)
    restore_model(algo, state, path)
    if cfg.bn is not None:
        _switch_batchnorm(algo, run_cfg, cfg.bn)
    algo.to(device)
    world = World.current()
    torch.set_num_threads(plan_threads(run_cfg.threads, world.size))
    engine = make_engine(run_cfg, algo, device, world)
    sampler = eval_sampler(run_cfg, dataset, "test", device)
    attack = evaluation_attack(run_cfg, dataset)
    results = score(
        run_cfg,
        algo,
        engine,
        sampler,
        dataset.metric,
        run_cfg.eval.episodes,
        calibration=True,
        attack=attack,
    )
    results.update(
        checkpoint=str(path), protocol=protocol(run_cfg, dataset, engine, attack), code=code
    )
    if world.is_main:
        output = Path(cfg.eval.output) if cfg.eval.output else run_dir / "eval.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
    return results

"""train(cfg) and evaluate(cfg): wire the objects together and call the loops."""

from __future__ import annotations

import json
import resource
import sys
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
    build_optimizer,
    check_settings,
)
from metarun.checkpoint import (
    Progress,
    TrainingState,
    capture_rng,
    copy_matching_weights,
    load_checkpoint,
    newest_valid_checkpoint,
    restore_model,
    restore_rng,
)
from metarun.data.environments import EnvironmentDataset
from metarun.distributed import World
from metarun.engine import Engine, make_engine
from metarun.errors import ConfigError
from metarun.launch import StartWorkers, plan_threads, use_the_machine
from metarun.old_runs import upgrade_old_config
from metarun.protocol import (
    eval_sampler,
    evaluation_attack,
    protocol,
    score,
    train_sampler,
    validation_seed,
)
from metarun.provenance import changed_computation, code_stamp, record_code
from metarun.runtime import resolve_device, seed_everything
from metarun.show import banner
from metarun.trainer import Schedule, Trainer


def _dataset_nodes(node: DictConfig) -> list[DictConfig]:
    """The dataset config and the configs nested in it (image completion holds its images')."""
    return [node] + [
        n for v in node.values() if isinstance(v, DictConfig) for n in _dataset_nodes(v)
    ]


def _absolute_paths(cfg: DictConfig) -> None:
    """Stores every dataset root and init_from as absolute paths so the run folder works from
    any directory."""
    for node in _dataset_nodes(cfg.dataset):
        if "root" in node:
            node.root = str(Path(node.root).expanduser().resolve())
    if cfg.get("init_from"):
        cfg.init_from = str(Path(cfg.init_from).expanduser().resolve())


def _checkpoint_to_resume(resume: str, run_dir: Path) -> tuple[dict, Path] | None:
    """trainer.resume=auto: this run folder's newest valid checkpoint (None if it has none);
    else a folder's or a file's, which must exist."""
    source = run_dir if resume == "auto" else Path(resume)
    if source.is_dir():
        found = newest_valid_checkpoint(source / "checkpoints")
    else:
        found = (load_checkpoint(source), source) if source.exists() else None
    if found is None and resume != "auto":
        raise ConfigError(
            f"trainer.resume={resume} has no valid checkpoint to resume from. Pass a run "
            "folder or .pt file written by `metarun train`, or trainer.resume=auto."
        )
    return found


def _starting_model(cfg: DictConfig, dataset, device: torch.device, world: World):
    algo = build_algorithm(cfg, dataset)
    if cfg.init_from:
        copied = copy_matching_weights(algo, Path(cfg.init_from))
        print(
            f"metarun: init_from copied {copied} of {len(algo.state_dict())} tensors from "
            f"{cfg.init_from}",
            file=sys.stderr,
        )
    algo.to(device)
    world.broadcast_state(algo)
    return algo


def _training_state(cfg: DictConfig, algo, metric: str) -> TrainingState:
    optimizer, scheduler = build_optimizer(cfg, algo)
    return TrainingState(
        model=algo,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=torch.Generator().manual_seed(cfg.seed),
        progress=Progress(higher_is_better=metric != "mse"),  # accuracy, return
        config=cast(dict, OmegaConf.to_container(cfg, resolve=True)),
    )


def _fit(
    cfg: DictConfig,
    run_dir: Path,
    state: TrainingState,
    engine: Engine,
    samplers: dict,
    metric: str,
    world: World,
) -> dict:
    """Trains with the trainer.* schedule, validating on samplers["val"]; returns its summary."""
    t = cfg.trainer
    schedule = Schedule(
        iterations=t.iterations,
        meta_batch_size=cfg.task.meta_batch_size,
        log_every=t.log_every,
        val_every=t.val_every,
        ckpt_every=t.ckpt_every,
        nonfinite=t.nonfinite,
        clip_grad_norm=t.clip_grad_norm,
    )
    logger = None
    if cfg.get("logger") and world.is_main:
        resumed_at = state.progress.iteration
        logger = build("logger", cfg.logger)(
            run_dir=run_dir, config=state.config, resumed_at=resumed_at
        )
    validate = lambda: score(
        cfg, state.model, engine, samplers["val"], metric, t.val_episodes, seed=validation_seed(cfg)
    )
    trainer = Trainer(
        state=state,
        engine=engine,
        sampler=samplers["train"],
        validate=validate,
        schedule=schedule,
        run_dir=run_dir,
        metric=metric,
        world=world,
        logger=logger,
    )
    try:
        summary = trainer.fit()
        peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
        peaks = [round(mb, 1) for mb in world.gather(peak).tolist()]  # each process's own, in MB
        return {
            **summary,
            "processes": world.size,
            "threads": torch.get_num_threads(),
            "peak_memory_mb": peaks,
        }
    finally:
        if logger is not None:
            logger.close()


def train(
    cfg: DictConfig, run_dir: Path, start_workers: bool = False, built: tuple | None = None
) -> dict:
    """Meta-trains, then tests the best-validation checkpoint; writes the run folder.

    Under torchrun every process calls this with the same settings and run folder.
    start_workers: a lone process may raise StartWorkers when its plan asks for several
    processes (the caller starts them and calls again as rank 0, passing the exception's
    `built`: the dataset and model it had built and the generators' states after building);
    else it trains alone."""
    check_settings(cfg)
    world, run_dir = World.current(), Path(run_dir)
    _absolute_paths(cfg)
    device = resolve_device(cfg.device)
    code = code_stamp(device)  # now: the code this process loaded, whatever changes later
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    dataset, algo = _dataset_and_model(cfg, device, world, built)
    resumed = _checkpoint_to_resume(cfg.trainer.resume, run_dir) if cfg.trainer.resume else None
    done = resumed[0]["iteration"] if resumed else 0
    # Processes, engine and compilation are planned for the whole run, not for what a resumed
    # run has left: a resumed run then computes as the run it continues, bit for bit.
    try:
        machine_note = use_the_machine(cfg, dataset, algo, device, world, start_workers)
    except StartWorkers as plan:
        plan.built = (dataset, algo, capture_rng(torch.Generator()))  # no sampler yet
        raise
    engine = make_engine(cfg, algo, device, world, iterations=cfg.trainer.iterations)
    # Every split is checked before training starts, so an impossible test episode fails now.
    samplers = {split: eval_sampler(cfg, dataset, split, device) for split in ("test", "val")}
    samplers["train"] = train_sampler(cfg, dataset, algo, device)
    attack = evaluation_attack(cfg, dataset)
    state = _training_state(cfg, algo, dataset.metric)
    if resumed:
        state.restore(*resumed)
    if world.is_main:
        computation = {
            "processes": world.size,
            "threads": torch.get_num_threads(),
            **engine.describe(),
        }
        if resumed:
            print(f"metarun: resuming from {resumed[1]} at iteration {done}", file=sys.stderr)
            if warning := changed_computation(run_dir, computation):
                print(warning, file=sys.stderr)
        record_code(run_dir, code, state.progress.iteration, computation)
        print(
            banner(cfg, run_dir, algo, dataset, engine, state.progress.iteration, machine_note),
            file=sys.stderr,
        )
    training = _fit(cfg, run_dir, state, engine, samplers, dataset.metric, world)
    world.barrier()  # rank 0 has finished writing best.pt
    best = run_dir / "checkpoints" / "best.pt"
    restore_model(algo, load_checkpoint(best), best)
    test = samplers["test"]
    results = score(
        cfg, algo, engine, test, dataset.metric, cfg.eval.episodes, calibration=True, attack=attack
    )
    stamp = {"protocol": protocol(cfg, dataset, engine, attack), "code": code}
    results.update(checkpoint="best", iteration=training["best_iteration"], training=training)
    results.update(stamp)
    if world.is_main:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _dataset_and_model(cfg: DictConfig, device: torch.device, world: World, built: tuple | None):
    """The dataset and the starting model, seeded; or, for rank 0 after it started its workers,
    what it had built before (the generators continue from where building left them)."""
    seed_everything(cfg.seed)
    if built is None:
        dataset = build("dataset", cfg.dataset)
        return dataset, _starting_model(cfg, dataset, device, world)
    dataset, algo, states = built
    restore_rng(states, torch.Generator())
    world.broadcast_state(algo)
    return dataset, algo


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
        for node in _dataset_nodes(run_cfg.dataset):
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

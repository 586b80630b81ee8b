"""train(cfg): wire the objects together and call the loops (metarun eval: metarun.retest)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import cast

import torch
from omegaconf import DictConfig, OmegaConf

from metarun.build import (
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
from metarun.distributed import World
from metarun.engine import Engine, make_engine
from metarun.errors import ConfigError
from metarun.launch import StartWorkers, use_the_machine
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


def dataset_nodes(node: DictConfig) -> list[DictConfig]:
    """The dataset config and the configs nested in it (image completion holds its images')."""
    return [node] + [
        n for v in node.values() if isinstance(v, DictConfig) for n in dataset_nodes(v)
    ]


def _absolute_paths(cfg: DictConfig) -> None:
    """Stores every dataset root and init_from as absolute paths so the run folder works from
    any directory."""
    for node in dataset_nodes(cfg.dataset):
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

"""train(cfg) and evaluate(cfg): wire the objects together and call the loops."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metarun import batchnorm
from metarun.build import (build, build_algorithm, build_optimizer, check_settings,
                           resolve_device, seed_everything)
from metarun.checkpoint import copy_matching_weights, load_checkpoint, newest_valid_checkpoint, restore_model
from metarun.distributed import World
from metarun.engine import Engine, resolve_compile, resolve_mode
from metarun.errors import ConfigError
from metarun.evaluator import episode_scores, summarise
from metarun.trainer import Schedule, Trainer


def _absolute_paths(cfg: DictConfig) -> None:
    """Stores dataset.root and init_from as absolute paths so the run folder works from any directory."""
    if "root" in cfg.dataset:
        cfg.dataset.root = str(Path(cfg.dataset.root).expanduser().resolve())
    if cfg.get("init_from"):
        cfg.init_from = str(Path(cfg.init_from).expanduser().resolve())


def make_engine(cfg: DictConfig, algo, device, world: World | None = None) -> Engine:
    """The engine a run's settings ask for, with its `auto` choices made for this model and device."""
    # Runs saved before these settings existed ran in fp32, uncompiled, contiguous.
    mode = resolve_mode(cfg.engine, algo, device)
    engine = Engine(mode, cfg.get("precision", "fp32"), resolve_compile(cfg.get("compile", False), mode, algo),
                    cfg.get("channels_last", False), cfg.get("keep_freed_memory", False), world)
    engine.prepare(algo)
    return engine


def _eval_ways(cfg: DictConfig) -> int:
    return cfg.eval.get("ways", cfg.task.ways)  # runs saved before eval.ways existed tested at task.ways


def _eval_sampler(cfg: DictConfig, dataset, split: str, device):
    ways = _eval_ways(cfg)
    return dataset.sampler(split, ways, cfg.eval.shots, cfg.eval.queries, device,
                           ways_setting="task.ways" if ways == cfg.task.ways else "eval.ways")


def _score(cfg: DictConfig, algo, engine: Engine, sampler, metric: str, episodes: int) -> dict:
    scores = episode_scores(algo, engine, sampler, episodes, cfg.eval.seed, cfg.eval.batch_tasks,
                            cfg.eval.inner_steps)
    return summarise(scores, metric)


def protocol(cfg: DictConfig, dataset, engine: Engine) -> dict:
    """What a published number must share with ours to be comparable."""
    train_steps = cfg.algo.get("inner_steps")
    test_steps = cfg.eval.inner_steps if cfg.eval.inner_steps is not None else train_steps
    bn = cfg.get("bn", "transductive")
    return {**dataset.protocol(), "eval_split": "test", "batchnorm": f"{bn}: {batchnorm.MODES[bn]}",
            "ways": _eval_ways(cfg), "shots": cfg.eval.shots, "queries_test": cfg.eval.queries,
            "inner_steps_train": train_steps, "inner_steps_test": test_steps,
            "episodes": cfg.eval.episodes, "eval_seed": cfg.eval.seed, **engine.describe()}


def _resume(trainer: Trainer, resume: str, run_dir: Path) -> None:
    """trainer.resume=auto: this run folder's newest valid checkpoint, if any; else a folder or file."""
    source = run_dir if resume == "auto" else Path(resume)
    if source.is_dir():
        found = newest_valid_checkpoint(source / "checkpoints")
    else:
        found = (load_checkpoint(source), source) if source.exists() else None
    if found is None:
        if resume == "auto":
            return
        raise ConfigError(f"trainer.resume={resume} has no valid checkpoint to resume from. Pass a run "
                          "folder or .pt file written by `metarun train`, or trainer.resume=auto.")
    state, path = found
    restore_model(trainer.algo, state, path)
    trainer.restore(state)
    print(f"metarun: resuming from {path} at iteration {state['iteration']}", file=sys.stderr)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Meta-trains, then tests the best-validation checkpoint; writes the run folder.

    Under torchrun every process calls this with the same settings and run folder."""
    check_settings(cfg)
    world = World.current()
    run_dir = Path(run_dir)
    _absolute_paths(cfg)
    if world.is_main:
        (run_dir / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    dataset = build("dataset", cfg.dataset)
    algo = build_algorithm(cfg, dataset)
    if cfg.get("init_from"):
        copied = copy_matching_weights(algo, Path(cfg.init_from))
        print(f"metarun: init_from copied {copied} of {len(algo.state_dict())} tensors from {cfg.init_from}",
              file=sys.stderr)
    algo.to(device)
    world.broadcast_state(algo)
    engine = make_engine(cfg, algo, device, world)
    optimizer, scheduler = build_optimizer(cfg, algo)
    # Every split is checked before training starts, so an impossible test episode fails now.
    test_sampler = _eval_sampler(cfg, dataset, "test", device)
    val_sampler = _eval_sampler(cfg, dataset, "val", device)
    if algo.episodic:
        train_sampler = dataset.sampler("train", cfg.task.train_ways, cfg.task.shots, cfg.task.queries,
                                        device, ways_setting="task.train_ways")
    else:
        train_sampler = dataset.labelled_batches("train", cfg.task.batch_size, device)

    def validate() -> dict:
        return _score(cfg, algo, engine, val_sampler, dataset.metric, cfg.trainer.val_episodes)

    t = cfg.trainer
    schedule = Schedule(t.iterations, cfg.task.meta_batch_size, t.log_every, t.val_every, t.ckpt_every,
                        t.nonfinite, t.get("clip_grad_norm"))
    trainer = Trainer(algo, engine, optimizer, scheduler, train_sampler, validate, schedule, run_dir,
                      OmegaConf.to_container(cfg, resolve=True), dataset.metric, cfg.seed, world)
    if t.resume:
        _resume(trainer, t.resume, run_dir)
    logger = None
    if cfg.get("logger") and world.is_main:
        logger = build("logger", cfg.logger)(run_dir=run_dir, config=trainer.config, resumed_at=trainer.iteration)
    try:
        training = trainer.fit(logger)
    finally:
        if logger is not None:
            logger.close()
    training["processes"] = world.size

    world.barrier()  # rank 0 has finished writing best.pt
    best = run_dir / "checkpoints" / "best.pt"
    restore_model(algo, load_checkpoint(best), best)
    results = _score(cfg, algo, engine, test_sampler, dataset.metric, cfg.eval.episodes)
    results.update(checkpoint="best", iteration=training["best_iteration"],
                   protocol=protocol(cfg, dataset, engine), training=training)
    if world.is_main:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        if not path.is_file():
            raise ConfigError(f"The run folder {run_dir} has no checkpoints/{checkpoint}.pt. Check "
                              "run_dir, or train it first; checkpoint=last|best|<path> picks another file.")
        return path
    return Path(checkpoint)


def _switch_batchnorm(algo, run_cfg: DictConfig, mode: str) -> None:
    """Tests a trained model under another `bn` mode; running statistics must come from training."""
    trained = run_cfg.get("bn", "transductive")
    if mode == "running" and trained != "running":
        raise ConfigError(f"bn=running tests with running statistics gathered in meta-training, but this run "
                          f"was trained with bn={trained} and has none. Drop the bn override, or retrain "
                          "with bn=running.")
    run_cfg.bn = mode
    check_settings(run_cfg)
    batchnorm.use_mode(algo, mode)


def evaluate(cfg: DictConfig) -> dict:
    """Rebuilds the model from the run folder's saved config and tests a checkpoint."""
    run_dir = Path(cfg.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run_dir={run_dir} is not a metarun run folder (no config.yaml there). "
                          "Pass the folder that `metarun train` wrote, e.g. outputs/<date>/<time>.")
    path = _checkpoint_path(run_dir, cfg.checkpoint)
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    for key, value in cfg.eval.items():
        if value is not None and key != "output":
            run_cfg.eval[key] = value
    run_cfg.device = cfg.device
    for key in ("engine", "precision", "compile", "channels_last", "keep_freed_memory"):
        if cfg[key] is not None:
            run_cfg[key] = cfg[key]
    if cfg.dataset_root is not None and "root" in run_cfg.dataset:
        run_cfg.dataset.root = cfg.dataset_root
    check_settings(run_cfg)
    device = resolve_device(run_cfg.device)
    dataset = build("dataset", run_cfg.dataset)
    algo = build_algorithm(run_cfg, dataset)  # as trained, so the checkpoint's BatchNorm state fits
    restore_model(algo, load_checkpoint(path), path)
    if cfg.bn is not None:
        _switch_batchnorm(algo, run_cfg, cfg.bn)
    algo.to(device)
    world = World.current()
    engine = make_engine(run_cfg, algo, device, world)
    sampler = _eval_sampler(run_cfg, dataset, "test", device)
    results = _score(run_cfg, algo, engine, sampler, dataset.metric, run_cfg.eval.episodes)
    results.update(checkpoint=str(path), protocol=protocol(run_cfg, dataset, engine))
    if world.is_main:
        output = Path(cfg.eval.output) if cfg.eval.output else run_dir / "eval.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
    return results

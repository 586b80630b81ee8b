"""`metarun train|eval [overrides]`: picks the Hydra app, turns user mistakes into one paragraph."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError

from metarun import distributed, launch, report, retest, run
from metarun.build import CONFIG_DIR
from metarun.distributed import World
from metarun.errors import MetarunError, Preempted
from metarun.evaluator import describe

USAGE = """usage: metarun train [overrides...]    meta-train (algo=<name> dataset=<name>; -m: sweep)
       metarun show [overrides...]     the resolved settings (e.g. show experiment=<preset>)
       metarun eval run_dir=<folder> [checkpoint=best|last|<path>] [eval.episodes=600 ...]
       metarun report <run or sweep folders...> [--output DIR]   results (report.md, .csv)
       metarun plot <run or sweep folders...> [--output DIR]     curves, sweep, reliability (PNG)
       torchrun --nproc_per_node=K -m metarun train [...]   K processes share each meta-batch"""


def _report(error: MetarunError) -> None:
    """An error from any process; a stop (which every process reaches together) from rank 0."""
    stopped = isinstance(error, Preempted)
    if not stopped or World.current().is_main:
        print(f"metarun: {'stopped' if stopped else 'error'}: {error}", file=sys.stderr)
    sys.exit(error.exit_status)


def _best_validation(results: dict) -> float:
    """What a sweeper (Optuna) optimises: the best validation score, never the test score."""
    return results["training"][f"best_val_{results['metric']}"]


def _train(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        if (run_dir / "results.json").is_file():
            print(f"metarun: {run_dir} already finished; skipping it.", file=sys.stderr)
            return _best_validation(json.loads((run_dir / "results.json").read_text()))
        if not cfg.trainer.resume:
            cfg.trainer.resume = "auto"
    try:
        results = _train_here_or_with_workers(cfg, run_dir, hydra_cfg.mode != RunMode.MULTIRUN)
    except MetarunError as error:
        _report(error)
    if World.current().is_main:
        print(f"test {describe(results)}")
    return _best_validation(results)


def _train_here_or_with_workers(cfg: DictConfig, run_dir: Path, start_workers: bool) -> dict:
    """Trains in this process, or, when the run's plan asks for several processes, makes this
    process rank 0 and trains with the workers it starts (this command's settings, same run
    folder; their output in <run folder>/workers/)."""
    try:
        return run.train(cfg, run_dir, start_workers=start_workers)
    except launch.StartWorkers as raised:  # before anything was trained or written
        plan = raised
    arguments = ["train", *HydraConfig.get().overrides.task, f"hydra.run.dir={run_dir}"]
    with launch.workers(plan.processes, plan.threads, arguments, run_dir / "workers"):
        distributed.start()
        return run.train(cfg, run_dir, built=plan.built)


def _eval(cfg: DictConfig) -> None:
    try:
        results = retest.evaluate(cfg, HydraConfig.get().overrides.task)
    except MetarunError as error:
        _report(error)
    if World.current().is_main:
        print(json.dumps(results, indent=2))


COMMANDS = {"train": _train, "eval": _eval}


def _folders_command(command: str, arguments: list[str]) -> None:
    """`metarun report|plot <folders...>`: plain commands over finished run folders (no Hydra)."""
    parser = argparse.ArgumentParser(prog=f"metarun {command}")
    parser.add_argument(
        "folders", nargs="+", type=Path, help="run folders, or sweep folders holding them"
    )
    parser.add_argument(
        "--output", type=Path, help="where the files go (default: the first folder)"
    )
    args = parser.parse_args(arguments)
    output = args.output or args.folders[0]
    try:
        runs = report.find_runs(args.folders)
    except MetarunError as error:
        _report(error)
    if command == "report":
        md, table = report.write_report(runs, output)
        print(f"{report.markdown(runs)}\nwritten: {md}, {table}")
        return
    from metarun import pictures, plot  # matplotlib and the models load only for this command

    written = [
        *plot.learning_curves(runs, output),
        *plot.sweep_plot(runs, output),
        *plot.adaptation_plot(runs, output),
        *plot.reliability_diagrams(runs, output),
        *pictures.regression_curves(runs, output),
        *pictures.completion_pictures(runs, output),
        *pictures.path_pictures(runs, output),
    ]
    print("written: " + ", ".join(map(str, written)))


# Config choices that need a Hydra plugin from an install extra: override -> (module, extra).
PLUGINS = {
    "hydra/launcher=parallel": ("hydra_plugins.hydra_joblib_launcher", "sweep"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "sweep"),
    "hydra/sweeper=inner_loop_search": ("hydra_plugins.hydra_optuna_sweeper", "sweep"),
}


def _check_plugins(overrides: list[str]) -> None:
    """A choice whose plugin is not installed is named with the extra that installs it."""
    for override in overrides:
        module, extra = PLUGINS.get(override, (None, None))
        if module is None or importlib.util.find_spec(module) is not None:
            continue
        plugin = module.split(".")[-1]
        print(
            f"metarun: error: {override} needs the {plugin} Hydra plugin, which is not installed. "
            f"Install it with pip install -e '.[{extra}]' (from a checkout) or "
            f"pip install 'metarun[{extra}]', or drop {override} to run the jobs one by one.",
            file=sys.stderr,
        )
        sys.exit(2)


def _check_eval_keys(overrides: list[str], known: set[str]) -> None:
    """`metarun eval` keeps what the checkpoint's weights fix (algorithm, model, training): a
    training setting on its command line is named with what eval takes instead."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith("hydra.") or key.split(".", 1)[0] in known:
            continue
        print(
            f"metarun: error: {key} is not a setting of metarun eval, which re-tests a run with "
            "the algorithm, model and training settings it was trained with (its checkpoint's "
            f"weights fix them). metarun eval takes: {', '.join(sorted(known))}; e.g. "
            "eval.inner_steps=10 changes the test's adaptation steps. To change "
            f"{key}, train a new run with metarun train.",
            file=sys.stderr,
        )
        sys.exit(2)


def _check_keys(command: str, overrides: list[str]) -> None:
    """Hydra rejects an unknown key without saying which keys exist; this names them."""
    if any(o.startswith("-") for o in overrides):  # --multirun, --cfg ...: Hydra's own checks
        return
    plain = [  # the search path stays: a user's config folder holds choices named here
        o
        for o in overrides
        if not o.lstrip("+~").startswith("hydra.") or o.startswith("hydra.searchpath=")
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        if command == "eval":
            _check_eval_keys(plain, set(compose("eval", [])))
        try:
            compose(command, plain)
            return
        except ConfigCompositionException as error:
            key = getattr(error.__cause__, "full_key", None)
            if not isinstance(error.__cause__, ConfigAttributeError) or not key:
                return  # Hydra reports it with its own message
            parent, _, name = key.rpartition(".")
            try:
                base = compose(command, [o for o in plain if not o.startswith(f"{key}=")])
            except Exception:
                return
        node = OmegaConf.select(base, parent) if parent else base
        known = ", ".join(sorted(str(k) for k in node)) if isinstance(node, DictConfig) else ""
    where = f"under {parent}" if parent else "at the top level"
    print(
        f"metarun: error: {key} is not a setting. Settings {where}: {known}. Fix the spelling, "
        f"or prefix it with + (+{key}=...) to add a new key on purpose.",
        file=sys.stderr,
    )
    sys.exit(2)


def _resolved_run_dir(command: str, overrides: list[str]) -> str:
    """hydra.run.dir as Hydra would resolve it now (its default holds the date and time)."""
    setup_globals()  # registers Hydra's `now` resolver
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return str(
            OmegaConf.select(compose(command, overrides, return_hydra_config=True), "hydra.run.dir")
        )


def _join_processes(command: str, overrides: list[str]) -> list[str]:
    """Under torchrun: joins the other processes; returns the overrides that give every process
    rank 0's run folder and leave Hydra's files and logs to rank 0."""
    if any(o in ("-m", "--multirun") for o in overrides):
        print(
            "metarun: error: a sweep (-m) cannot run inside torchrun, which already starts several "
            "processes for one run. Drop -m, or sweep without torchrun.",
            file=sys.stderr,
        )
        sys.exit(2)
    distributed.start()
    world = World.current()
    extra = []
    if command == "train" and not any(o.startswith("hydra.run.dir=") for o in overrides):
        run_dir = world.broadcast_object(
            _resolved_run_dir(command, overrides) if world.is_main else None
        )
        extra.append(f"hydra.run.dir={run_dir}")
    if not world.is_main:
        extra += [
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]
    return extra


def _show(overrides: list[str]) -> None:
    """`metarun show [overrides]`: the resolved settings of a train configuration, e.g. a preset."""
    from metarun import show

    _check_keys("train", overrides)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            cfg = compose("train", overrides)
        except ConfigCompositionException as error:
            print(f"metarun: error: {error}", file=sys.stderr)
            sys.exit(2)
    print(show.render(show.settings(cfg)))


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] in ("report", "plot"):
        _folders_command(sys.argv[1], sys.argv[2:])
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "show":
        _show(sys.argv[2:])
        return
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    _check_plugins(sys.argv[1:])
    _check_keys(command, sys.argv[1:])
    if command == "eval" and not any(arg.startswith("run_dir=") for arg in sys.argv[1:]):
        print(
            "metarun: error: metarun eval needs run_dir=<run folder written by metarun train>, "
            "e.g. metarun eval run_dir=outputs/2026-01-31/12-00-00.",
            file=sys.stderr,
        )
        sys.exit(2)
    if distributed.launched_by_torchrun():
        sys.argv += _join_processes(command, sys.argv[1:])
    sys.argv[0] = f"metarun {command}"
    app = hydra.main(config_path=CONFIG_DIR, config_name=command, version_base="1.3")(
        COMMANDS[command]
    )
    app()

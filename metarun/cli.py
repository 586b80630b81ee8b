"""`metarun train|eval [overrides]`: picks the Hydra app, turns user mistakes into one paragraph."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError

from metarun import run
from metarun.errors import MetarunError, Preempted
from metarun.evaluator import describe

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
USAGE = """usage: metarun train [overrides...]     meta-train (e.g. algo=<name> dataset=<name>; -m to sweep)
       metarun eval run_dir=<folder> [checkpoint=best|last|<path>] [eval.episodes=600 ...]"""


def _report(error: MetarunError) -> None:
    kind = "stopped" if isinstance(error, Preempted) else "error"
    print(f"metarun: {kind}: {error}", file=sys.stderr)
    sys.exit(error.exit_status)


def _train(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        if (run_dir / "results.json").is_file():
            print(f"metarun: {run_dir} already finished; skipping it.", file=sys.stderr)
            return json.loads((run_dir / "results.json").read_text())
        if not cfg.trainer.resume:
            cfg.trainer.resume = "auto"
    try:
        results = run.train(cfg, run_dir)
    except MetarunError as error:
        _report(error)
    print(f"test {describe(results)}")
    return results


def _eval(cfg: DictConfig) -> None:
    try:
        results = run.evaluate(cfg)
    except MetarunError as error:
        _report(error)
    print(json.dumps(results, indent=2))


COMMANDS = {"train": _train, "eval": _eval}


def _check_keys(command: str, overrides: list[str]) -> None:
    """Hydra rejects an unknown key without saying which keys exist; this names them."""
    if any(o.startswith("-") for o in overrides):  # --multirun, --cfg ...: Hydra's own checks
        return
    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
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
    print(f"metarun: error: {key} is not a setting. Settings {where}: {known}. Fix the spelling, "
          f"or prefix it with + (+{key}=...) to add a new key on purpose.", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    _check_keys(command, sys.argv[1:])
    if command == "eval" and not any(arg.startswith("run_dir=") for arg in sys.argv[1:]):
        print("metarun: error: metarun eval needs run_dir=<run folder written by metarun train>, "
              "e.g. metarun eval run_dir=outputs/2026-01-31/12-00-00.", file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = f"metarun {command}"
    app = hydra.main(config_path=CONFIG_DIR, config_name=command, version_base="1.3")(COMMANDS[command])
    app()

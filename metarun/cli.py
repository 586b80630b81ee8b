"""`metarun train|eval [overrides]`: picks the Hydra app, turns user mistakes into one paragraph."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from metarun import run
from metarun.errors import MetarunError, Preempted

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
USAGE = """usage: metarun train [overrides...]     meta-train (e.g. algo=maml dataset=omniglot; -m to sweep)
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
    metric = next(k for k in results if isinstance(results[k], dict) and "ci95" in results[k])
    print(f"test {metric}: {results[metric]['mean']:.4f} +- {results[metric]['ci95']:.4f} "
          f"({results['episodes']} episodes)")
    return results


def _eval(cfg: DictConfig) -> None:
    try:
        results = run.evaluate(cfg)
    except MetarunError as error:
        _report(error)
    print(json.dumps(results, indent=2))


COMMANDS = {"train": _train, "eval": _eval}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    if command == "eval" and not any(arg.startswith("run_dir=") for arg in sys.argv[1:]):
        print("metarun: error: metarun eval needs run_dir=<run folder written by metarun train>, "
              "e.g. metarun eval run_dir=outputs/2026-01-31/12-00-00.", file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = f"metarun {command}"
    app = hydra.main(config_path=CONFIG_DIR, config_name=command, version_base="1.3")(COMMANDS[command])
    app()

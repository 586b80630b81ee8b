"""Optional metric loggers beside metrics.jsonl (always written): `logger=tensorboard|wandb|mlflow`.

Each takes the rows the trainer writes to metrics.jsonl ({"iteration": i, name: value, ...})
and imports its library only when chosen, so none is a dependency of metarun.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from omegaconf import OmegaConf

from metarun.errors import ConfigError


def _require(module: str, logger: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"logger={logger} needs the {package} package, which is not installed. Install it "
            f"(pip install {package}), or drop the logger setting: metrics.jsonl is always "
            "written."
        ) from None


def _scalars(row: dict) -> dict[str, float]:
    return {
        key: value
        for key, value in row.items()
        if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class TensorBoardLogger:
    """Event files in <run folder>/<subdir>; view with `tensorboard --logdir outputs`."""

    def __init__(
        self, run_dir: Path, config: dict, resumed_at: int, subdir: str = "tensorboard"
    ) -> None:
        tensorboard = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        # purge_step hides events a killed run logged after the checkpoint it resumes from.
        self.writer = tensorboard.SummaryWriter(
            str(Path(run_dir) / subdir), purge_step=resumed_at + 1
        )
        if not resumed_at:
            self.writer.add_text("config", f"```\n{OmegaConf.to_yaml(config)}\n```")

    def log(self, row: dict) -> None:
        for name, value in _scalars(row).items():
            self.writer.add_scalar(name, value, row["iteration"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run named after the run folder (mode=offline syncs later)."""

    def __init__(
        self,
        run_dir: Path,
        config: dict,
        resumed_at: int,
        project: str,
        entity: str | None = None,
        mode: str = "online",
    ) -> None:
        wandb = _require("wandb", "wandb", "wandb")
        self.run = wandb.init(
            project=project,
            entity=entity,
            mode=mode,
            dir=str(run_dir),
            name=Path(run_dir).name,
            config=config,
        )

    def log(self, row: dict) -> None:
        self.run.log(_scalars(row), step=row["iteration"])

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    """An MLflow run in `experiment_name` at `tracking_uri` (null: MLflow's default, ./mlruns)."""

    def __init__(
        self,
        run_dir: Path,
        config: dict,
        resumed_at: int,
        experiment_name: str,
        tracking_uri: str | None = None,
    ) -> None:
        self.mlflow = _require("mlflow", "mlflow", "mlflow")
        if tracking_uri:
            self.mlflow.set_tracking_uri(tracking_uri)
        self.mlflow.set_experiment(experiment_name)
        self.mlflow.start_run(run_name=Path(run_dir).name)
        self.mlflow.log_dict(config, "config.json")

    def log(self, row: dict) -> None:
        self.mlflow.log_metrics(_scalars(row), step=row["iteration"])

    def close(self) -> None:
        self.mlflow.end_run()

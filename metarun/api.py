"""`metarun.load(run_dir_or_checkpoint)`: a trained model to adapt on your own tasks."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from metarun.algorithms.base import Algorithm
from metarun.build import build, build_algorithm
from metarun.checkpoint import checkpoint_file, load_checkpoint, restore_model
from metarun.errors import ConfigError
from metarun.old_runs import upgrade_old_config


class Learner:
    """A model adapted to one task."""

    def __init__(self, predictor) -> None:
        self._predictor = predictor

    @torch.no_grad()
    def predict(self, query_x: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or predictions (regression) for a batch of queries."""
        return self._predictor(query_x)


class MetaModel:
    """A meta-trained algorithm with its dataset's preprocessing."""

    def __init__(self, algo: Algorithm, dataset, config) -> None:
        self.algo, self.dataset, self.config = algo.eval(), dataset, config

    def preprocess(self, raw) -> torch.Tensor:
        """The dataset's native item (e.g. a PIL image of an Omniglot PNG) -> a model input."""
        return self.dataset.preprocess(raw)

    def adapt(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None
    ) -> Learner:
        """Fits one task from its support set (labels 0..ways-1, or float targets)."""
        if self.algo.capabilities.learns_from == "environments":
            raise ConfigError(
                f"{type(self.algo).__name__} adapts by collecting trajectories in an "
                "environment, not from a support set. Use "
                "model.algo.adapt_policies(model.algo.params(), tasks, steps) with tasks from "
                "model.dataset.sampler(...), or `metarun eval`."
            )
        ways = 1 if support_y.dtype.is_floating_point else int(support_y.max()) + 1
        with torch.no_grad():
            predictor = self.algo.adapt(self.algo.params(), support_x, support_y, ways, steps)
        return Learner(predictor)


def load(path: str | Path) -> MetaModel:
    """Loads a run folder (its best checkpoint) or a checkpoint file, on the CPU."""
    path = checkpoint_file(Path(path))
    state = load_checkpoint(path)
    config = upgrade_old_config(OmegaConf.create(state["config"]))
    dataset = build("dataset", config.dataset)
    algo = build_algorithm(config, dataset)
    restore_model(algo, state, path)
    return MetaModel(algo, dataset, config)

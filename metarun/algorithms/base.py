"""The one small contract every algorithm implements.

An algorithm is an nn.Module whose parameters are everything meta-learned. Its
`adapt` fits one task functionally (parameters in, predictor out) and is the only
home of adaptation code: training, validation, testing and `metarun.load` all call
it. `task_loss` (adapt, then score the queries) is written for a single task so the
engine can either loop over tasks or vmap it over the task dimension.

Algorithms of environment tasks (metarun.data.environments; MAML-RL; `Capabilities.learns_from`
"environments") collect their own data: their `adapt_policies(params, tasks, steps)` (not
`adapt`) collects support trajectories and returns each task's adapted policy weights,
`objective(tasks)` returns the meta-batch's surrogate-and-KL objective
(the engine backpropagates it and hands it to the optimiser's step), and
`returns_after(tasks, steps)` the return per task after 0..steps adaptation steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from metarun import batchnorm
from metarun.algorithms.functional import Params
from metarun.attacks import Attack, nll_of
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score

Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Capabilities:
    """What an algorithm can learn from and how it may be run: declared once per class
    (`capabilities = Capabilities(...)`), read when a run is built and planned."""

    # episodes | labelled_batches (an ordinary classifier of every training class: episodes with
    # an empty support set, `out_features` the training class count) | environments (it
    # collects its own trajectories: `objective(tasks)` forms the meta-objective).
    learns_from: str = "episodes"
    # Reads an episode as a sequence, so it can also learn the online protocol
    # (task.protocol=online; metarun.algorithms.sequence).
    reads_sequences: bool = False
    # A regressor with a predictive distribution of its own (overrides `gaussian`), so the test
    # reports its NLL without eval.noise_std.
    predicts_distribution: bool = False
    # Its meta-training is defined by its attack (ADML), so task.attack must name one.
    needs_train_attack: bool = False
    # Its compiled meta-gradient is tested against the plain one, so compile=auto may compile it
    # on long runs (metarun.compiling.resolve_compile).
    compiles: bool = False

    def __post_init__(self) -> None:
        if self.learns_from not in LEARNS_FROM:
            raise ValueError(f"learns_from={self.learns_from!r} is not one of {LEARNS_FROM}")


LEARNS_FROM = ("episodes", "labelled_batches", "environments")


class Algorithm(nn.Module):
    """Subclasses set `self.model` and implement `adapt`; most need nothing else."""

    model: nn.Module
    capabilities: ClassVar[Capabilities] = Capabilities()
    bn: str = (
        "transductive"  # the `bn` setting (metarun.batchnorm.MODES), applied by batchnorm.use_mode
    )
    # task.attack (metarun.attacks), set by build_algorithm: meta-train on adversarial examples.
    train_attack: Attack | None = None
    # The setting (e.g. "algo.inner_state=carried") under which a task's adaptation starts from
    # state the previous task left, so that a meta-batch runs task after task, in one process,
    # uncompiled (metarun.engine.sequential_error); None: tasks are independent.
    sequential_setting: str | None = None

    @classmethod
    def applies_train_attack(cls) -> bool:
        """Whether task.attack reaches the meta-training loss: the shared `task_loss` perturbs
        the queries; an algorithm with its own loss applies it only if it needs one."""
        return cls.task_loss is Algorithm.task_loss or cls.capabilities.needs_train_attack

    def set_progress(self, iteration: int) -> None:
        """Told the meta-training iteration before each meta-batch; for schedules inside an
        algorithm (MAML++'s loss weights and derivative order). Most ignore it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def params(self) -> Params:
        """The meta-parameters as a dict, the form every functional method takes."""
        return dict(self.named_parameters())

    def run(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The model evaluated with the given parameters instead of its own."""
        return functional_call(self, params, (x,))

    def on_queries(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        support_x: torch.Tensor,
        query_x: torch.Tensor,
    ) -> torch.Tensor:
        """network(query_x), with BatchNorm statistics as the `bn` setting says."""
        return batchnorm.normalise_queries(self.bn, network, support_x, query_x)

    def predictor(self, weights: Params, support_x: torch.Tensor) -> Predictor:
        """Queries -> predictions of the network with adapted `weights`, under the `bn` setting."""
        return lambda query_x: self.on_queries(lambda x: self.run(weights, x), support_x, query_x)

    def check_classification(self, support_y: torch.Tensor) -> None:
        """For algorithms that only classify (metric-based ones)."""
        if support_y.dtype.is_floating_point:
            raise ConfigError(
                f"{type(self).__name__} classifies; it cannot fit a regression dataset. "
                "Use a classification dataset such as dataset=omniglot."
            )

    def check_ways(self, support_y: torch.Tensor, ways: int) -> None:
        """For algorithms with a fixed-size classifier head (`self.out_features` classes)."""
        if not support_y.dtype.is_floating_point and ways != self.out_features:
            raise ConfigError(
                f"This {type(self).__name__} model has a {self.out_features}-way head but was "
                f"given {ways}-way tasks. Keep task.train_ways and eval.ways equal to task.ways "
                f"for it."
            )

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        """Fits one task; returns a function from query inputs to predictions (logits)."""
        raise NotImplementedError

    def probabilities(self, predictions: torch.Tensor) -> torch.Tensor:
        """The predictive distribution over classes that a predictor's outputs [Q, ways] stand
        for, which calibration is measured on; a softmax unless the outputs are not logits."""
        return torch.softmax(predictions, dim=-1)

    def gaussian(self, predictions: torch.Tensor) -> torch.Tensor:
        """A regressor's predictive distribution at each query as [Q, 2]: (mean, standard
        deviation); a point predictor's deviation is 0 (its outputs [Q, 1] are the means)."""
        return torch.cat([predictions, torch.zeros_like(predictions)], dim=-1)

    def task_loss(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(outer loss, score) of one task; override only if the outer loss is not on queries.
        With `train_attack`, meta-training scores adversarial queries, each perturbed against
        the adapted predictor (adversarial querying, Goldblum et al. 2020)."""
        predict = self.adapt(params, support_x, support_y, ways, steps)
        if self.train_attack is not None and self.training:
            query_x = self.train_attack.perturb(nll_of(self, predict, query_y), query_x)
        return task_loss_and_score(predict(query_x), query_y)

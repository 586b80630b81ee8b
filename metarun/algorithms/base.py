"""The one small contract every algorithm implements.

An algorithm is an nn.Module whose parameters are everything meta-learned. Its
`adapt` fits one task functionally (parameters in, predictor out) and is the only
home of adaptation code: training, validation, testing and `metarun.load` all call
it. `task_loss` (adapt, then score the queries) is written for a single task so the
engine can either loop over tasks or vmap it over the task dimension.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from metarun.backbones.task_batchnorm import TaskBatchNorm2d, batchnorm_statistics_from
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score

Params = dict[str, torch.Tensor]
Predictor = Callable[[torch.Tensor], torch.Tensor]

BATCHNORM_MODES = {
    "transductive": "queries are normalised as one batch with their own statistics",
    "support": "queries are normalised with the support set's statistics",
    "support_plus_one": "each query is normalised with the statistics of the support set plus itself",
    "running": "batch statistics in meta-training; at test, running statistics from meta-training",
}


def params_under(params: Params, prefix: str) -> Params:
    """The entries of one submodule (`prefix` = its name plus "."), named as inside it."""
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean embedding of each class 0..ways-1: [ways, D] (ProtoNet's prototypes)."""
    member = torch.nn.functional.one_hot(labels, ways).to(embeddings.dtype)  # [N, ways]
    return member.T @ embeddings / member.sum(0).unsqueeze(-1)


class Algorithm(nn.Module):
    """Subclasses set `self.model` and implement `adapt`; most need nothing else."""

    model: nn.Module
    bn: str = "transductive"  # one of BATCHNORM_MODES; set from the `bn` setting by use_batchnorm
    batchnorm_steps: int = 1  # how many sets of running statistics `bn=running` keeps (one per inner step)
    # False: meta-trained as an ordinary classifier of every training class, on labelled batches
    # (episodes with an empty support set; `out_features` is then the training class count).
    episodic: bool = True

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

    def use_batchnorm(self, mode: str) -> None:
        """Sets the `bn` mode; `running` makes every TaskBatchNorm2d keep running statistics."""
        self.bn = mode
        for module in self.modules():
            if isinstance(module, TaskBatchNorm2d):
                module.use_running_statistics(mode == "running", self.batchnorm_steps)

    def check_classification(self, support_y: torch.Tensor) -> None:
        """For algorithms that only classify (metric-based ones)."""
        if support_y.dtype.is_floating_point:
            raise ConfigError(f"{type(self).__name__} classifies; it cannot fit a regression dataset. "
                              "Use a classification dataset such as dataset=omniglot.")

    def check_ways(self, support_y: torch.Tensor, ways: int) -> None:
        """For algorithms with a fixed-size classifier head (`self.out_features` classes)."""
        if not support_y.dtype.is_floating_point and ways != self.out_features:
            raise ConfigError(f"This {type(self).__name__} model has a {self.out_features}-way head but was "
                              f"given {ways}-way tasks. Keep task.train_ways and eval.ways equal to task.ways for it.")

    def on_queries(self, network: Callable[[torch.Tensor], torch.Tensor], support_x: torch.Tensor,
                   query_x: torch.Tensor) -> torch.Tensor:
        """network(query_x) with BatchNorm statistics taken as the `bn` mode says (in eval mode,
        `running` uses the running statistics; in training it is transductive, as torch's BatchNorm)."""
        if self.bn in ("transductive", "running"):
            return network(query_x)
        if self.bn == "support":
            with batchnorm_statistics_from(support_x.shape[0]):
                return network(torch.cat([support_x, query_x]))[support_x.shape[0]:]
        with batchnorm_statistics_from(support_x.shape[0] + 1):
            return vmap(lambda query: network(torch.cat([support_x, query.unsqueeze(0)]))[-1])(query_x)

    def adapt(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, ways: int,
              steps: int | None = None) -> Predictor:
        """Fits one task; returns a function from query inputs to predictions (logits)."""
        raise NotImplementedError

    def task_loss(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                  query_x: torch.Tensor, query_y: torch.Tensor, ways: int,
                  steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(outer loss, score) of one task; override only if the outer loss is not on queries."""
        predict = self.adapt(params, support_x, support_y, ways, steps)
        return task_loss_and_score(predict(query_x), query_y)


def loss_with_gradient(value: torch.Tensor, params: Params, gradient: Params) -> torch.Tensor:
    """A scalar equal to `value` whose gradient with respect to `params` is `gradient`.

    How an algorithm whose meta-update is not the gradient of its loss (Reptile, iMAML)
    hands that update to the engine, which only ever backpropagates task losses.
    """
    return value.detach() + sum(((params[name] - params[name].detach()) * g.detach()).sum()
                                for name, g in gradient.items())

"""MAML (Finn, Abbeel, Levine 2017, arXiv:1703.03400): learn an initialisation from which a
few gradient steps on a task's support set fit that task. `first_order=true` drops the
second-order term of the meta-gradient (first-order MAML, same paper).
"""

from __future__ import annotations

import torch
from torch import nn

from metarun.algorithms.base import Algorithm, Capabilities, Predictor
from metarun.algorithms.functional import Params, inner_gradient, sgd_step
from metarun.backbones import Backbone
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score


class MAML(Algorithm):
    capabilities = Capabilities(compiles=True)  # with ANIL and Meta-SGD (tests/test_maml.py)

    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        first_order: bool = False,
    ) -> None:
        super().__init__()
        if inner_lr <= 0 or inner_steps < 0:
            raise ConfigError(
                f"algo.inner_lr must be > 0 and algo.inner_steps >= 0 "
                f"(got {inner_lr} and {inner_steps})."
            )
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, out_features))
        self.out_features = out_features
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order

    def run_at_step(self, fast: Params, x: torch.Tensor, step: int) -> torch.Tensor:
        """The network during inner step `step`; MAML++ gives each step its own BatchNorm."""
        return self.run(fast, x)

    def support_loss(
        self, fast: Params, x: torch.Tensor, y: torch.Tensor, step: int
    ) -> torch.Tensor:
        return task_loss_and_score(self.run_at_step(fast, x, step), y)[0]

    def inner_update(self, params: Params, fast: Params, grads: Params, step: int) -> Params:
        """One inner SGD step of the network's weights; Meta-SGD and MAML++ learn the rates."""
        return sgd_step(fast, grads, self.inner_lr)

    def uses_first_order(self) -> bool:
        """First-order meta-gradients in training only: evaluation differentiates through the
        exact adaptation (an attack on the support set follows it); predictions are the same."""
        return self.first_order and self.training

    def inner_loop(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> list[Params]:
        """The network's weights before and after each inner step: [steps + 1] dicts."""
        self.check_ways(support_y, ways)
        weights = [{name: value for name, value in params.items() if name.startswith("model.")}]
        for step in range(self.inner_steps if steps is None else steps):
            grads = inner_gradient(
                self.support_loss,
                weights[-1],
                support_x,
                support_y,
                step,
                first_order=self.uses_first_order(),
            )
            weights.append(self.inner_update(params, weights[-1], grads, step))
        return weights

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        weights = self.inner_loop(params, support_x, support_y, ways, steps)
        last = max(len(weights) - 2, 0)
        return lambda query_x: self.on_queries(
            lambda x: self.run_at_step(weights[-1], x, last), support_x, query_x
        )

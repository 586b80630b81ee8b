"""MAML++ (Antoniou, Edwards, Storkey 2019, arXiv:1810.09502, "How to train your MAML"):
MAML with fixes for its instability, each a switch here (all off is MAML exactly):

- multi_step_loss: the outer loss weighs the query loss after every inner step; the
  weights move linearly towards the last step over `msl_epochs` epochs, after which only
  the last step counts.
- first_order_epochs (derivative-order annealing): first-order meta-gradients for the
  first epochs, second order after; 0 turns it off.
- learned_step_sizes: a learned inner learning rate per weight tensor and per step.
- per_step_bn_weights: BatchNorm scale and shift per inner step.
- per_step_bn_statistics: with `bn=running`, BatchNorm running statistics per inner step,
  used at test time (no effect in the modes that keep no running statistics).
- cosine annealing of the outer learning rate is the preset's scheduler
  (torch.optim.lr_scheduler.CosineAnnealingLR), not code here.
An epoch is `iterations_per_epoch` meta-iterations (500 in the paper's code).
"""

from __future__ import annotations

import torch
from torch import nn

from metarun import batchnorm
from metarun.algorithms.base import Capabilities
from metarun.algorithms.functional import Params, sgd_step
from metarun.algorithms.maml import MAML
from metarun.backbones import Backbone
from metarun.metrics import task_loss_and_score


class MAMLPlusPlus(MAML):
    # not tested compiled (loss weights, derivative order change as it trains)
    capabilities = Capabilities()

    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        first_order: bool = False,
        multi_step_loss: bool = False,
        msl_epochs: int = 10,
        first_order_epochs: int = 0,
        learned_step_sizes: bool = False,
        per_step_bn_weights: bool = False,
        per_step_bn_statistics: bool = False,
        iterations_per_epoch: int = 500,
    ) -> None:
        super().__init__(
            backbone,
            out_features,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=first_order,
        )
        self.multi_step_loss, self.msl_epochs = multi_step_loss, msl_epochs
        self.first_order_epochs, self.iterations_per_epoch = (
            first_order_epochs,
            iterations_per_epoch,
        )
        self.epoch, steps = 0, max(inner_steps, 1)
        names = [name for name, _ in self.model.named_parameters()]
        self.step_sizes = None
        if learned_step_sizes:
            rates = (nn.Parameter(torch.full((steps,), float(inner_lr))) for _ in names)
            self.step_sizes = nn.ParameterList(rates)
        self.step_size_of = {
            f"model.{name}": f"step_sizes.{index}" for index, name in enumerate(names)
        }
        for module in self.model.modules():
            if isinstance(module, batchnorm.TaskBatchNorm2d):
                module.per_step(
                    steps, weights=per_step_bn_weights, statistics=per_step_bn_statistics
                )

    def set_progress(self, iteration: int) -> None:
        self.epoch = iteration // self.iterations_per_epoch

    def uses_first_order(self) -> bool:
        return (self.first_order or self.epoch < self.first_order_epochs) and self.training

    def run_at_step(self, fast: Params, x: torch.Tensor, step: int) -> torch.Tensor:
        with batchnorm.at_step(step):
            return self.run(fast, x)

    def inner_update(self, params: Params, fast: Params, grads: Params, step: int) -> Params:
        if self.step_sizes is None:
            return super().inner_update(params, fast, grads, step)
        index = min(step, self.inner_steps - 1)
        return sgd_step(
            fast, grads, {name: params[self.step_size_of[name]][index] for name in fast}
        )

    def step_weights(self, steps: int) -> list[float]:
        """Weights of the query losses after steps 1..steps: uniform at first, all on the last
        step after msl_epochs; the others never fall below 0.03/steps while annealing."""
        if not self.multi_step_loss or self.epoch >= self.msl_epochs or steps < 2:
            return [0.0] * (steps - 1) + [1.0]
        floor, start = 0.03 / steps, 1.0 / steps
        shift = self.epoch / self.msl_epochs * start
        others = [max(start - shift, floor)] * (steps - 1)
        return others + [1.0 - sum(others)]

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
        weights = self.inner_loop(params, support_x, support_y, ways, steps)
        if len(weights) == 1:
            return task_loss_and_score(
                self.on_queries(lambda x: self.run_at_step(weights[0], x, 0), support_x, query_x),
                query_y,
            )
        total, score = query_x.new_zeros(()), None
        for step, (fast, weight) in enumerate(
            zip(weights[1:], self.step_weights(len(weights) - 1))
        ):
            if weight == 0.0:
                continue
            predictions = self.on_queries(
                lambda x: self.run_at_step(fast, x, step), support_x, query_x
            )
            loss, score = task_loss_and_score(predictions, query_y)
            total = total + weight * loss
        assert score is not None  # the last step's weight is never 0 (step_weights)
        return total, score

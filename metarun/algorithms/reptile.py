"""Reptile (Nichol, Achiam, Schulman 2018, arXiv:1803.02999): train on each task for k
steps from the shared initialisation, then move the initialisation towards the mean of
the adapted weights, theta <- theta + eps * (mean(phi) - theta). No second-order terms.

The outer step is the outer optimiser's: Reptile hands the engine theta - phi as the
meta-gradient, so SGD with lr = eps (linearly annealed by the preset's scheduler) is the
paper's update. The inner loop is Adam (beta1 = 0, as in the paper) or SGD on mini-batches
cycled through the support set in class-interleaved order; it is written functionally,
and its Adam state starts afresh for every task, so tasks can be looped or vmapped.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, loss_with_gradient
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score


class Reptile(Algorithm):
    def __init__(
        self,
        backbone: nn.Module,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        inner_batch: int,
        inner_optimizer: str = "adam",
        adam_betas: tuple[float, float] = (0.0, 0.999),
    ) -> None:
        super().__init__()
        if inner_optimizer not in ("adam", "sgd"):
            raise ConfigError(
                f"algo.inner_optimizer={inner_optimizer!r} is not known. Use adam or sgd."
            )
        if inner_lr <= 0 or inner_steps < 0 or inner_batch < 1:
            raise ConfigError(
                f"algo.inner_lr must be > 0, algo.inner_steps >= 0 and algo.inner_batch >= 1 "
                f"(got {inner_lr}, {inner_steps} and {inner_batch})."
            )
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, out_features))
        self.out_features = out_features
        self.inner_lr, self.inner_steps, self.inner_batch = inner_lr, inner_steps, inner_batch
        self.inner_optimizer, self.adam_betas = inner_optimizer, tuple(adam_betas)

    def _mini_batches(self, support_y: torch.Tensor, ways: int) -> torch.Tensor:
        """The order the support set is cycled through: one example of each class in turn."""
        count = support_y.shape[0]
        if support_y.dtype.is_floating_point or count % ways:
            return torch.arange(count, device=support_y.device)
        return torch.arange(count, device=support_y.device).view(ways, count // ways).T.flatten()

    def fit(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Params:
        """The task's adapted weights phi (no graph back to params)."""
        self.check_ways(support_y, ways)
        fast = {name: value.detach() for name, value in params.items()}
        order, count = self._mini_batches(support_y, ways), support_y.shape[0]
        size = min(self.inner_batch, count)
        loss = lambda weights, x, y: task_loss_and_score(self.run(weights, x), y)[0]
        first, second = ({name: torch.zeros_like(v) for name, v in fast.items()} for _ in range(2))
        beta1, beta2 = self.adam_betas
        for step in range(self.inner_steps if steps is None else steps):
            chosen = order[(step * size + torch.arange(size, device=order.device)) % count]
            grads = grad(loss)(fast, support_x[chosen], support_y[chosen])
            if self.inner_optimizer == "sgd":
                fast = {name: fast[name] - self.inner_lr * grads[name] for name in fast}
                continue
            first = {name: beta1 * first[name] + (1 - beta1) * grads[name] for name in fast}
            second = {name: beta2 * second[name] + (1 - beta2) * grads[name] ** 2 for name in fast}
            correction1, correction2 = 1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1)
            fast = {
                name: fast[name]
                - self.inner_lr
                * (first[name] / correction1)
                / (_root(second[name] / correction2) + 1e-8)
                for name in fast
            }
        return fast

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        return self.predictor(self.fit(params, support_x, support_y, ways, steps), support_x)

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
        """Query loss and score of phi, carrying theta - phi as the meta-gradient."""
        fast = self.fit(params, support_x, support_y, ways, steps)
        loss, score = task_loss_and_score(self.predictor(fast, support_x)(query_x), query_y)
        return loss_with_gradient(
            loss, params, {name: params[name] - fast[name] for name in fast}
        ), score


def _root(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) whose derivative at 0 is 0 rather than infinite, so that differentiating through
    the inner Adam steps (an attack on the support set does) stays finite where a weight's
    gradient is 0."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)

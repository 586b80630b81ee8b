"""Reptile (Nichol, Achiam, Schulman 2018, arXiv:1803.02999; code: openai/supervised-reptile):
train on each task for k steps from the shared initialisation, then move the initialisation
towards the mean of the adapted weights, theta <- theta + eps * (mean(phi) - theta). No
second-order terms.

The outer step is the outer optimiser's: Reptile hands the engine theta - phi as the
meta-gradient, so SGD with lr = eps (linearly annealed by the preset's scheduler) is the
paper's update. The inner loop is Adam (beta1 = 0, as in the paper) or SGD on mini-batches
cycled through the support set in class-interleaved order, written functionally.

The inner Adam's state (`inner_state`):
- carried (default): as the released code, where one TensorFlow AdamOptimizer trains every
  task and only the trainable variables are reset between tasks, so its moments and step count
  run on from task to task and meta-batch to meta-batch (and are saved with the checkpoint).
  Evaluation starts each test task from that state and leaves it unchanged, as the released
  `evaluate` restores every variable afterwards. Tasks then run one after another.
- fresh: a new Adam per task, as the paper's text reads; tasks can be vmapped or split between
  processes.
Deviation: the released code's Adam is TensorFlow's, which adds epsilon (1e-8) to the root of
the uncorrected second moment; here it is added to the bias-corrected one. They differ by less
than epsilon's share of a step, and not at all once the carried step count makes the correction
1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, loss_with_gradient
from metarun.backbones import Backbone
from metarun.errors import ConfigError
from metarun.metrics import task_loss_and_score


class Reptile(Algorithm):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        inner_batch: int,
        inner_optimizer: str = "adam",
        adam_betas: tuple[float, float] = (0.0, 0.999),
        inner_state: str = "carried",
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
        if inner_state not in ("carried", "fresh"):
            raise ConfigError(
                f"algo.inner_state={inner_state!r} is not known. Use carried (the released code's "
                "inner Adam, running on across tasks) or fresh (a new inner Adam per task)."
            )
        self.carries_state = inner_state == "carried" and inner_optimizer == "adam"
        if self.carries_state:
            self.sequential_setting = "algo.inner_state=carried"
            size = sum(p.numel() for p in self.model.parameters())
            self.adam_first: torch.Tensor
            self.adam_second: torch.Tensor
            self.adam_steps: torch.Tensor
            self.register_buffer("adam_first", torch.zeros(size))
            self.register_buffer("adam_second", torch.zeros(size))
            self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))

    def _adam_start(self, fast: Params) -> tuple[Params, Params, int]:
        """First and second moments and steps taken that a task's inner Adam starts from."""
        if not self.carries_state:
            zeros = lambda: {name: torch.zeros_like(value) for name, value in fast.items()}
            return zeros(), zeros(), 0
        unflatten = lambda flat: dict(zip(fast, _split_like(flat, fast.values()), strict=True))
        return unflatten(self.adam_first), unflatten(self.adam_second), int(self.adam_steps)

    @torch.no_grad()
    def _adam_keep(self, first: Params, second: Params, steps: int) -> None:
        """Carries a meta-training task's final inner Adam state on to the next task."""
        self.adam_first.copy_(torch.cat([v.detach().flatten() for v in first.values()]))
        self.adam_second.copy_(torch.cat([v.detach().flatten() for v in second.values()]))
        self.adam_steps.fill_(steps)

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
        first, second, done = self._adam_start(fast)
        beta1, beta2 = self.adam_betas
        steps = self.inner_steps if steps is None else steps
        for step in range(steps):
            chosen = order[(step * size + torch.arange(size, device=order.device)) % count]
            grads = grad(loss)(fast, support_x[chosen], support_y[chosen])
            if self.inner_optimizer == "sgd":
                fast = {name: fast[name] - self.inner_lr * grads[name] for name in fast}
                continue
            first = {name: beta1 * first[name] + (1 - beta1) * grads[name] for name in fast}
            second = {name: beta2 * second[name] + (1 - beta2) * grads[name] ** 2 for name in fast}
            correction1, correction2 = (
                1 - beta1 ** (done + step + 1),
                1 - beta2 ** (done + step + 1),
            )
            fast = {
                name: fast[name]
                - self.inner_lr
                * (first[name] / correction1)
                / (_root(second[name] / correction2) + 1e-8)
                for name in fast
            }
        if self.carries_state and self.training:
            self._adam_keep(first, second, done + steps)
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


def _split_like(flat: torch.Tensor, shapes_of) -> list[torch.Tensor]:
    """`flat` cut into tensors of the shapes of `shapes_of`'s tensors, in order."""
    sizes = [v.numel() for v in shapes_of]
    return [part.view(v.shape) for part, v in zip(flat.split(sizes), shapes_of, strict=True)]

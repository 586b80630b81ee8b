"""MAML for reinforcement learning (Finn, Abbeel, Levine 2017, arXiv:1703.03400, section 5.3):
a Gaussian policy whose initialisation adapts to a new task by vanilla policy-gradient steps
on trajectories it collects there. The meta-objective is the adapted policies' TRPO surrogate
on fresh trajectories, with the mean KL between the collecting and the candidate adapted
policies as the trust region (metarun.optimizers.trpo). `first_order=true` drops the
second-order terms; `inner_steps=0` at training is the paper's "pretrained" baseline: one
policy trained on all tasks, adapted at test with the same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from metarun.algorithms.base import Algorithm
from metarun.algorithms.functional import Params, inner_gradient, params_under, sgd_step
from metarun.algorithms.policy_gradient import (
    advantages,
    gaussian_kl,
    gaussian_log_prob,
    masked_mean,
)
from metarun.data.environments import EnvironmentTasks, Policy, Trajectories
from metarun.errors import ConfigError


@dataclass(frozen=True)
class Collected:
    """One round of trajectories per task with their (fixed) advantages."""

    trajectories: Trajectories
    advantages: torch.Tensor  # [tasks, n, horizon]


class MAMLRL(Algorithm):
    def __init__(
        self,
        backbone: nn.Module,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        later_inner_lr: float | None = None,
        first_order: bool = False,
        discount: float = 0.99,
        gae_lambda: float = 1.0,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        if inner_lr <= 0 or inner_steps < 0 or (later_inner_lr is not None and later_inner_lr <= 0):
            raise ConfigError(
                f"algo.inner_lr and algo.later_inner_lr must be > 0 and algo.inner_steps >= 0 "
                f"(got {inner_lr}, {later_inner_lr} and {inner_steps})."
            )
        if not (0 < discount <= 1 and 0 <= gae_lambda <= 1):
            raise ConfigError(
                f"algo.discount={discount} and algo.gae_lambda={gae_lambda} must lie in (0, 1] "
                "and [0, 1] (paper: 0.99 and 1.0)."
            )
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, out_features))
        self.log_std = nn.Parameter(torch.full((out_features,), float(init_log_std)))
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
        self.later_inner_lr = inner_lr if later_inner_lr is None else later_inner_lr
        self.discount, self.gae_lambda = discount, gae_lambda

    def distribution(self, weights: Params, observations: torch.Tensor):
        """(action mean, log std), both [..., act], of one task's policy with `weights`."""
        mean = functional_call(self.model, params_under(weights, "model."), (observations,))
        return mean, weights["log_std"].expand_as(mean)

    def policy(self, weights: Params) -> Policy:
        """The policies of a meta-batch: weights with a leading task dimension."""
        batched = vmap(self.distribution)
        return lambda observations: batched(weights, observations)

    def collect(
        self, tasks: EnvironmentTasks, weights: Params, trajectories: int, round: int
    ) -> Collected:
        rollouts = tasks.rollout(self.policy(_detached(weights)), trajectories, round)
        return Collected(rollouts, advantages(rollouts, self.discount, self.gae_lambda))

    def _pg_loss(self, weights: Params, observations, actions, advantage, alive) -> torch.Tensor:
        """Vanilla policy gradient loss of one task, -mean over live steps of log pi * A."""
        log_prob = gaussian_log_prob(*self.distribution(weights, observations), actions)
        return -masked_mean(log_prob * advantage, alive)

    def inner_step(self, weights: Params, collected: Collected, step: int) -> Params:
        """One policy-gradient step of every task at once (weights [tasks, ...])."""
        rate = self.inner_lr if step == 0 else self.later_inner_lr

        def one_task(w: Params, *data: torch.Tensor) -> Params:
            grads = inner_gradient(self._pg_loss, w, *data, first_order=self.first_order)
            return sgd_step(w, grads, rate)

        t = collected.trajectories
        return vmap(one_task)(weights, t.observations, t.actions, collected.advantages, t.alive)

    def adapt(
        self,
        params: Params,
        tasks: EnvironmentTasks,
        steps: int | None = None,
        supports: list[Collected] | None = None,
    ) -> tuple[Params, list[Collected]]:
        """Adapted weights of every task [tasks, ...] after `steps` inner steps, collecting each
        step's support trajectories with the current policy (or reusing `supports`); returns
        the weights and the supports. The adapted policy is `self.policy(weights)`."""
        weights = {k: v.expand(tasks.num_tasks, *v.shape) for k, v in params.items()}
        supports = list(supports or [])
        for step in range(self.inner_steps if steps is None else steps):
            if step == len(supports):
                supports.append(self.collect(tasks, weights, tasks.shots, round=step))
            weights = self.inner_step(weights, supports[step], step)
        return weights, supports

    def objective(self, tasks: EnvironmentTasks) -> MetaObjective:
        """Collects a meta-batch's supports and queries; the surrogate and KL for the update."""
        weights, supports = self.adapt(self.params(), tasks)
        queries = self.collect(tasks, weights, tasks.queries, round=len(supports))
        old = self.policy(_detached(weights))(queries.trajectories.observations)
        before = supports[0].trajectories.returns if supports else queries.trajectories.returns
        return MetaObjective(
            self, tasks, supports, queries, old, {"return_before": before.mean().item()}
        )

    @torch.no_grad()
    def returns_after(self, tasks: EnvironmentTasks, steps: int | None = None) -> torch.Tensor:
        """Mean return per task after 0, 1, ..., steps adaptation steps: [tasks, steps + 1]."""
        steps = self.inner_steps if steps is None else steps
        weights, supports = self.adapt(self.params(), tasks, steps)
        last = self.collect(tasks, weights, tasks.shots, round=steps)
        return torch.stack([c.trajectories.returns.mean(-1) for c in [*supports, last]], dim=1)


def _detached(weights: Params) -> Params:
    return {name: value.detach() for name, value in weights.items()}


class MetaObjective:
    """The TRPO surrogate and mean KL of a meta-batch as functions of the meta-parameters:
    re-adapts from the given weights on the same support trajectories. Also a torch closure."""

    def __init__(
        self,
        algo: MAMLRL,
        tasks: EnvironmentTasks,
        supports: list[Collected],
        queries: Collected,
        old: tuple[torch.Tensor, torch.Tensor],
        stats: dict,
    ) -> None:
        self.algo, self.tasks, self.supports, self.queries = algo, tasks, supports, queries
        self.old_mean, self.old_log_std = old
        self.score = queries.trajectories.returns.mean().item()
        self.stats = stats
        self.value: torch.Tensor | None = None  # the surrogate once backward() has run
        self.names = [name for name, _ in algo.named_parameters()]

    def _adapted(self, weights: Sequence[torch.Tensor] | None) -> Params:
        params = self.algo.params() if weights is None else dict(zip(self.names, weights))
        return self.algo.adapt(params, self.tasks, len(self.supports), self.supports)[0]

    def _surrogate_and_kl(self, adapted: Params) -> tuple[torch.Tensor, torch.Tensor]:
        t, old = self.queries.trajectories, (self.old_mean, self.old_log_std)
        mean, log_std = self.algo.policy(adapted)(t.observations)
        log_ratio = gaussian_log_prob(mean, log_std, t.actions) - gaussian_log_prob(*old, t.actions)
        surrogate = -masked_mean(log_ratio.exp() * self.queries.advantages, t.alive).mean()
        kl = masked_mean(gaussian_kl(*old, mean, log_std), t.alive).mean()
        return surrogate, kl

    def evaluate(self, weights: Sequence[torch.Tensor] | None = None):
        """(surrogate loss, mean KL) with the meta-parameters `weights` (in the order of
        algo.parameters(); None: the current ones)."""
        return self._surrogate_and_kl(self._adapted(weights))

    def fisher_product(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """v -> H v, H the Hessian of the mean KL at the current meta-parameters (flat vectors).

        With A the adaptation (meta-parameters -> adapted weights) and J its Jacobian, H = J^T F J
        exactly at this point, F the KL's Hessian in the adapted weights: the KL's gradient
        there is zero, so the term with A's second derivatives vanishes. Each product is then
        J v (forward), F (J v) (the policy only) and J^T (...) (backward) through one graph
        built here, never third derivatives of the inner loop."""
        params = list(self.algo.parameters())
        adapted = self._adapted(None)
        names = list(adapted)
        outputs = [adapted[name] for name in names]
        leaves = {name: value.detach().requires_grad_() for name, value in adapted.items()}
        kl_gradient = torch.autograd.grad(
            self._surrogate_and_kl(leaves)[1], list(leaves.values()), create_graph=True
        )
        probes = [torch.zeros_like(value, requires_grad=True) for value in outputs]
        transposed = torch.autograd.grad(outputs, params, probes, create_graph=True)  # J^T u

        def product(vector: torch.Tensor) -> torch.Tensor:
            pieces = list(vector.split([p.numel() for p in params]))
            tangent = [piece.view_as(p) for piece, p in zip(pieces, params)]
            forward = torch.autograd.grad(transposed, probes, tangent, retain_graph=True)  # J v
            curved = torch.autograd.grad(
                kl_gradient, list(leaves.values()), forward, retain_graph=True
            )
            back = torch.autograd.grad(outputs, params, curved, retain_graph=True)
            return torch.cat([b.reshape(-1) for b in back])

        return product

    def backward(self) -> torch.Tensor:
        """The surrogate at the current meta-parameters with its gradient accumulated into .grad;
        kept as `value`, the loss a trust-region step must improve on."""
        loss, _ = self.evaluate()
        loss.backward()
        self.value = loss.detach()
        return self.value

    def __call__(self) -> torch.Tensor:
        """The closure convention of torch optimisers: fresh gradients of the surrogate."""
        for p in self.algo.parameters():
            p.grad = None
        return self.backward()

"""MAML for reinforcement learning (Finn, Abbeel, Levine 2017, arXiv:1703.03400, section 5.3):
a Gaussian policy whose initialisation adapts to a new task by vanilla policy-gradient steps
on trajectories it collects there. The meta-objective is the adapted policies' TRPO surrogate
on fresh trajectories, with the mean KL between the collecting and the candidate adapted
policies as the trust region (metarun.optimizers.trpo). `first_order=true` drops the
second-order terms; `inner_steps=0` at training is the paper's "pretrained" baseline: one
policy trained on all tasks, adapted at test with the same steps.

`policy_init=xavier` (the default) initialises every layer of the policy as the authors'
`MAMLGaussianMLPPolicy` does (Xavier-uniform weights, zero biases); `torch` keeps torch's default
initialisation, with which the trained policies overshot at the released code's test steps
(2D navigation after 2 and 3 steps: -8.84 and -7.91 with torch's, -4.76 and -4.59 with
Xavier's, the authors' -3.33 and -3.23; docs/results.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from metarun.algorithms.base import Algorithm, Capabilities
from metarun.algorithms.functional import Params, inner_gradient, params_under, sgd_step
from metarun.algorithms.policy_gradient import (
    Collected,
    MetaObjective,
    advantages,
    gaussian_log_prob,
    masked_mean,
)
from metarun.backbones import Backbone
from metarun.data.environments import EnvironmentTasks, Policy
from metarun.errors import ConfigError


class MAMLRL(Algorithm):
    capabilities = Capabilities(learns_from="environments")

    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        inner_lr: float,
        inner_steps: int,
        later_inner_lr: float | None = None,
        first_order: bool = False,
        discount: float = 0.99,
        gae_lambda: float = 1.0,
        init_log_std: float = 0.0,
        policy_init: str = "xavier",
    ) -> None:
        super().__init__()
        if policy_init not in ("torch", "xavier"):
            raise ConfigError(
                f"algo.policy_init={policy_init!r} must be torch (torch's default) or xavier "
                "(Xavier-uniform weights and zero biases, as the authors' policy)."
            )
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
        if policy_init == "xavier":
            for layer in self.model.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
        self.later_inner_lr = inner_lr if later_inner_lr is None else later_inner_lr
        self.discount, self.gae_lambda = discount, gae_lambda

    def distribution(
        self, weights: Params, observations: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
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

    def adapt_policies(
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
        weights, supports = self.adapt_policies(self.params(), tasks)
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
        weights, supports = self.adapt_policies(self.params(), tasks, steps)
        last = self.collect(tasks, weights, tasks.shots, round=steps)
        return torch.stack([c.trajectories.returns.mean(-1) for c in [*supports, last]], dim=1)


def _detached(weights: Params) -> Params:
    return {name: value.detach() for name, value in weights.items()}

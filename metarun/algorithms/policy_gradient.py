"""Policy-gradient pieces meta-RL algorithms share: Gaussian policies, discounted returns, the
linear feature baseline and advantages, and the losses. Every function takes tensors with a
leading task dimension (or none) and masks steps after a trajectory ended with `alive`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from metarun.algorithms.functional import Params, gaussian_kl, gaussian_log_prob
from metarun.data.environments import EnvironmentTasks, Trajectories


def returns_to_go(rewards: torch.Tensor, alive: torch.Tensor, discount: float) -> torch.Tensor:
    """sum_{k>=t} discount^(k-t) r_k over the trajectory's live steps: [..., horizon]."""
    rewards = rewards * alive
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + discount * running
        out[..., t] = running
    return out


def baseline_features(observations: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Duan et al. (2016)'s linear-baseline features: observation, its square, time t/100 to
    the third power and a constant: [..., horizon, 2 * obs + 4]."""
    observations = observations.clamp(-10, 10)
    time = torch.arange(alive.shape[-1], device=alive.device, dtype=alive.dtype) / 100.0
    time = time.expand_as(alive).unsqueeze(-1)
    return torch.cat(
        [observations, observations.pow(2), time, time.pow(2), time.pow(3), torch.ones_like(time)],
        dim=-1,
    ) * alive.unsqueeze(-1)


def fit_linear_baseline(
    trajectories: Trajectories, targets: torch.Tensor, regularisation: float = 1e-5
) -> torch.Tensor:
    """Per task, the ridge least-squares fit of `targets` [tasks, n, horizon] on the features of
    its live steps; returns the fitted values [tasks, n, horizon] (0 on dead steps)."""
    features = baseline_features(trajectories.observations, trajectories.alive)
    tasks, size = features.shape[0], features.shape[-1]
    x = features.reshape(tasks, -1, size).double()
    y = (targets * trajectories.alive).reshape(tasks, -1, 1).double()
    gram, moment = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(size, dtype=x.dtype, device=x.device)
    for _ in range(5):  # raise the ridge until the system is well conditioned, as Duan et al.
        coefficients, info = torch.linalg.solve_ex(gram + regularisation * eye, moment)
        if not info.any() and coefficients.isfinite().all():
            break
        regularisation *= 10
    return (x @ coefficients).reshape(targets.shape).to(targets.dtype)


def advantages(
    trajectories: Trajectories, discount: float, gae_lambda: float, normalise: bool = True
) -> torch.Tensor:
    """Generalised advantage estimates with the linear baseline as value function (lambda = 1:
    returns-to-go minus the baseline), normalised per task over live steps: [..., horizon]."""
    alive = trajectories.alive
    values = fit_linear_baseline(trajectories, returns_to_go(trajectories.rewards, alive, discount))
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (trajectories.rewards + discount * next_values * _alive_next(alive) - values) * alive
    result = returns_to_go(deltas, alive, discount * gae_lambda)
    if not normalise:
        return result
    count = alive.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
    mean = result.sum(dim=(-2, -1), keepdim=True) / count
    variance = ((result - mean).pow(2) * alive).sum(dim=(-2, -1), keepdim=True) / count
    return (result - mean) / (variance.sqrt() + 1e-8) * alive


def _alive_next(alive: torch.Tensor) -> torch.Tensor:
    return torch.cat([alive[..., 1:], torch.zeros_like(alive[..., :1])], dim=-1)


def masked_mean(values: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Mean over one task's live steps (the last two dimensions)."""
    return (values * alive).sum(dim=(-2, -1)) / alive.sum(dim=(-2, -1)).clamp_min(1)


@dataclass(frozen=True)
class Collected:
    """One round of trajectories per task with their (fixed) advantages."""

    trajectories: Trajectories
    advantages: torch.Tensor  # [tasks, n, horizon]


class MetaObjective:
    """The TRPO surrogate and mean KL of a meta-batch as functions of the meta-parameters:
    re-adapts from the given weights on the same support trajectories (`algo.adapt_policies(params,
    tasks, steps, supports)`, `algo.policy(weights)`, as MAML-RL has them). Also a torch
    closure."""

    def __init__(
        self,
        algo,
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
        return self.algo.adapt_policies(params, self.tasks, len(self.supports), self.supports)[0]

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
        outputs = list(adapted.values())
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


class CollectingAlgorithm(Protocol):
    """The contract of an algorithm of environment tasks (`Capabilities.learns_from`
    "environments"), which collects its own trajectories in place of `adapt`'s support set."""

    def params(self) -> Params: ...

    def adapt_policies(
        self,
        params: Params,
        tasks: EnvironmentTasks,
        steps: int | None = None,
        supports: list[Collected] | None = None,
    ) -> tuple[Params, list[Collected]]: ...

    def collect(
        self, tasks: EnvironmentTasks, weights: Params, trajectories: int, round: int
    ) -> Collected: ...

    def objective(self, tasks: EnvironmentTasks) -> MetaObjective: ...

    def returns_after(self, tasks: EnvironmentTasks, steps: int | None = None) -> torch.Tensor: ...

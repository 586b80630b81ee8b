"""Bayesian MAML (Yoon, Kim, Dia, Kim, Bengio, Ahn 2018, arXiv:1806.03836): M particles, each a
full set of network weights with its own prior precision lambda (and, for regression, its own
noise precision gamma), meta-learned as the initial particles. A task moves them by Stein
variational gradient descent (SVGD) on the support set's log posterior. Meta-trained with the
chaser loss: after `inner_steps` SVGD steps on the support set (the chaser), `leader_steps` more
on support and queries together (the leader, held fixed); the loss is the squared distance of
the chaser's weights from the leader's, summed over particles.

The predictive distribution is the particle ensemble: class probabilities averaged; for
regression the particles' Gaussians N(f_m(x), 1/gamma_m) summarised by one Gaussian of the same
mean and variance. As in the authors' code: Gamma hyper-priors on both precisions, which are
parameterised by their logarithms; the RBF kernel exp(-||a - b||^2 / h) over all coordinates of
a particle with h = median squared distance / log M, not differentiated. Not as in their code:
the kernel's gradient is exact (theirs lacks a factor 2).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from metarun.algorithms.base import Algorithm, Capabilities, Predictor
from metarun.algorithms.functional import Params
from metarun.backbones import Backbone
from metarun.errors import ConfigError


def svgd_direction(particles: torch.Tensor, log_posterior_grads: torch.Tensor) -> torch.Tensor:
    """Stein variational direction for particles [M, P] with gradients of the log posterior
    [M, P]: phi(a_i) = 1/M sum_j [k(a_j, a_i) grad log p(a_j) + grad_{a_j} k(a_j, a_i)]."""
    count = particles.shape[0]
    differences = particles.unsqueeze(1) - particles.unsqueeze(0)  # [i, j, P]: a_i - a_j
    squared = differences.square().sum(-1)
    if count > 1:
        bandwidth = (squared.detach().median() / math.log(count)).clamp_min(1e-12)
    else:
        bandwidth = squared.new_ones(())
    kernel = torch.exp(-squared / bandwidth)  # symmetric
    repulsion = 2 / bandwidth * (kernel.unsqueeze(-1) * differences).sum(1)  # sum_j grad_{a_j} k
    return (kernel @ log_posterior_grads + repulsion) / count


def gamma_log_prior(log_precision: torch.Tensor, shape: float, rate: float) -> torch.Tensor:
    """log Gamma(precision; shape, rate) up to a constant, as a density over log(precision)."""
    return shape * log_precision - rate * log_precision.exp()


class BayesianMAML(Algorithm):
    capabilities = Capabilities(predicts_distribution=True)
    model: nn.ModuleList  # the particles' networks

    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        particles: int = 10,
        inner_lr: float = 1e-3,
        inner_steps: int = 1,
        leader_steps: int = 1,
        weight_precision_prior: tuple[float, float] = (2.0, 2.0),
        noise_precision_prior: tuple[float, float] = (2.0, 0.2),
        initial_noise_precision: float = 100.0,
        precision_lr_scale: float = 1.0,
        first_order: bool = False,
    ) -> None:
        super().__init__()
        if particles < 1 or inner_lr <= 0 or inner_steps < 0 or leader_steps < 1:
            raise ConfigError(
                f"algo.particles must be >= 1, algo.inner_lr > 0, algo.inner_steps >= 0 and "
                f"algo.leader_steps >= 1 (got {particles}, {inner_lr}, {inner_steps}, "
                f"{leader_steps})."
            )
        network = nn.Sequential(backbone, nn.Linear(backbone.out_features, out_features))
        self.model = nn.ModuleList(
            [network] + [reinitialised(network) for _ in range(particles - 1)]
        )
        self.log_weight_precision = nn.Parameter(torch.zeros(particles))
        self.log_noise_precision = nn.Parameter(
            torch.full((particles,), math.log(initial_noise_precision))
        )
        self.out_features, self.particles = out_features, particles
        self.inner_lr, self.inner_steps, self.leader_steps = inner_lr, inner_steps, leader_steps
        self.weight_prior, self.noise_prior = (
            tuple(weight_precision_prior),
            tuple(noise_precision_prior),
        )
        self.first_order, self.precision_lr_scale = first_order, precision_lr_scale
        self.names = [name for name, _ in network.named_parameters()]
        self.shapes = [p.shape for _, p in network.named_parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model[0](x)

    def initial_particles(self, params: Params) -> torch.Tensor:
        """The meta-learned particles as rows [M, P]: weights, then log lambda and log gamma."""
        rows = [
            torch.cat([params[f"model.{m}.{name}"].flatten() for name in self.names])
            for m in range(self.particles)
        ]
        logs = [params["log_weight_precision"], params["log_noise_precision"]]
        return torch.cat([torch.stack(rows), torch.stack(logs, dim=1)], dim=1)

    def weights_of(self, row: torch.Tensor) -> Params:
        sizes = [math.prod(shape) for shape in self.shapes]
        pieces = row[: sum(sizes)].split(sizes)
        return {name: p.view(s) for name, p, s in zip(self.names, pieces, self.shapes)}

    def outputs(self, particles: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Every particle's network outputs on x: [M, N, out]."""
        return torch.stack(
            [functional_call(self.model[0], self.weights_of(row), (x,)) for row in particles]
        )

    def log_posterior(
        self, particles: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Sum over particles of log p(y | x, weights, gamma) + log p(weights | lambda) + the
        hyper-priors' log densities, each particle's up to the same constant."""
        outputs = self.outputs(particles, x)
        log_lambda, log_gamma = particles[:, -2], particles[:, -1]
        weights = particles[:, :-2]
        prior = 0.5 * weights.shape[1] * log_lambda - 0.5 * log_lambda.exp() * weights.square().sum(
            1
        )
        prior = prior + gamma_log_prior(log_lambda, *self.weight_prior)
        if y.dtype.is_floating_point:
            error = (outputs - y).square().flatten(1).sum(1)
            likelihood = 0.5 * y.numel() * log_gamma - 0.5 * log_gamma.exp() * error
            prior = prior + gamma_log_prior(log_gamma, *self.noise_prior)
        else:
            targets = y.expand(self.particles, -1)
            likelihood = -F.cross_entropy(
                outputs.flatten(0, 1), targets.flatten(), reduction="none"
            )
            likelihood = likelihood.view(self.particles, -1).sum(1)
        return (likelihood + prior).sum()

    def svgd(
        self,
        particles: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        first_order: bool,
    ) -> torch.Tensor:
        rates = torch.ones_like(particles[0])
        rates[-2:] = self.precision_lr_scale  # the log precisions' own step (their lambda_lr)
        for _ in range(steps):
            gradients = grad(self.log_posterior)(particles, x, y)
            if first_order:
                gradients = gradients.detach()
            particles = particles + self.inner_lr * rates * svgd_direction(particles, gradients)
        return particles

    def predictive(
        self, particles: torch.Tensor, x: torch.Tensor, regression: bool
    ) -> torch.Tensor:
        """Classes: log of the particles' mean probabilities [Q, ways]. Regression: (mean, std)
        [Q, 2] of the particles' Gaussians taken together."""
        outputs = self.outputs(particles, x)
        if not regression:
            return outputs.log_softmax(-1).logsumexp(0) - math.log(self.particles)
        noise_variance = (-particles[:, -1]).exp().view(-1, 1, 1)
        mean = outputs.mean(0)
        variance = (noise_variance + outputs.square()).mean(0) - mean.square()
        return torch.cat([mean, variance.clamp_min(1e-12).sqrt()], dim=-1)

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        self.check_ways(support_y, ways)
        steps = self.inner_steps if steps is None else steps
        chaser = self.svgd(self.initial_particles(params), support_x, support_y, steps, False)
        regression = support_y.dtype.is_floating_point
        return lambda query_x: self.predictive(chaser, query_x, regression)

    def gaussian(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs  # already (mean, std)

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
        """Chaser loss; scored by the chaser ensemble's query accuracy (or mean's squared error)."""
        self.check_ways(support_y, ways)
        steps = self.inner_steps if steps is None else steps
        chaser = self.svgd(
            self.initial_particles(params), support_x, support_y, steps, self.first_order
        )
        both_x, both_y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
        leader = self.svgd(chaser.detach(), both_x, both_y, self.leader_steps, True)
        loss = (chaser[:, :-2] - leader[:, :-2]).square().sum()
        regression = query_y.dtype.is_floating_point
        with torch.no_grad():
            prediction = self.predictive(chaser, query_x, regression)
            if regression:
                score = (prediction[:, :1] - query_y).square().mean()
            else:
                score = (prediction.argmax(-1) == query_y).float().mean()
        return loss, score


def reinitialised(network: nn.Module) -> nn.Module:
    """A copy of `network` with freshly drawn weights: another initial particle."""
    twin = copy.deepcopy(network)
    for module in twin.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and module is not twin:
            reset()
    return twin

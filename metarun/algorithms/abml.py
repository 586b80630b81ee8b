"""Amortised Bayesian meta-learning (Ravi & Beatson 2019, ICLR): a learned Gaussian prior
N(mu, sigma^2) over every network weight; a task's posterior q = N(mu_q, sigma_q^2) starts at
the prior and takes `inner_steps` gradient steps on the support set's negative evidence lower
bound (expected negative log-likelihood + kl_weight * KL(q || prior)); the meta-objective is the
same bound on the queries plus the hyper-prior's negative log density (a standard normal on each
prior mean, Gamma(1, 0.01) on each prior precision 1/sigma^2), weighted like the KL term.
Expectations are Monte Carlo averages over `samples` draws (reparameterised). With
`local_reparameterisation` (the paper's choice, from Kingma, Salimans & Welling 2015) a draw of
a Linear or Conv2d layer is a draw of its pre-activations from the Gaussian they have under q,
independent for every example (and, for convolutions, every position: each unit's marginal is
exact, the correlations between positions are dropped), at the cost of one more layer pass and
with a lower-variance gradient than one weight draw shared by the whole task. Other weights
(BatchNorm's) are drawn once per pass.

Regression uses a Gaussian likelihood whose noise std is one more meta-learned parameter; the
predictive distribution is the average over weight draws: class probabilities averaged, or the
draws' Gaussians summarised by one Gaussian of the same mean and variance.
Our choices, which the paper leaves to its experiments: kl_weight (its few-shot experiments
down-weight the KL term), the hyper-prior values of a public reimplementation.

There is no official code. With `score_support` (the default) the meta-loss scores the support
set under the adapted q as well as the queries, as both public reimplementations do
(cnguyen10/few_shot_meta_learning `Abml.py` among them), the bound then covering the task's
whole data; `score_support=false` scores the queries only.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from metarun.algorithms.base import Algorithm, Capabilities, Predictor
from metarun.algorithms.functional import Params, gaussian_kl, gaussian_log_prob, params_under
from metarun.backbones import Backbone
from metarun.errors import ConfigError


def weights_kl(
    mean_q: Params, log_std_q: Params, mean_p: Params, log_std_p: Params
) -> torch.Tensor:
    """KL(N(mean_q, std_q^2) || N(mean_p, std_p^2)) summed over every weight."""
    parts = (mean_q, log_std_q, mean_p, log_std_p)
    return cast(
        torch.Tensor,
        sum(gaussian_kl(*(part[name].flatten() for part in parts)) for name in mean_q),
    )


class ABML(Algorithm):
    capabilities = Capabilities(predicts_distribution=True)

    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        *,
        inner_lr: float = 0.01,
        inner_steps: int = 5,
        samples: int = 5,
        kl_weight: float = 0.01,
        initial_std: float = 0.01,
        hyper_prior: tuple[float, float, float] = (1.0, 1.0, 0.01),
        first_order: bool = False,
        local_reparameterisation: bool = True,
        score_support: bool = True,
    ) -> None:
        super().__init__()
        if inner_lr <= 0 or inner_steps < 0 or samples < 1 or kl_weight < 0:
            raise ConfigError(
                f"algo.inner_lr must be > 0, algo.inner_steps >= 0, algo.samples >= 1 and "
                f"algo.kl_weight >= 0 (got {inner_lr}, {inner_steps}, {samples}, {kl_weight})."
            )
        self.model = nn.Sequential(backbone, nn.Linear(backbone.out_features, out_features))
        self.log_std = copy.deepcopy(self.model)  # one log standard deviation per model weight
        for parameter in self.log_std.parameters():
            nn.init.constant_(parameter, math.log(initial_std))
        self.log_noise_std = nn.Parameter(torch.zeros(()))  # regression's likelihood noise
        self.out_features, self.inner_lr, self.inner_steps = out_features, inner_lr, inner_steps
        self.samples, self.kl_weight, self.first_order = samples, kl_weight, first_order
        self.score_support = score_support
        self.mean_std, self.precision_shape, self.precision_rate = hyper_prior
        self.local_layers = {
            name: module
            for name, module in self.model.named_modules()
            if local_reparameterisation and isinstance(module, (nn.Linear, nn.Conv2d))
        }

    def prior(self, params: Params) -> tuple[Params, Params]:
        return params_under(params, "model."), params_under(params, "log_std.")

    def draw(self, mean: Params, log_std: Params) -> Params:
        """Weights for one pass: the means of locally reparameterised layers, draws elsewhere."""
        return {
            name: m
            if name.rpartition(".")[0] in self.local_layers
            else m + log_std[name].exp() * torch.randn_like(m)
            for name, m in mean.items()
        }

    def sampled_pass(self, mean: Params, log_std: Params, x: torch.Tensor) -> torch.Tensor:
        """The network's outputs on x under one draw from q."""
        hooks = []
        for name, layer in self.local_layers.items():
            stds = {
                part: log_std[f"{name}.{part}"].exp()
                for part in ("weight", "bias")
                if f"{name}.{part}" in log_std
            }
            noise = partial(add_pre_activation_noise, weight=stds["weight"], bias=stds.get("bias"))
            hooks.append(layer.register_forward_hook(noise))
        try:
            return functional_call(self.model, self.draw(mean, log_std), (x,))
        finally:
            for hook in hooks:
                hook.remove()

    def outputs(self, mean: Params, log_std: Params, x: torch.Tensor) -> torch.Tensor:
        """The network's outputs under `samples` draws from q: [samples, N, out]."""
        return torch.stack([self.sampled_pass(mean, log_std, x) for _ in range(self.samples)])

    def expected_nll(self, params: Params, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Monte Carlo estimate of E_q[-log p(y | x, w)], summed over examples."""
        if y.dtype.is_floating_point:
            log_noise = params["log_noise_std"].expand_as(outputs)
            return -gaussian_log_prob(outputs, log_noise, y).sum(1).mean()
        flat_y = y.expand(self.samples, -1).flatten()
        return F.cross_entropy(outputs.flatten(0, 1), flat_y, reduction="sum") / self.samples

    def negative_elbo(
        self, params: Params, q: tuple[Params, Params], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        outputs = self.outputs(*q, x)
        return self.expected_nll(params, outputs, y) + self.kl_weight * weights_kl(
            *q, *self.prior(params)
        )

    def posterior(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        first_order: bool,
    ) -> tuple[Params, Params]:
        """q after `steps` gradient steps on the support set's negative ELBO, from the prior."""
        mean, log_std = self.prior(params)
        for _ in range(steps):
            loss = lambda m, s: self.negative_elbo(params, (m, s), support_x, support_y)
            grads = grad(loss, argnums=(0, 1))(mean, log_std)
            if first_order:
                grads = tuple({k: g.detach() for k, g in part.items()} for part in grads)
            mean = {k: v - self.inner_lr * grads[0][k] for k, v in mean.items()}
            log_std = {k: v - self.inner_lr * grads[1][k] for k, v in log_std.items()}
        return mean, log_std

    def hyper_prior_nll(self, params: Params) -> torch.Tensor:
        """-log p(prior): N(0, mean_std^2) on each mean, Gamma on each precision (constants
        dropped)."""
        mean, log_std = self.prior(params)
        total = cast(
            torch.Tensor, sum(0.5 * (m / self.mean_std).square().sum() for m in mean.values())
        )
        for s in log_std.values():
            log_precision = -2 * s
            total = (
                total
                - (
                    (self.precision_shape - 1) * log_precision
                    - self.precision_rate * log_precision.exp()
                ).sum()
            )
        return total

    def predictive(
        self, params: Params, q: tuple[Params, Params], x: torch.Tensor, regression: bool
    ) -> torch.Tensor:
        outputs = self.outputs(*q, x)
        if not regression:
            return outputs.log_softmax(-1).logsumexp(0) - math.log(self.samples)
        mean = outputs.mean(0)
        variance = torch.exp(2 * params["log_noise_std"]) + outputs.var(0, unbiased=False)
        return torch.cat([mean, variance.sqrt()], dim=-1)

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
        q = self.posterior(params, support_x, support_y, steps, first_order=False)
        regression = support_y.dtype.is_floating_point
        return lambda query_x: self.predictive(params, q, query_x, regression)

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
        """The queries' (and with score_support the support set's) negative ELBO under the
        adapted q plus the weighted hyper-prior term, per scored example; scored by the
        predictive accuracy (or the mean's squared error) on the queries."""
        self.check_ways(support_y, ways)
        steps = self.inner_steps if steps is None else steps
        q = self.posterior(params, support_x, support_y, steps, self.first_order)
        outputs = self.outputs(*q, query_x)
        kl = weights_kl(*q, *self.prior(params))
        bound = self.expected_nll(params, outputs, query_y) + self.kl_weight * kl
        scored = len(query_y)
        if self.score_support:
            bound = bound + self.expected_nll(params, self.outputs(*q, support_x), support_y)
            scored += len(support_y)
        loss = (bound + self.kl_weight * self.hyper_prior_nll(params)) / scored
        with torch.no_grad():
            if query_y.dtype.is_floating_point:
                score = (outputs.mean(0) - query_y).square().mean()
            else:
                probabilities = outputs.softmax(-1).mean(0)
                score = (probabilities.argmax(-1) == query_y).float().mean()
        return loss, score


def add_pre_activation_noise(
    layer: nn.Module,
    inputs: tuple[torch.Tensor],
    output: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward hook: the layer ran with its weights' means; add the pre-activations' Gaussian
    noise, whose variance is the layer applied to the squared input with the weights'
    variances (`weight`, `bias`: standard deviations)."""
    squared = inputs[0].square()
    bias_variance = None if bias is None else bias.square()
    if isinstance(layer, nn.Conv2d):
        variance = F.conv2d(
            squared,
            weight.square(),
            bias_variance,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )
    else:
        variance = F.linear(squared, weight.square(), bias_variance)
    return output + variance.clamp_min(1e-30).sqrt() * torch.randn_like(output)

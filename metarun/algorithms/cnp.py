"""Conditional Neural Processes (Garnelo et al. 2018, arXiv:1807.01613): an encoder MLP reads each
context pair (x, y), the mean of its outputs is the task's representation r, and a decoder MLP
maps (r, x) of each target to a Gaussian: its mean and a standard deviation bounded below
(min_std + (1 - min_std) softplus, as in the authors' notebook). Trained by the targets'
negative log-likelihood; there is no inner loop, so adaptation is one forward pass and the
prediction does not depend on the order of the contexts.

Regression only for now: a predictor returns [Q, 2] per target, (mean, standard deviation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.algorithms.base import Algorithm, Predictor
from metarun.algorithms.functional import Params, params_under
from metarun.errors import ConfigError


def relu_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def gaussian_nll(mean: torch.Tensor, std: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-density of `target` under independent Gaussians N(mean, std^2)."""
    return (std.log() + 0.5 * math.log(2 * math.pi) + 0.5 * ((target - mean) / std) ** 2).mean()


class CNP(Algorithm):
    def __init__(self, backbone: nn.Module, out_features: int, encoder: list[int] = (128,) * 4,
                 decoder: list[int] = (128, 128), min_std: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        self.model, self.out_features, self.min_std = backbone, out_features, min_std
        features = backbone.out_features
        self.encoder = relu_mlp([features + out_features, *encoder])
        self.decoder = relu_mlp([encoder[-1] + features, *decoder, 2 * out_features])

    def check_regression(self, support_y: torch.Tensor) -> None:
        if not support_y.dtype.is_floating_point:
            raise ConfigError(
                "algo=cnp is built for regression only so far (a Gaussian per target); it "
                "cannot fit a classification dataset. Use dataset=gp_1d or dataset=sinusoid."
            )

    def adapt(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor, ways: int,
              steps: int | None = None) -> Predictor:  # fmt: skip
        self.check_regression(support_y)
        contexts = torch.cat([self.run(params, support_x), support_y], dim=-1)
        representation = self.part(params, "encoder", contexts).mean(0)  # [r]

        def gaussian(query_x: torch.Tensor) -> torch.Tensor:
            features = self.run(params, query_x)
            inputs = torch.cat([representation.expand(len(features), -1), features], dim=-1)
            mean, raw = self.part(params, "decoder", inputs).chunk(2, dim=-1)
            std = self.min_std + (1 - self.min_std) * F.softplus(raw)
            return torch.cat([mean, std], dim=-1)  # [Q, 2]

        return gaussian

    def part(self, params: Params, name: str, x: torch.Tensor) -> torch.Tensor:
        """The submodule `name` (encoder or decoder) evaluated with the given parameters."""
        return functional_call(getattr(self, name), params_under(params, f"{name}."), (x,))

    def gaussian(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs  # already (mean, std)

    def task_loss(self, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                  query_x: torch.Tensor, query_y: torch.Tensor, ways: int,
                  steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Targets' negative log-likelihood; scored by the mean's squared error."""
        mean, std = self.adapt(params, support_x, support_y, ways)(query_x).chunk(2, dim=-1)
        return gaussian_nll(mean, std, query_y), F.mse_loss(mean, query_y).detach()

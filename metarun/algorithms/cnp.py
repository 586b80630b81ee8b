"""Conditional Neural Processes (Garnelo et al. 2018, arXiv:1807.01613): an encoder MLP reads each
context pair (embedding of x, y), a mean of its outputs is the task's representation, and a
decoder MLP reads (representation, embedding of a target). There is no inner loop, so
adaptation is one forward pass and the prediction does not depend on the order of the contexts.

Regression: one mean over all contexts; the decoder gives each target a Gaussian, its mean and a
standard deviation bounded below (min_std + (1 - min_std) softplus, as in the authors'
notebook); trained by the targets' negative log-likelihood; a predictor returns [Q, 2] (mean,
std). Classification (the paper's Omniglot experiment): contexts are (image embedding, one-hot
label) and are averaged per class; the decoder reads (class representation, query embedding)
and the first of its two outputs is that class's logit; trained by cross-entropy. Our reading:
the paper does not spell out how its decoder combines the class representations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metarun.algorithms.base import Algorithm, Capabilities, Predictor
from metarun.algorithms.functional import Params, class_means, gaussian_log_prob, params_under
from metarun.backbones import Backbone
from metarun.metrics import task_loss_and_score


def relu_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class CNP(Algorithm):
    capabilities = Capabilities(predicts_distribution=True)

    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        encoder: Sequence[int] = (128,) * 4,
        decoder: Sequence[int] = (128, 128),
        min_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.model, self.out_features, self.min_std = backbone, out_features, min_std
        features = backbone.out_features
        self.encoder = relu_mlp([features + out_features, *encoder])
        self.decoder = relu_mlp([encoder[-1] + features, *decoder, 2])

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        regression = support_y.dtype.is_floating_point
        if not regression:
            self.check_ways(support_y, ways)
        encoded = self.encode(params, "encoder", support_x, support_y, ways)
        if regression:
            representation = encoded.mean(0, keepdim=True)  # [1, r]
        else:
            representation = class_means(encoded, support_y, ways)  # [ways, r]

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            decoded = self.decode(params, representation, support_x, query_x)
            return self.bounded(decoded[:, 0]) if regression else decoded[..., 0]  # logits

        return predict

    def encode(
        self, params: Params, encoder: str, x: torch.Tensor, y: torch.Tensor, ways: int
    ) -> torch.Tensor:
        """The submodule `encoder` on every (embedding of x, y or one-hot label) pair: [N, r]."""
        features = self.run(params, x)
        labels = y if y.dtype.is_floating_point else F.one_hot(y, ways).to(features.dtype)
        return self.part(params, encoder, torch.cat([features, labels], dim=-1))

    def decode(
        self,
        params: Params,
        representations: torch.Tensor,
        support_x: torch.Tensor,
        query_x: torch.Tensor,
    ) -> torch.Tensor:
        """The decoder on every (representation row, query embedding) pair: [Q, rows, 2]."""
        queries = self.on_queries(lambda x: self.run(params, x), support_x, query_x)
        pairs = torch.cat(
            [
                representations.expand(len(queries), -1, -1),
                queries.unsqueeze(1).expand(-1, len(representations), -1),
            ],
            dim=-1,
        )
        return self.part(params, "decoder", pairs)

    def bounded(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder outputs [..., 2] as (mean, std), the std kept above min_std."""
        mean, raw = decoded.chunk(2, dim=-1)
        return torch.cat([mean, self.min_std + (1 - self.min_std) * F.softplus(raw)], dim=-1)

    def part(self, params: Params, name: str, x: torch.Tensor) -> torch.Tensor:
        """The submodule `name` (encoder or decoder) evaluated with the given parameters."""
        return functional_call(getattr(self, name), params_under(params, f"{name}."), (x,))

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
        """Regression: the targets' Gaussian negative log-likelihood, scored by the mean's squared
        error. Classification: cross-entropy and accuracy."""
        outputs = self.adapt(params, support_x, support_y, ways)(query_x)
        if not query_y.dtype.is_floating_point:
            return task_loss_and_score(outputs, query_y)
        mean, std = outputs.chunk(2, dim=-1)
        nll = -gaussian_log_prob(mean, std.log(), query_y).mean()
        return nll, F.mse_loss(mean, query_y).detach()

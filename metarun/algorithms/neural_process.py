"""The latent-variable Neural Process (Garnelo et al. 2018b, arXiv:1807.01622), as a CNP with one
more path: a second encoder reads the same (x, y) pairs, and its mean through a small head gives
a Gaussian over a global latent z (std 0.1 + 0.9 sigmoid, as in the authors' notebooks). The
decoder reads (deterministic representation, z, target embedding), so one z is one coherent
function; the prediction is the mixture over draws of z, summarised by one Gaussian of the same
mean and variance. Trained on the evidence lower bound: targets' log-likelihood under z drawn
from q(z | contexts and targets), minus KL(q(z | contexts and targets) || q(z | contexts)) per
target, the posterior from all points standing in for the intractable conditional prior.

The posterior pools every point once. The notebook builds it from the targets, which contain the
contexts there (as in dataset=gp_1d and omniglot_completion); where the targets do not contain
them (dataset=sinusoid), the contexts are pooled too. So a target equal to a context, x and y
alike, is left out of the pool.

Regression only (the paper's use); for classification use the CNP. The deterministic path is
the one of the authors' later notebook (`use_deterministic_path`), which the 2018b paper omits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from metarun.algorithms.base import Predictor
from metarun.algorithms.cnp import CNP, relu_mlp
from metarun.algorithms.functional import Params, gaussian_kl, gaussian_log_prob
from metarun.backbones import Backbone
from metarun.errors import ConfigError

Pairs = tuple[torch.Tensor, torch.Tensor]  # inputs x and targets y


class NeuralProcess(CNP):
    def __init__(
        self,
        backbone: Backbone,
        out_features: int,
        encoder: Sequence[int] = (128,) * 4,
        latent_encoder: Sequence[int] = (128,) * 4,
        latents: int = 128,
        decoder: Sequence[int] = (128, 128),
        min_std: float = 0.1,
        samples: int = 10,
    ) -> None:
        super().__init__(backbone, out_features, encoder, decoder, min_std)
        features, width = backbone.out_features, latent_encoder[-1]
        self.latent_encoder = relu_mlp([features + out_features, *latent_encoder])
        self.latent_head = relu_mlp([width, width, 2 * latents])
        self.decoder = relu_mlp([encoder[-1] + latents + features, *decoder, 2])
        self.samples = samples

    def latent(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """q(z | the pairs x, y) as [2, latents]: mean and standard deviation. `weights` [N]
        (0 or 1) leave pairs out of the mean."""
        encoded = self.encode(params, "latent_encoder", x, y, 1)
        if weights is None:
            pooled = encoded.mean(0)
        else:
            pooled = (weights.unsqueeze(-1) * encoded).sum(0) / weights.sum()
        mean, raw = self.part(params, "latent_head", pooled).chunk(2, dim=-1)
        return torch.stack([mean, 0.1 + 0.9 * torch.sigmoid(raw)])

    def posterior(self, params: Params, support: Pairs, query: Pairs) -> torch.Tensor:
        """q(z | contexts and targets), each distinct point pooled once: a target that repeats
        a context (as gp_1d's and omniglot_completion's training targets do) is left out.
        `support` and `query` are (x, y) pairs."""
        (support_x, support_y), (query_x, query_y) = support, query
        same_x = (query_x.flatten(1).unsqueeze(1) == support_x.flatten(1).unsqueeze(0)).all(-1)
        same_y = (query_y.flatten(1).unsqueeze(1) == support_y.flatten(1).unsqueeze(0)).all(-1)
        repeats = (same_x & same_y).any(1)  # [Q]
        weights = torch.cat([support_y.new_ones(len(support_y)), (~repeats).to(support_y.dtype)])
        x, y = torch.cat([support_x, query_x]), torch.cat([support_y, query_y])
        return self.latent(params, x, y, weights)

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        ways: int,
        steps: int | None = None,
    ) -> Predictor:
        check_regression(support_y)
        representation = self.encode(params, "encoder", support_x, support_y, 1).mean(0)
        mean, std = self.latent(params, support_x, support_y)

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            z = mean + std * torch.randn(
                self.samples, len(mean), dtype=mean.dtype, device=mean.device
            )
            rows = torch.cat([representation.expand(self.samples, -1), z], dim=-1)
            means, stds = self.bounded(self.decode(params, rows, support_x, query_x)).unbind(-1)
            mixture_mean = means.mean(1)  # over draws of z
            variance = (stds.square() + means.square()).mean(1) - mixture_mean.square()
            return torch.stack([mixture_mean, variance.clamp_min(1e-12).sqrt()], dim=-1)

        return predict

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
        """Negative ELBO per target, scored by the squared error of the mean under that z."""
        check_regression(support_y)
        representation = self.encode(params, "encoder", support_x, support_y, 1).mean(0)
        prior = self.latent(params, support_x, support_y)
        posterior = self.posterior(params, (support_x, support_y), (query_x, query_y))
        z = posterior[0] + posterior[1] * torch.randn_like(posterior[0])
        row = torch.cat([representation, z]).unsqueeze(0)
        mean, std = self.bounded(self.decode(params, row, support_x, query_x)[:, 0]).chunk(2, -1)
        nll = -gaussian_log_prob(mean, std.log(), query_y).mean()
        kl = gaussian_kl(posterior[0], posterior[1].log(), prior[0], prior[1].log())
        return nll + kl / len(query_y), F.mse_loss(mean, query_y).detach()


def check_regression(support_y: torch.Tensor) -> None:
    if not support_y.dtype.is_floating_point:
        raise ConfigError(
            "algo=neural_process regresses (its latent z is a function); it cannot classify. "
            "Use algo=cnp for classification, or a regression dataset (dataset=gp_1d, sinusoid "
            "or omniglot_completion)."
        )

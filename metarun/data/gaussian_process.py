"""1-D curves from a Gaussian process, the regression benchmark of Conditional Neural Processes
(Garnelo et al. 2018, arXiv:1807.01613, and the authors' public notebook): a squared-exponential
kernel, x uniform in [-2, 2], targets that include the contexts.

Training episodes: `shots + queries` points at uniform x; the first `shots` are the context
(support) and every point is a target (query), as in the notebook. Validation and test episodes:
`queries` evenly spaced targets spanning x_range (the notebook's 400), the `shots` contexts drawn
among them. A plan holds the x positions, the standard-normal draws the curve is built from and
the context indices, so the same seed gives the same curves anywhere.
"""

from __future__ import annotations

import torch

from metarun.data.base import ScalarRegression
from metarun.episode import Episode
from metarun.errors import ConfigError


def squared_exponential(
    x: torch.Tensor, length_scale: float, signal_scale: float, noise_std: float
) -> torch.Tensor:
    """[..., N, N] covariance of points x [..., N]: signal_scale^2 exp(-(xi - xj)^2 / (2 l^2)),
    plus noise_std^2 on the diagonal (the observation noise, which also keeps Cholesky stable)."""
    distance = (x.unsqueeze(-1) - x.unsqueeze(-2)) / length_scale
    noise = noise_std**2 * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    return signal_scale**2 * torch.exp(-0.5 * distance.square()) + noise


class GaussianProcessSampler:
    def __init__(
        self, dataset: GaussianProcess1D, split: str, shots: int, queries: int, device: torch.device
    ) -> None:
        if min(shots, queries) <= 0:
            raise ConfigError(
                f"gp_1d episodes need at least one context (shots) and one target (queries); "
                f"got shots={shots}, queries={queries}. Set both to 1 or more."
            )
        self.on_grid = split != "train"
        if self.on_grid and shots > queries:
            raise ConfigError(
                f"gp_1d {split} episodes draw their shots={shots} contexts among their "
                f"queries={queries} evenly spaced targets. Lower the shots or raise the queries."
            )
        self.dataset, self.shots, self.queries, self.device = dataset, shots, queries, device
        self.points = queries if self.on_grid else shots + queries

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """[tasks, 2 * points + shots]: x positions, standard-normal draws, context indices."""
        low, high = self.dataset.x_range
        if self.on_grid:
            grid = low + (high - low) * torch.arange(self.points) / self.points
            x = grid.expand(num_tasks, -1)
            contexts = torch.rand(num_tasks, self.points, generator=generator).argsort(-1)
            contexts = contexts[:, : self.shots]
        else:
            x = low + (high - low) * torch.rand(num_tasks, self.points, generator=generator)
            contexts = torch.arange(self.shots).expand(num_tasks, -1)
        normal = torch.randn(num_tasks, self.points, generator=generator)
        return torch.cat([x, normal, contexts.float()], dim=1)

    def build(self, plan: torch.Tensor) -> Episode:
        plan = plan.to(self.device).double()
        x, normal = plan[:, : self.points], plan[:, self.points : 2 * self.points]
        contexts = plan[:, 2 * self.points :].long()
        d = self.dataset
        covariance = squared_exponential(x, d.length_scale, d.signal_scale, d.noise_std)
        y = (torch.linalg.cholesky(covariance) @ normal.unsqueeze(-1)).float()  # [tasks, P, 1]
        x = x.float().unsqueeze(-1)
        support = contexts.unsqueeze(-1)
        return Episode(x.gather(1, support), y.gather(1, support), x, y, ways=1)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        return self.build(self.draw(num_tasks, generator))


class GaussianProcess1D(ScalarRegression):
    """Every split draws from the same process (new curves each episode); `ways` is unused."""

    def __init__(
        self,
        length_scale: float = 0.4,
        signal_scale: float = 1.0,
        noise_std: float = 0.02,
        x_range: tuple[float, float] = (-2.0, 2.0),
    ) -> None:
        self.length_scale, self.signal_scale, self.noise_std = length_scale, signal_scale, noise_std
        self.x_range = tuple(x_range)

    def protocol(self) -> dict:
        return {
            "dataset": "gp_1d",
            "kernel": "squared_exponential",
            "length_scale": self.length_scale,
            "signal_scale": self.signal_scale,
            "noise_std": self.noise_std,
            "x_range": list(self.x_range),
            "targets": "contexts plus queries (training); queries evenly spaced (test)",
        }

    def sampler(
        self, split: str, ways: int, shots: int, queries: int, device: torch.device
    ) -> GaussianProcessSampler:
        return GaussianProcessSampler(self, split, shots, queries, device)

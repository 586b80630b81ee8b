"""Sinusoid regression exactly as in MAML (Finn et al., 2017, arXiv:1703.03400):
y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]; loss is MSE.
`noise_std` > 0 adds Gaussian noise to every observed y (support and query), the noisy variant
the Bayesian meta-learning papers use; 0 draws nothing, so MAML's episodes stay as they were.
"""

from __future__ import annotations

import math

import torch

from metarun.data.base import ScalarRegression, check_shape
from metarun.episode import Episode


class SinusoidSampler:
    """Draws (amplitude, phase, xs) per task on the CPU; builds the targets on the device."""

    def __init__(
        self,
        amplitude: tuple[float, float],
        phase: tuple[float, float],
        x_range: tuple[float, float],
        shots: int,
        queries: int,
        device: torch.device,
        noise_std: float = 0.0,
    ) -> None:
        check_shape("any", 1, shots, queries)
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.noise_std = noise_std
        self.shots, self.queries, self.device = shots, queries, device

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """[tasks, 2 + shots + queries (+ shots + queries with noise)]: amplitude, phase, the x
        positions, then the standard-normal noise draws."""

        def uniform(bounds: tuple[float, float], *shape: int) -> torch.Tensor:
            low, high = bounds
            return torch.rand(*shape, generator=generator) * (high - low) + low

        points = self.shots + self.queries
        parts = [
            uniform(self.amplitude, num_tasks, 1),
            uniform(self.phase, num_tasks, 1),
            uniform(self.x_range, num_tasks, points),
        ]
        if self.noise_std > 0:
            parts.append(torch.randn(num_tasks, points, generator=generator))
        return torch.cat(parts, dim=1)

    def build(self, plan: torch.Tensor) -> Episode:
        plan = plan.to(self.device)
        points = self.shots + self.queries
        amplitude, phase, x = plan[:, :1], plan[:, 1:2], plan[:, 2 : 2 + points]
        y = amplitude * torch.sin(x - phase)
        if self.noise_std > 0:
            y = y + self.noise_std * plan[:, 2 + points :]
        y = y.unsqueeze(-1)  # [tasks, points, 1]
        x = x.unsqueeze(-1)
        s = self.shots
        return Episode(x[:, :s], y[:, :s], x[:, s:], y[:, s:], ways=1)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        return self.build(self.draw(num_tasks, generator))


class Sinusoid(ScalarRegression):
    """Every split draws from the same task distribution, as in the paper; `ways` is unused."""

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        noise_std: float = 0.0,
    ) -> None:
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)
        self.noise_std = noise_std

    def protocol(self) -> dict:
        return {
            "dataset": "sinusoid",
            "amplitude": list(self.amplitude),
            "phase": list(self.phase),
            "x_range": list(self.x_range),
            "noise_std": self.noise_std,
        }

    def sampler(
        self, split: str, ways: int, shots: int, queries: int, device: torch.device
    ) -> SinusoidSampler:
        return SinusoidSampler(
            self.amplitude, self.phase, self.x_range, shots, queries, device, self.noise_std
        )

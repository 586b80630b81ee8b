"""Sinusoid regression exactly as in MAML (Finn et al., 2017, arXiv:1703.03400):
y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]; loss is MSE.
`noise_std` > 0 adds Gaussian noise to every observed y (support and query), the noisy variant
the Bayesian meta-learning papers use; 0 draws nothing, so MAML's episodes stay as they were.

Bayesian MAML's protocol (Yoon et al. 2018; jaesik817/bmaml `data_generator.py`) is
y = A sin(w x - phase) + N(0, (0.01 A)^2) with w ~ U[0.5, 2] and phase ~ U[0, 2 pi], trained on a
finite set of 100 or 1,000 tasks whose points and noise are drawn once: `frequency`,
`noise_per_amplitude` and `train_tasks` (dataset=sinusoid_bmaml sets them). Validation and test
episodes are drawn afresh, as the authors' separate 100 test tasks are.
"""

from __future__ import annotations

import math

import torch

from metarun.data.base import ScalarRegression, check_shape
from metarun.episode import Episode
from metarun.errors import ConfigError

TASK_SET_SEED = 0  # the finite training set is the same in every run, whatever its seed


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
        frequency: tuple[float, float] = (1.0, 1.0),
        noise_per_amplitude: float = 0.0,
        tasks: int | None = None,
    ) -> None:
        check_shape("any", 1, shots, queries)
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.frequency, self.varies_frequency = frequency, frequency[0] != frequency[1]
        self.noise_std, self.noise_per_amplitude = noise_std, noise_per_amplitude
        self.noisy = noise_std > 0 or noise_per_amplitude > 0
        self.shots, self.queries, self.device = shots, queries, device
        self.task_set = None
        if tasks is not None:
            self.task_set = self.draw(tasks, torch.Generator().manual_seed(TASK_SET_SEED))

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """[tasks, 2 + shots + queries (+ 1 with a frequency range) (+ shots + queries with
        noise)]: amplitude, phase, the x positions, the frequency, then the standard-normal
        noise draws. From a finite task set: its rows, drawn uniformly."""
        if self.task_set is not None:
            rows = torch.randint(len(self.task_set), (num_tasks,), generator=generator)
            return self.task_set[rows]

        def uniform(bounds: tuple[float, float], *shape: int) -> torch.Tensor:
            low, high = bounds
            return torch.rand(*shape, generator=generator) * (high - low) + low

        points = self.shots + self.queries
        parts = [
            uniform(self.amplitude, num_tasks, 1),
            uniform(self.phase, num_tasks, 1),
            uniform(self.x_range, num_tasks, points),
        ]
        if self.varies_frequency:
            parts.append(uniform(self.frequency, num_tasks, 1))
        if self.noisy:
            parts.append(torch.randn(num_tasks, points, generator=generator))
        return torch.cat(parts, dim=1)

    def build(self, plan: torch.Tensor) -> Episode:
        plan = plan.to(self.device)
        points = self.shots + self.queries
        amplitude, phase, x = plan[:, :1], plan[:, 1:2], plan[:, 2 : 2 + points]
        after = 2 + points
        frequency: float | torch.Tensor = self.frequency[0]
        if self.varies_frequency:
            frequency, after = plan[:, after : after + 1], after + 1
        y = amplitude * torch.sin(frequency * x - phase)
        if self.noisy:
            y = y + (self.noise_std + self.noise_per_amplitude * amplitude) * plan[:, after:]
        y = y.unsqueeze(-1)  # [tasks, points, 1]
        x = x.unsqueeze(-1)
        s = self.shots
        return Episode(x[:, :s], y[:, :s], x[:, s:], y[:, s:], ways=1)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        return self.build(self.draw(num_tasks, generator))


def _pair(values) -> tuple[float, float]:
    """A (low, high) range from the config's two-item list."""
    low, high = values
    return float(low), float(high)


class Sinusoid(ScalarRegression):
    """Every split draws from the same task distribution, as in the paper; `ways` is unused.
    With `train_tasks`, training draws from that many fixed tasks."""

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        noise_std: float = 0.0,
        frequency: tuple[float, float] = (1.0, 1.0),
        noise_per_amplitude: float = 0.0,
        train_tasks: int | None = None,
    ) -> None:
        if train_tasks is not None and train_tasks < 1:
            raise ConfigError(
                f"dataset.train_tasks={train_tasks} must be a positive number of fixed training "
                "tasks, or null to draw every training task afresh."
            )
        self.amplitude, self.phase, self.x_range = _pair(amplitude), _pair(phase), _pair(x_range)
        self.noise_std, self.frequency = noise_std, _pair(frequency)
        self.noise_per_amplitude, self.train_tasks = noise_per_amplitude, train_tasks

    def protocol(self) -> dict:
        return {
            "dataset": "sinusoid",
            "amplitude": list(self.amplitude),
            "phase": list(self.phase),
            "frequency": list(self.frequency),
            "x_range": list(self.x_range),
            "noise_std": self.noise_std,
            "noise_per_amplitude": self.noise_per_amplitude,
            "train_tasks": self.train_tasks,
        }

    def sampler(
        self, split: str, ways: int, shots: int, queries: int, device: torch.device
    ) -> SinusoidSampler:
        tasks = self.train_tasks if split == "train" else None
        return SinusoidSampler(
            self.amplitude,
            self.phase,
            self.x_range,
            shots,
            queries,
            device,
            self.noise_std,
            self.frequency,
            self.noise_per_amplitude,
            tasks,
        )

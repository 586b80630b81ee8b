"""2D navigation, the MAML paper's point mass (Finn et al. 2017, arXiv:1703.03400, appendix
A.2): a point starts at the origin and must reach a goal drawn uniformly from [-0.5, 0.5]^2
that it cannot see. It observes its position, moves by its action (a velocity, clipped to
[-0.1, 0.1] per coordinate) and is rewarded minus its distance to the goal; an episode ends
within 0.01 of the goal or at the horizon. As in the paper's code (rllab's normalised
environment), the policy's action is scaled by `action_scale` = 0.1 before the clipping, so
outputs in [-1, 1] span the velocities; `action_scale=1` clips the raw action instead.
Plain torch, stepped for every task and trajectory of a meta-batch at once.
"""

from __future__ import annotations

import torch

from metarun.data.environments import EnvironmentDataset, check_counts
from metarun.errors import ConfigError


class PointMasses:
    """tasks x trajectories point masses, one goal per task; a VectorEnvironment."""

    action_size = 2

    def __init__(
        self,
        goals: torch.Tensor,
        trajectories: int,
        action_bound: float,
        tolerance: float,
        action_scale: float = 1.0,
    ) -> None:
        self.goals = goals.repeat_interleave(trajectories, dim=0)  # [B, 2]
        self.action_bound, self.tolerance, self.action_scale = action_bound, tolerance, action_scale
        self.position = torch.zeros_like(self.goals)

    def reset(self) -> torch.Tensor:
        self.position = torch.zeros_like(self.goals)
        return self.position.clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        velocity = (actions * self.action_scale).clamp(-self.action_bound, self.action_bound)
        self.position = self.position + velocity
        distance = (self.position - self.goals).norm(dim=-1)
        return self.position.clone(), -distance, distance < self.tolerance


class Navigation2D(EnvironmentDataset):
    """Goals uniform in a square."""

    input_shape = (2,)
    action_size = 2

    def __init__(
        self,
        horizon: int = 100,
        goal_range: tuple[float, float] = (-0.5, 0.5),
        action_bound: float = 0.1,
        tolerance: float = 0.01,
        action_scale: float = 0.1,
    ) -> None:
        check_counts(horizon, 1, 1)
        low, high = goal_range
        if not low < high or action_bound <= 0 or tolerance < 0 or action_scale <= 0:
            raise ConfigError(
                f"dataset.goal_range={list(goal_range)}, dataset.action_bound={action_bound}, "
                f"dataset.tolerance={tolerance} and dataset.action_scale={action_scale} cannot "
                "work: the range needs low < high, the bound and scale must be > 0 and the "
                "tolerance >= 0 (paper: [-0.5, 0.5], 0.1, 0.01, 0.1)."
            )
        self.horizon, self.goal_range = horizon, (float(low), float(high))
        self.action_bound, self.tolerance, self.action_scale = action_bound, tolerance, action_scale

    def preprocess(self, position) -> torch.Tensor:
        """A position (x, y) -> the policy's input [2]."""
        return torch.as_tensor(position, dtype=torch.float32).reshape(2)

    def protocol(self) -> dict:
        return {
            "dataset": "navigation_2d",
            "horizon": self.horizon,
            "goal_range": list(self.goal_range),
            "action_bound": self.action_bound,
            "tolerance": self.tolerance,
            "action_scale": self.action_scale,
        }

    def environments(self, goals: torch.Tensor, trajectories: int, seeds: list[int]) -> PointMasses:
        """The point masses start at the origin, so the seeds are not needed."""
        return PointMasses(
            goals, trajectories, self.action_bound, self.tolerance, self.action_scale
        )

    def draw_paths(self, axes, goal: torch.Tensor, before, after, task: int) -> None:
        """One task's first trajectory before (dashed) and after adaptation, on matplotlib axes."""
        for trajectories, style, label in ((before, "--", "before"), (after, "-", "after")):
            alive = trajectories.alive[task, 0].bool()
            path = trajectories.observations[task, 0][alive].cpu()
            axes.plot(path[:, 0], path[:, 1], style, label=f"{label} adaptation")
        axes.plot(*goal.cpu().tolist(), "r*", markersize=12, label="goal")
        low, high = self.goal_range
        axes.set(xlim=(low - 0.1, high + 0.1), ylim=(low - 0.1, high + 0.1), aspect="equal")

    def draw_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        low, high = self.goal_range
        return (
            torch.rand(num_tasks, 2, generator=generator, dtype=torch.float64) * (high - low) + low
        )

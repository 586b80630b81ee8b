"""Task distributions whose tasks are environments (meta-reinforcement learning).

The counterpart of Episode for meta-RL is `EnvironmentTasks`: a meta-batch of tasks (goals,
directions...) that an algorithm collects trajectories from with whatever policy it holds,
the pre-update policy for the support and the adapted one for the queries. A sampler draws a
plan (task parameters and one seed per task, from a seeded generator) exactly as for
episodes, so the same seed gives the same held-out tasks to every model. Environment resets
and action noise are drawn from generators seeded by the task's seed and the collection
round, never from global state: a resumed run and a re-evaluation collect the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from metarun.errors import ConfigError

# observations [tasks, trajectories, obs] -> (action mean, log std), both [tasks, trajectories, act]
Policy = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Trajectories:
    """A batch of trajectories per task, padded to the horizon; `alive` marks real steps."""

    observations: torch.Tensor  # [tasks, trajectories, horizon, obs]
    actions: torch.Tensor  # [tasks, trajectories, horizon, act]
    rewards: torch.Tensor  # [tasks, trajectories, horizon]
    alive: torch.Tensor  # [tasks, trajectories, horizon], 1.0 up to the step that ended it

    @property
    def returns(self) -> torch.Tensor:
        """Undiscounted return of each trajectory: [tasks, trajectories]."""
        return (self.rewards * self.alive).sum(-1)

    @property
    def steps(self) -> int:
        return int(self.alive.sum().item())


class VectorEnvironment(Protocol):
    """Many environments stepped as one: B = tasks x trajectories, in task-major order."""

    action_size: int

    def reset(self) -> torch.Tensor:
        """First observations [B, obs]."""

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(observations [B, obs], rewards [B], done [B] bool) after one step of each."""


def seed_of(task_seed: int, round: int) -> int:
    """The seed of one collection round of one task (round = adaptation step, or queries)."""
    return task_seed * 1_000 + round


@dataclass(frozen=True)
class EnvironmentTasks:
    """A meta-batch of environment tasks with how many trajectories each collection takes."""

    tasks: torch.Tensor  # [tasks, task parameters]
    seeds: torch.Tensor  # [tasks] int64
    family: EnvironmentDataset
    shots: int  # trajectories per adaptation step (the support)
    queries: int  # trajectories collected with the adapted policy (the queries)

    @property
    def num_tasks(self) -> int:
        return self.tasks.shape[0]

    def rollout(self, policy: Policy, trajectories: int, round: int) -> Trajectories:
        """Runs `policy` (no gradient) for one horizon in every task, `trajectories` each."""
        tasks, horizon = self.num_tasks, self.family.horizon
        seeds = [seed_of(int(s), round) for s in self.seeds]
        env = self.family.environments(self.tasks, trajectories, seeds)
        observation = env.reset()
        noise = torch.stack(  # drawn up front so the actions do not depend on the batch size
            [
                torch.randn(
                    horizon,
                    trajectories,
                    env.action_size,
                    generator=torch.Generator().manual_seed(seed),
                )
                for seed in seeds
            ]
        ).to(observation.device)
        shape = (tasks, trajectories, horizon)
        observations = observation.new_zeros(*shape, observation.shape[-1])
        actions = observation.new_zeros(*shape, env.action_size)
        rewards, alive = observation.new_zeros(shape), observation.new_zeros(shape)
        running = observation.new_ones(tasks, trajectories)  # 0 once a trajectory has ended
        with torch.no_grad():
            for t in range(horizon):  # trajectories that ended early keep zeros with alive 0
                observations[:, :, t] = observation.reshape(tasks, trajectories, -1)
                mean, log_std = policy(observations[:, :, t])
                actions[:, :, t] = mean + log_std.exp() * noise[:, t]
                observation, reward, done = env.step(actions[:, :, t].reshape(-1, env.action_size))
                rewards[:, :, t] = reward.reshape(tasks, trajectories)
                alive[:, :, t] = running
                running = running * (~done).reshape(tasks, trajectories).float()
                if not running.any():
                    break
        return Trajectories(observations, actions, rewards, alive)


class EnvironmentDataset:
    """What environment datasets share: scored by return, actions as outputs, and a sampler of
    tasks from `draw_tasks`. Every split draws from the same task distribution, as in the MAML
    paper; the evaluation seed holds the test tasks out."""

    metric = "return"
    horizon: int
    action_size: int

    def out_features(self, ways: int) -> int:
        return self.action_size

    def draw_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Task parameters [tasks, parameters] (float64), e.g. goal positions."""
        raise NotImplementedError

    def protocol(self) -> dict:
        """The settings that define the tasks (dataset name, horizon, ...), for results.json."""
        raise NotImplementedError

    def environments(
        self, tasks: torch.Tensor, trajectories: int, seeds: list[int]
    ) -> VectorEnvironment:
        """`trajectories` environments per task [tasks, parameters], reset from `seeds` (one
        per task)."""
        raise NotImplementedError

    def sampler(
        self, split: str, ways: int, shots: int, queries: int, device: torch.device
    ) -> EnvironmentSampler:
        check_counts(self.horizon, shots, queries)
        return EnvironmentSampler(self, self.draw_tasks, shots, queries, device)


class EnvironmentSampler:
    """Draws task parameters and seeds on the CPU; builds EnvironmentTasks."""

    score_columns = "after_steps"  # scores are returns after 0..steps adaptation steps

    def __init__(
        self,
        family,
        draw_tasks: Callable[[int, torch.Generator], torch.Tensor],
        shots: int,
        queries: int,
        device: torch.device,
    ) -> None:
        self.family, self.draw_tasks = family, draw_tasks
        self.shots, self.queries, self.device = shots, queries, device

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """[tasks, task parameters + 1]: the parameters, then the task's seed."""
        seeds = torch.randint(0, 2**31 - 1, (num_tasks, 1), generator=generator)
        return torch.cat([self.draw_tasks(num_tasks, generator), seeds.double()], dim=1)

    def build(self, plan: torch.Tensor) -> EnvironmentTasks:
        tasks = plan[:, :-1].float().to(self.device)
        return EnvironmentTasks(tasks, plan[:, -1].long(), self.family, self.shots, self.queries)

    def sample(self, num_tasks: int, generator: torch.Generator) -> EnvironmentTasks:
        return self.build(self.draw(num_tasks, generator))


def check_counts(horizon: int, shots: int, queries: int) -> None:
    """Horizon and trajectory counts must be positive; the error names the setting."""
    for name, value in (
        ("dataset.horizon", horizon),
        ("task.shots (trajectories per adaptation step)", shots),
        ("task.queries (trajectories per meta-update)", queries),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(
                f"{name} = {value!r} is not allowed: environments need a whole number greater "
                "than zero. Set it to 1 or more (the MAML paper: horizon 100 for navigation, "
                "200 for half-cheetah; 20 trajectories)."
            )

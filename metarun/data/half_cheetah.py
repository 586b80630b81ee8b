"""The MAML paper's half-cheetah locomotion tasks (Finn et al. 2017, Sec. 5.3, Appendix A.2) on
gymnasium's HalfCheetah-v5 and MuJoCo's official bindings (`pip install 'metarun[rl]'`):
direction (run forward or backward, +1 or -1 with equal probability: reward direction x
velocity) and velocity (goal speed uniform in [0, 2]: reward minus the distance to it), each
minus the paper's control cost 0.05 |a|^2, horizon 200. The reference environments used the
retired mujoco-py; these read the velocity and control cost from gymnasium's `info`.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy
import torch

from metarun.data.environments import EnvironmentDataset, check_counts
from metarun.errors import ConfigError

CONTROL_COST = 0.05  # the paper's 0.1 * 0.5 |a|^2 (gymnasium's default weight is 0.1)


def _gymnasium():
    try:
        import gymnasium
        import mujoco
    except ImportError:
        raise ConfigError(
            "The half-cheetah datasets (dataset=half_cheetah_dir, dataset=half_cheetah_vel) need "
            "gymnasium and MuJoCo, which are not installed. Install the optional extra with "
            "`pip install 'metarun[rl]'` (gymnasium[mujoco] and imageio), or use "
            "dataset=navigation_2d, which needs neither."
        ) from None
    return gymnasium, mujoco


@contextlib.contextmanager
def _mujoco_warnings_to_python(mujoco):
    """MuJoCo's own handler prints and writes MUJOCO_LOG.TXT into the working directory; while
    models compile, its warnings go to Python's `warnings` instead."""
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: warnings.warn(f"MuJoCo: {message}", stacklevel=2))
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class Cheetahs:
    """One gymnasium HalfCheetah-v5 per trajectory, stepped in turn; a VectorEnvironment."""

    action_size = 6

    def __init__(self, envs: list, goals: torch.Tensor, seeds: list[int], kind: str) -> None:
        self.envs, self.kind, self.seeds, self.device = envs, kind, seeds, goals.device
        per_task = len(envs) // len(goals)
        self.goals = goals.cpu().repeat_interleave(per_task, dim=0).squeeze(-1).double()

    def reset(self) -> torch.Tensor:
        per_task = len(self.envs) // len(self.seeds)
        first = [
            env.reset(seed=self.seeds[i // per_task] * 1_000 + i % per_task)[0]
            for i, env in enumerate(self.envs)
        ]
        return torch.as_tensor(numpy.stack(first), dtype=torch.float32).to(self.device)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        actions = actions.clamp(-1.0, 1.0).double().cpu().numpy()
        observations, velocity, control = [], [], []
        for env, action in zip(self.envs, actions):
            observation, _, _, _, info = env.step(action)
            observations.append(observation)
            velocity.append(info["x_velocity"])
            control.append(info["reward_ctrl"])  # -CONTROL_COST |a|^2
        velocity_t = torch.as_tensor(numpy.array(velocity))
        reward = task_reward(self.kind, self.goals, velocity_t) + torch.as_tensor(
            numpy.array(control)
        )
        observations_t = torch.as_tensor(numpy.stack(observations), dtype=torch.float32)
        done = torch.zeros(len(self.envs), dtype=torch.bool)  # the cheetah never falls
        return tuple(t.to(self.device) for t in (observations_t, reward.float(), done))


def task_reward(kind: str, goals: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """The task's term of the reward: direction x velocity, or -|velocity - goal velocity|."""
    return goals * velocity if kind == "direction" else -(velocity - goals).abs()


class HalfCheetah(EnvironmentDataset):
    """Directions +-1 with equal probability, or goal velocities uniform in a range."""

    input_shape = (17,)
    action_size = 6
    KINDS = ("direction", "velocity")

    def __init__(
        self, kind: str, horizon: int = 200, velocity_range: tuple[float, float] = (0.0, 2.0)
    ) -> None:
        if kind not in self.KINDS:
            raise ConfigError(
                f"dataset.kind={kind!r} is not a half-cheetah task. Use direction or velocity."
            )
        check_counts(horizon, 1, 1)
        self.gymnasium, self.mujoco = _gymnasium()
        self.kind, self.horizon, self.velocity_range = kind, horizon, tuple(velocity_range)
        self._pool: list = []  # environments are reused: building one compiles the model

    def preprocess(self, observation) -> torch.Tensor:
        """An observation of HalfCheetah-v5 (17 numbers) -> the policy's input."""
        return torch.as_tensor(observation, dtype=torch.float32).reshape(17)

    def protocol(self) -> dict:
        task = {"direction": "direction +-1", "velocity": f"velocity U{list(self.velocity_range)}"}
        return {
            "dataset": f"half_cheetah ({task[self.kind]})",
            "environment": "HalfCheetah-v5",
            "horizon": self.horizon,
            "control_cost": CONTROL_COST,
        }

    def environments(self, goals: torch.Tensor, trajectories: int, seeds: list[int]) -> Cheetahs:
        needed = len(goals) * trajectories
        with _mujoco_warnings_to_python(self.mujoco), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the model file's deprecated `settotalmass`
            while len(self._pool) < needed:
                env = self.gymnasium.make("HalfCheetah-v5", ctrl_cost_weight=CONTROL_COST)
                self._pool.append(env.unwrapped)  # the horizon is ours, not a TimeLimit's
        return Cheetahs(self._pool[:needed], goals, seeds, self.kind)

    def draw_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "direction":
            return torch.randint(0, 2, (num_tasks, 1), generator=generator).double() * 2 - 1
        low, high = self.velocity_range
        return (
            torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64) * (high - low) + low
        )

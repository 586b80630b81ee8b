"""The MAML paper's half-cheetah locomotion tasks (Finn et al. 2017, Sec. 5.3, Appendix A.2) on
MuJoCo's official bindings (`pip install 'metarun[rl]'`): direction (run forward or backward, +1
or -1 with equal probability: reward direction x velocity) and velocity (goal speed uniform in
[0, 2]: reward minus the distance to it), each minus the paper's control cost 0.05 |a|^2,
horizon 200.

Two simulators (`simulator`):
- rllab: the paper's. rllab's half-cheetah, which its results come from (cbfinn/maml_rl,
  `rllab/envs/mujoco/half_cheetah_env_rand*.py`), on the same model file as gymnasium's (the
  same bodies, joints, gears and timestep 0.01): one MuJoCo step of 0.01 s per action (no frame
  skip), so 200 steps are 2 s; a 20-number observation (positions but the x slide, velocities,
  the robot's centre of mass); the velocity in the reward is the centre of mass's (rllab's
  `body_comvels`, MuJoCo's subtree linear velocity); reset noise N(0, 0.01) on positions and
  N(0, 0.1) on velocities (rllab's `mujoco_env.reset_mujoco`).
- gymnasium: HalfCheetah-v5 with the paper's control cost. Five MuJoCo steps per action (200
  steps are 10 s), a 17-number observation, the x slide's velocity in the reward, uniform
  position noise of 0.1: a harder, different benchmark, not comparable with the paper's numbers.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy
import torch

from metarun.data.environments import EnvironmentDataset, check_counts
from metarun.errors import ConfigError

CONTROL_COST = 0.05  # the paper's 0.1 * 0.5 |a|^2 (gymnasium's default weight is 0.1)
SIMULATORS = ("rllab", "gymnasium")
RLLAB_POSITION_NOISE, RLLAB_VELOCITY_NOISE = 0.01, 0.1  # std of rllab's Gaussian reset noise


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
        commands = actions.clamp(-1.0, 1.0).double().cpu().numpy()
        observations, velocity, control = [], [], []
        for env, action in zip(self.envs, commands):
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
        return observations_t.to(self.device), reward.float().to(self.device), done.to(self.device)


class RllabCheetahs:
    """rllab's half-cheetah, one MuJoCo state per trajectory, stepped in turn; a
    VectorEnvironment."""

    action_size = 6

    def __init__(
        self, mujoco, model, datas: list, goals: torch.Tensor, seeds: list[int], kind: str
    ) -> None:
        self.mujoco, self.model, self.datas = mujoco, model, datas
        self.kind, self.seeds = kind, seeds
        self.device, self.torso = goals.device, model.body("torso").id
        per_task = len(datas) // len(goals)
        self.goals = goals.cpu().repeat_interleave(per_task, dim=0).squeeze(-1).double()

    def observation(self, data) -> numpy.ndarray:
        """qpos without the x slide, qvel, the centre of mass of the torso's subtree: [20]."""
        return numpy.concatenate([data.qpos[1:], data.qvel, data.subtree_com[self.torso]])

    def observations(self) -> torch.Tensor:
        stacked = numpy.stack([self.observation(data) for data in self.datas])
        return torch.as_tensor(stacked, dtype=torch.float32).to(self.device)

    def reset(self) -> torch.Tensor:
        per_task = len(self.datas) // len(self.seeds)
        for i, data in enumerate(self.datas):
            noise = numpy.random.default_rng(self.seeds[i // per_task] * 1_000 + i % per_task)
            self.mujoco.mj_resetData(self.model, data)
            data.qpos[:] = self.model.qpos0 + RLLAB_POSITION_NOISE * noise.normal(
                size=self.model.nq
            )
            data.qvel[:] = RLLAB_VELOCITY_NOISE * noise.normal(size=self.model.nv)
            self.mujoco.mj_forward(self.model, data)
        return self.observations()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        commands = actions.clamp(-1.0, 1.0).double().cpu().numpy()
        velocity = []
        for data, action in zip(self.datas, commands):
            data.ctrl[:] = action
            self.mujoco.mj_step(self.model, data)
            self.mujoco.mj_forward(self.model, data)  # rllab reads the state after the step
            self.mujoco.mj_subtreeVel(self.model, data)
            velocity.append(data.subtree_linvel[self.torso, 0])
        velocity_t = torch.as_tensor(numpy.array(velocity))
        control = -CONTROL_COST * torch.as_tensor((commands**2).sum(-1))
        reward = task_reward(self.kind, self.goals, velocity_t) + control
        done = torch.zeros(len(self.datas), dtype=torch.bool)
        return self.observations(), reward.float().to(self.device), done.to(self.device)


def model_file(gymnasium) -> str:
    """gymnasium's half_cheetah.xml: rllab's model, reformatted (same bodies, gears, timestep)."""
    return os.path.join(os.path.dirname(gymnasium.__file__), "envs/mujoco/assets/half_cheetah.xml")


def task_reward(kind: str, goals: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """The task's term of the reward: direction x velocity, or -|velocity - goal velocity|."""
    return goals * velocity if kind == "direction" else -(velocity - goals).abs()


class HalfCheetah(EnvironmentDataset):
    """Directions +-1 with equal probability, or goal velocities uniform in a range."""

    action_size = 6
    KINDS = ("direction", "velocity")

    def __init__(
        self,
        kind: str,
        horizon: int = 200,
        velocity_range: tuple[float, float] = (0.0, 2.0),
        simulator: str = "rllab",
    ) -> None:
        if kind not in self.KINDS or simulator not in SIMULATORS:
            raise ConfigError(
                f"dataset.kind={kind!r} must be direction or velocity, and "
                f"dataset.simulator={simulator!r} rllab (the MAML paper's half-cheetah) or "
                "gymnasium (HalfCheetah-v5)."
            )
        check_counts(horizon, 1, 1)
        self.gymnasium, self.mujoco = _gymnasium()
        self.kind, self.horizon, self.velocity_range = kind, horizon, tuple(velocity_range)
        self.simulator = simulator
        self.input_shape = (20,) if simulator == "rllab" else (17,)
        self._pool: list = []  # environments are reused: building one compiles the model
        self._model = None

    def preprocess(self, observation) -> torch.Tensor:
        """An observation (20 numbers from rllab's, 17 from HalfCheetah-v5) -> the policy's
        input."""
        return torch.as_tensor(observation, dtype=torch.float32).reshape(self.input_shape)

    def protocol(self) -> dict:
        task = {"direction": "direction +-1", "velocity": f"velocity U{list(self.velocity_range)}"}
        environment = {"rllab": "rllab half-cheetah (dt 0.01)", "gymnasium": "HalfCheetah-v5"}
        return {
            "dataset": f"half_cheetah ({task[self.kind]})",
            "environment": environment[self.simulator],
            "horizon": self.horizon,
            "control_cost": CONTROL_COST,
        }

    def environments(
        self, goals: torch.Tensor, trajectories: int, seeds: list[int]
    ) -> Cheetahs | RllabCheetahs:
        needed = len(goals) * trajectories
        with _mujoco_warnings_to_python(self.mujoco), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the model file's deprecated `settotalmass`
            if self.simulator == "rllab" and self._model is None:
                self._model = self.mujoco.MjModel.from_xml_path(model_file(self.gymnasium))
            while len(self._pool) < needed:
                if self.simulator == "rllab":
                    self._pool.append(self.mujoco.MjData(self._model))
                else:
                    env = self.gymnasium.make("HalfCheetah-v5", ctrl_cost_weight=CONTROL_COST)
                    self._pool.append(env.unwrapped)  # the horizon is ours, not a TimeLimit's
        if self.simulator == "rllab":
            pool = self._pool[:needed]
            return RllabCheetahs(self.mujoco, self._model, pool, goals, seeds, self.kind)
        return Cheetahs(self._pool[:needed], goals, seeds, self.kind)

    def draw_tasks(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "direction":
            return torch.randint(0, 2, (num_tasks, 1), generator=generator).double() * 2 - 1
        low, high = self.velocity_range
        return (
            torch.rand(num_tasks, 1, generator=generator, dtype=torch.float64) * (high - low) + low
        )

"""Environment tasks: navigation dynamics, half-cheetah rewards against gymnasium, exact resume,
and the errors a wrong setting gets."""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess

import numpy
import pytest
import torch
from conftest import METARUN, REPO
from test_fault_tolerance import final_state, saved_iteration, wait_for
from test_maml_rl import TINY_NAVIGATION, tiny_policy

from metarun.data.navigation import Navigation2D, PointMasses
from metarun.errors import ConfigError

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_point_mass_clips_actions_and_is_rewarded_minus_its_distance():
    env = PointMasses(torch.tensor([[0.3, -0.2]]), trajectories=2, action_bound=0.1, tolerance=0.01)
    assert torch.equal(env.reset(), torch.zeros(2, 2))
    position, reward, done = env.step(torch.tensor([[5.0, -5.0], [0.05, 0.0]]))
    assert torch.allclose(position, torch.tensor([[0.1, -0.1], [0.05, 0.0]]))
    expected = -torch.tensor([[0.2, 0.1], [0.25, 0.2]]).norm(dim=-1)
    assert torch.allclose(reward, expected) and not done.any()


def test_point_mass_scales_actions_before_clipping_as_the_papers_code():
    env = PointMasses(torch.zeros(1, 2), 1, action_bound=0.1, tolerance=0.01, action_scale=0.1)
    env.reset()
    position, _, _ = env.step(torch.tensor([[0.5, -5.0]]))
    assert torch.allclose(position, torch.tensor([[0.05, -0.1]]))


def test_point_mass_episode_ends_within_the_tolerance_of_its_goal():
    env = PointMasses(torch.tensor([[0.1, 0.0]]), trajectories=1, action_bound=0.1, tolerance=0.01)
    env.reset()
    assert env.step(torch.tensor([[0.095, 0.0]]))[2].item()  # 0.005 from the goal


def test_rollout_masks_every_step_after_the_goal_is_reached():
    family = Navigation2D(horizon=5)
    tasks = family.sampler("test", 1, 1, 1, "cpu").build(
        torch.tensor([[0.1, 0.0, 7.0]], dtype=torch.float64)
    )
    straight = lambda obs: (
        torch.full_like(obs, 1.0) * torch.tensor([1.0, 0.0]),
        torch.full_like(obs, -30.0),
    )
    rollout = tasks.rollout(straight, trajectories=1, round=0)
    assert rollout.alive[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert rollout.returns.item() == pytest.approx(0.0, abs=1e-5)


def test_navigation_goals_come_from_the_square():
    goals = Navigation2D().draw_tasks(1000, torch.Generator().manual_seed(0))
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.std() > 0.25


@pytest.mark.parametrize(
    "setting", ["horizon=0", "horizon=-3", "action_bound=0", "goal_range=[0.5,-0.5]"]
)
def test_impossible_navigation_settings_are_named(setting):
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=f"dataset.{key}"):
        Navigation2D(**{key: json.loads(value)})


def test_trajectory_counts_must_be_positive():
    with pytest.raises(ConfigError, match="task.queries"):
        Navigation2D().sampler("train", 1, 20, 0, torch.device("cpu"))


def test_half_cheetah_without_gymnasium_names_the_extra(monkeypatch):
    from metarun.data import half_cheetah

    real_import = builtins.__import__

    def no_gymnasium(name, *args, **kwargs):
        if name in ("gymnasium", "mujoco"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gymnasium)
    with pytest.raises(ConfigError, match=r"metarun\[rl\]"):
        half_cheetah.HalfCheetah("direction")


@pytest.mark.parametrize("kind", ["direction", "velocity"])
def test_half_cheetah_rewards_match_gymnasium_terms(kind, tmp_path, monkeypatch):
    pytest.importorskip("mujoco", reason="MuJoCo is not installed (pip install 'metarun[rl]')")
    gymnasium = pytest.importorskip("gymnasium", reason="pip install 'metarun[rl]'")
    import mujoco

    from metarun.data.half_cheetah import CONTROL_COST, HalfCheetah, _mujoco_warnings_to_python

    monkeypatch.chdir(tmp_path)
    goal = -1.0 if kind == "direction" else 1.3
    family = HalfCheetah(kind, horizon=5, simulator="gymnasium")
    env = family.environments(torch.tensor([[goal]]), trajectories=1, seeds=[3])
    assert not list(tmp_path.iterdir()), "MuJoCo wrote its log into the working directory"
    with _mujoco_warnings_to_python(mujoco), pytest.warns(UserWarning, match="MuJoCo"):
        reference = gymnasium.make("HalfCheetah-v5", ctrl_cost_weight=CONTROL_COST)
    assert torch.allclose(env.reset()[0], torch.as_tensor(reference.reset(seed=3_000)[0]).float())
    actions = torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) * 3 - 1.5
    for action in actions:
        _, reward, done = env.step(action.unsqueeze(0))
        clipped = action.clamp(-1, 1).double().numpy()
        _, gym_reward, _, _, info = reference.step(clipped)
        control = -CONTROL_COST * float((clipped**2).sum())  # the paper's control cost
        assert info["reward_ctrl"] == pytest.approx(control)
        assert gym_reward == pytest.approx(info["x_velocity"] + control)  # forward running
        velocity = info["x_velocity"]
        task = goal * velocity if kind == "direction" else -abs(velocity - goal)
        assert reward.item() == pytest.approx(task + control, abs=1e-4)
        assert not done.any()


def rllab_cheetah(kind: str, goal: float, trajectories: int = 1):
    pytest.importorskip("mujoco", reason="MuJoCo is not installed (pip install 'metarun[rl]')")
    from metarun.data.half_cheetah import HalfCheetah

    family = HalfCheetah(kind, horizon=5, simulator="rllab")
    return family, family.environments(torch.tensor([[goal]]), trajectories, seeds=[3])


def centre_of_mass_velocity(model, data) -> float:
    """rllab's `body_comvels` of the torso (mujoco_py's `_compute_subtree`): the mass-weighted
    mean of every body's object velocity, the torso's subtree being the whole robot."""
    import mujoco

    momentum, mass = 0.0, 0.0
    for body in range(1, model.nbody):
        velocity = numpy.zeros(6)
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, body, velocity, 0)
        momentum += model.body_mass[body] * velocity[3]
        mass += model.body_mass[body]
    return momentum / mass


@pytest.mark.parametrize("kind", ["direction", "velocity"])
def test_rllab_half_cheetah_rewards_the_centre_of_mass_velocity_after_one_step_of_dt(kind):
    goal = -1.0 if kind == "direction" else 1.3
    family, env = rllab_cheetah(kind, goal)
    first = env.reset()
    assert first.shape == (1, 20) and family.input_shape == (20,)
    actions = torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) * 3 - 1.5
    for step, action in enumerate(actions, start=1):
        observation, reward, done = env.step(action.unsqueeze(0))
        data = env.datas[0]
        assert data.time == pytest.approx(0.01 * step)  # dt 0.01, no frame skip
        velocity = centre_of_mass_velocity(env.model, data)
        control = -0.05 * float((action.clamp(-1, 1) ** 2).sum())
        task = goal * velocity if kind == "direction" else -abs(velocity - goal)
        assert reward.item() == pytest.approx(task + control, abs=1e-4)
        expected = numpy.concatenate([data.qpos[1:], data.qvel, data.subtree_com[1]])
        torch.testing.assert_close(observation[0], torch.as_tensor(expected).float())
        assert not done.any()


def test_rllab_half_cheetah_resets_with_gaussian_noise_of_its_scales():
    _, env = rllab_cheetah("direction", 1.0, trajectories=400)
    env.reset()
    positions = numpy.stack([data.qpos - env.model.qpos0 for data in env.datas])
    velocities = numpy.stack([data.qvel for data in env.datas])
    assert positions.std() == pytest.approx(0.01, rel=0.05)
    assert velocities.std() == pytest.approx(0.1, rel=0.05)


def test_summary_has_the_return_after_each_step():
    from metarun.evaluator import describe, summarise

    scores = torch.tensor([[-10.0, -5.0], [-12.0, -7.0], [-11.0, -6.0]])
    summary = summarise(scores, "return", "after_steps")
    assert summary["return"]["mean"] == pytest.approx(-6.0)
    assert [s["mean"] for s in summary["return_after_steps"]] == pytest.approx([-11.0, -6.0])
    assert "after 0 steps -11.00" in describe(summary)


def test_trpo_with_a_supervised_algorithm_is_refused(tiny_cfg, tmp_path):
    from metarun import run

    cfg = tiny_cfg("optimizer=trpo", "trainer.iterations=1")
    with pytest.raises(ConfigError, match="optimizer=trpo"):
        run.train(cfg, tmp_path)


def test_environment_tasks_train_in_one_process():
    from test_maml_rl import tiny_tasks

    from metarun.distributed import World
    from metarun.engine import Engine

    with pytest.raises(ConfigError, match="one process"):
        Engine("loop", world=World(0, 2)).meta_backward(tiny_policy(), tiny_tasks())


def navigation_command(run_dir, *extra: str) -> list[str]:
    return [
        METARUN,
        "train",
        *TINY_NAVIGATION,
        "trainer.iterations=16",
        "trainer.ckpt_every=2",
        "trainer.log_every=1",
        "trainer.val_every=8",
        "trainer.val_episodes=4",
        "eval.episodes=4",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_rl_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(navigation_command(straight), cwd=REPO, env=ENV, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    process = subprocess.Popen(
        navigation_command(killed),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: saved_iteration(killed) >= 4, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert saved_iteration(killed) < 16, "killed before the end"
    resumed = subprocess.run(
        navigation_command(killed, "trainer.resume=auto"),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr[-2000:]
    (model_a, rows_a), (model_b, rows_b) = final_state(straight), final_state(killed)
    assert rows_a == rows_b
    assert all(torch.equal(model_a[name], model_b[name]) for name in model_a)
    results = [json.loads((run / "results.json").read_text()) for run in (straight, killed)]
    assert results[0]["return_after_steps"] == results[1]["return_after_steps"]


@pytest.fixture(scope="module")
def navigation_run(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from metarun import run
    from metarun.build import CONFIG_DIR

    folder = tmp_path_factory.mktemp("navigation")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            [
                *TINY_NAVIGATION,
                "trainer.iterations=1",
                "eval.episodes=4",
                "trainer.val_episodes=4",
                "eval.inner_steps=1",
            ],
        )
    run.train(cfg, folder)
    return folder


def test_eval_of_a_navigation_run_reports_returns_after_each_step(navigation_run):
    from hydra import compose, initialize_config_dir

    from metarun import retest
    from metarun.build import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", [f"run_dir={navigation_run}", "eval.inner_steps=3"])
    results = retest.evaluate(cfg, ["eval.inner_steps=3"])
    assert len(results["return_after_steps"]) == 4 and results["protocol"]["inner_steps_test"] == 3
    assert results["protocol"]["horizon"] == 10


def test_a_supervised_checkpoint_is_refused_by_an_rl_run_and_the_reverse(
    navigation_run, tiny_cfg, tmp_path
):
    from hydra import compose, initialize_config_dir

    from metarun import retest, run
    from metarun.build import CONFIG_DIR

    supervised = tmp_path / "supervised"
    run.train(
        tiny_cfg("trainer.iterations=1", "eval.episodes=2", "trainer.val_episodes=2"), supervised
    )
    pairs = [(navigation_run, supervised), (supervised, navigation_run)]
    for run_dir, other in pairs:
        checkpoint = other / "checkpoints" / "best.pt"
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("eval", [f"run_dir={run_dir}", f"checkpoint={checkpoint}"])
        with pytest.raises(ConfigError, match="environment tasks"):
            retest.evaluate(cfg)


def test_plot_draws_returns_per_step_and_navigation_paths(navigation_run, tmp_path):
    from metarun import pictures, plot
    from metarun.report import find_runs

    runs = find_runs([navigation_run])
    drawn = [
        *plot.learning_curves(runs, tmp_path),
        *plot.adaptation_plot(runs, tmp_path),
        *pictures.path_pictures(runs, tmp_path),
    ]
    names = sorted(path.name for path in drawn)
    assert names == ["adaptation.png", "learning_curves.png", f"paths_{navigation_run.name}.png"]
    assert all(path.stat().st_size > 1000 for path in drawn)
    rows = (navigation_run / "metrics.jsonl").read_text()
    assert "train_return_before" in rows


@pytest.mark.parametrize(
    ("algo", "dataset", "message"),
    [("maml", "navigation_2d", "algo=maml_rl"), ("maml_rl", "sinusoid", "environment dataset")],
)
def test_an_algorithm_of_the_other_task_kind_is_refused(algo, dataset, message):
    from hydra import compose, initialize_config_dir

    from metarun.build import CONFIG_DIR, build, build_algorithm

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", [f"algo={algo}", f"dataset={dataset}", "backbone=mlp"])
    with pytest.raises(ConfigError, match=message):
        build_algorithm(cfg, build("dataset", cfg.dataset))


def test_loaded_rl_model_explains_how_it_adapts(navigation_run):
    import metarun

    model = metarun.load(navigation_run)
    with pytest.raises(ConfigError, match="collecting trajectories"):
        model.adapt(torch.zeros(1, 2), torch.zeros(1, 2))
    tasks = model.dataset.sampler("test", 1, 2, 2, "cpu").sample(2, torch.Generator())
    weights, _ = model.algo.adapt_policies(model.algo.params(), tasks, 1)
    assert weights["log_std"].shape == (2, 2)


def test_validation_tasks_are_not_the_test_tasks(tmp_path):
    # Navigation's splits share one goal distribution: only the seed keeps them apart. The same
    # model validated and tested on identical tasks would score identically.
    from hydra import compose, initialize_config_dir

    from metarun import run
    from metarun.build import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            [
                *TINY_NAVIGATION,
                "trainer.iterations=0",
                "eval.episodes=6",
                "trainer.val_episodes=6",
                "eval.inner_steps=0",
            ],
        )
    results = run.train(cfg, tmp_path)
    assert results["training"]["best_val_return"] != results["return"]["mean"]

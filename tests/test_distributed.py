"""Several processes share each meta-batch: the result must be the one-process result."""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, TINY

from metarun.build import build, build_algorithm
from metarun.distributed import World
from metarun.engine import make_engine
from metarun.errors import ConfigError
from metarun.launch import free_port
from metarun.runtime import seed_everything

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
MAML = ["algo=maml", "algo.first_order=false", "algo.inner_steps=2", "task.meta_batch_size=4"]
MAML_VMAP = [*MAML, "engine=vmap"]  # what engine=auto does with small tasks on a long CPU run
PROTONET = ["algo=protonet", "bn=running", "task.meta_batch_size=4"]


def meta_gradient(cfg, world: World) -> dict[str, torch.Tensor]:
    """One meta-batch's gradient (and any running statistics) from a fresh seeded model."""
    seed_everything(cfg.seed)
    dataset = build("dataset", cfg.dataset)
    algo = build_algorithm(cfg, dataset)
    engine = make_engine(cfg, algo, torch.device("cpu"), world)
    sampler = dataset.sampler(
        "train", cfg.task.ways, cfg.task.shots, cfg.task.queries, torch.device("cpu")
    )
    engine.meta_backward(
        algo, sampler.sample(cfg.task.meta_batch_size, torch.Generator().manual_seed(1))
    )
    return {
        **{name: p.grad.clone() for name, p in algo.named_parameters()},
        **{name: b.clone() for name, b in algo.named_buffers()},
    }


def _rank_meta_gradient(rank: int, cfg, rendezvous: str, output: str) -> None:
    faulthandler.enable()  # a rank that aborts in C++ (seen once in a full run) shows where
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        result = meta_gradient(cfg, World.current())
        if rank == 0:
            torch.save(result, output)
        dist.barrier()  # both ranks are past every collective before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, atol",
    # vmapped, each process convolves 2 tasks' images at once instead of 4, and the kernels
    # block their sums differently: float32 rounding (1.7e-6 seen, on weights' gradients ~0.4)
    [(MAML, 1e-6), (MAML_VMAP, 1e-5), (PROTONET, 1e-6)],
    ids=["maml_second_order", "maml_vmapped", "protonet_running_bn"],
)
def test_meta_gradient_over_two_processes_equals_one_process(setting, atol, make_cfg, tmp_path):
    cfg = make_cfg(*TINY, *setting)
    alone = meta_gradient(cfg, World())
    mp.spawn(
        _rank_meta_gradient,
        args=(cfg, str(tmp_path / "rendezvous"), str(tmp_path / "shared.pt")),
        nprocs=2,
    )
    shared = torch.load(tmp_path / "shared.pt", weights_only=True)
    assert shared.keys() == alone.keys()
    for name in alone:
        torch.testing.assert_close(shared[name], alone[name], rtol=1e-5, atol=atol, msg=name)


def train_command(processes: int, run_dir: Path, *overrides: str) -> list[str]:
    launcher = (
        [TORCHRUN, "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    return [
        *launcher,
        "-m",
        "metarun",
        "train",
        *TINY,
        "optimizer=sgd",
        "trainer.iterations=3",
        "trainer.val_every=1",
        "trainer.log_every=1",
        "eval.episodes=7",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting", [MAML, PROTONET], ids=["maml_second_order", "protonet_running_bn"]
)
def test_torchrun_training_equals_one_process(setting, cli_env, tmp_path):
    runs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"processes_{processes}"
        done = subprocess.run(
            train_command(processes, run_dir, *setting),
            capture_output=True,
            text=True,
            env=cli_env,
            cwd=REPO,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("test accuracy") == 1  # rank 0 alone reports
        runs[processes] = run_dir
    one, two = (torch.load(runs[p] / "checkpoints" / "last.pt", weights_only=True) for p in (1, 2))
    assert one["iteration"] == two["iteration"] == 3
    for name in one["model"]:
        torch.testing.assert_close(
            two["model"][name], one["model"][name], rtol=1e-5, atol=1e-6, msg=name
        )
    rows = {p: (runs[p] / "metrics.jsonl").read_text().splitlines() for p in (1, 2)}
    assert len(rows[2]) == len(rows[1]) == 3  # one row per iteration, written once
    tested = {p: json.loads((runs[p] / "results.json").read_text()) for p in (1, 2)}
    assert (
        tested[2]["episodes"] == tested[1]["episodes"] == 7
    )  # 4 + 3 episodes gathered, none twice
    assert tested[2]["accuracy"]["mean"] == pytest.approx(tested[1]["accuracy"]["mean"], abs=1e-6)
    assert tested[2]["training"]["processes"] == 2


def metarun_command(processes: int, run_dir: Path, *overrides: str) -> list[str]:
    """`metarun train` starting its own processes (processes=N), as a user types it."""
    return [sys.executable, *train_command(1, run_dir, *overrides)[1:], f"processes={processes}"]


def assert_same_model(one: dict, two: dict) -> None:
    for name in one["model"]:
        torch.testing.assert_close(
            two["model"][name], one["model"][name], rtol=1e-5, atol=1e-6, msg=name
        )


@pytest.mark.slow
def test_processes_setting_trains_as_one_process(cli_env, tmp_path):
    runs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"processes_{processes}"
        done = subprocess.run(
            metarun_command(processes, run_dir, *MAML),
            capture_output=True,
            text=True,
            env=cli_env,
            cwd=REPO,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("test accuracy") == 1
        assert f"{processes} process{'es' if processes > 1 else ''} x 1 thread" in done.stderr
        runs[processes] = run_dir
    one, two = (torch.load(runs[p] / "checkpoints" / "last.pt", weights_only=True) for p in (1, 2))
    assert_same_model(one, two)
    tested = {p: json.loads((runs[p] / "results.json").read_text()) for p in (1, 2)}
    assert tested[2]["training"]["processes"] == 2 and tested[1]["training"]["processes"] == 1
    assert len(tested[2]["training"]["peak_memory_mb"]) == 2  # each process's own peak
    assert tested[2]["accuracy"]["mean"] == pytest.approx(tested[1]["accuracy"]["mean"], abs=1e-6)
    assert (runs[2] / "workers" / "rank_1.log").read_text() == ""  # rank 1 printed nothing


@pytest.mark.slow
def test_a_stop_signal_stops_every_process_and_resume_continues(cli_env, tmp_path):
    longer = [*MAML, "trainer.iterations=30", "trainer.ckpt_every=10", "trainer.val_every=10"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = subprocess.run(
        metarun_command(2, straight, *longer),
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    process = subprocess.Popen(
        metarun_command(2, stopped, *longer),
        cwd=REPO,
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = stopped / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-3000:]
    assert stderr.count("Stopped by a signal") == 1
    last = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)
    assert 3 <= last["iteration"] < 30
    resumed = subprocess.run(
        [*metarun_command(2, stopped, *longer), "trainer.resume=auto"],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=REPO,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at iteration {last['iteration']}" in resumed.stderr
    one, two = (
        torch.load(f / "checkpoints" / "last.pt", weights_only=True)["model"]
        for f in (straight, stopped)
    )
    for name in one:  # as bit-identical as a resumed single process
        assert torch.equal(one[name], two[name]), name


def test_a_meta_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(
        ConfigError, match="task.meta_batch_size=3 cannot be split evenly over 2 processes"
    ):
        World(rank=0, size=2).check_divides(3, "task.meta_batch_size")


def test_each_rank_takes_a_contiguous_share():
    items = torch.arange(7)
    shares = [World(rank, 2).my_share(items) for rank in range(2)]
    assert torch.equal(torch.cat(shares), items)
    assert [len(s) for s in shares] == [4, 3]


def test_a_process_leaves_the_group_before_the_interpreter_shuts_down(tmp_path):
    """atexit runs the last registered first: a check registered before joining runs after the
    process has left."""
    script = (
        "import atexit, torch.distributed as dist\n"
        "from metarun import distributed\n"
        "atexit.register(lambda: print('still joined' if dist.is_initialized() else 'left'))\n"
        "distributed.start()\n"
        "print('joined' if dist.is_initialized() else 'not joined')\n"
    )
    rendezvous = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **rendezvous},
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["joined", "left"]


def test_one_process_is_a_world_of_one():
    world, grad = World(), torch.ones(3)
    assert (
        world.is_main
        and world.mean(1.5, 2.5) == (1.5, 2.5)
        and torch.equal(world.gather(grad), grad)
    )


def test_a_sweep_inside_torchrun_is_refused(cli_env):
    done = subprocess.run(
        [sys.executable, "-m", "metarun", "train", "-m", "algo=maml,fomaml"],
        capture_output=True,
        text=True,
        env={**cli_env, "WORLD_SIZE": "2"},
        cwd=REPO,
        timeout=120,
    )
    assert (
        done.returncode == 2
        and "cannot run inside torchrun" in done.stderr
        and "Traceback" not in done.stderr
    )

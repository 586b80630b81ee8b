"""How a run uses the machine: the processes, threads and compile rules `auto` follows."""

from __future__ import annotations

import pytest
import torch

from metarun import batchnorm, launch, run
from metarun.algorithms.maml import MAML
from metarun.algorithms.protonet import ProtoNet
from metarun.auto_rules import COMPILE_PAYS_AFTER, MEMORY_PER_PROCESS, MIN_ITERATIONS
from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.build import build
from metarun.compiling import resolve_compile
from metarun.distributed import World
from metarun.engine import resolve_mode
from metarun.errors import ConfigError
from metarun.runtime import seed_everything

CPU = torch.device("cpu")
OMNIGLOT = (1, 28, 28)


def conv_maml(shape=OMNIGLOT):
    return MAML(Conv4(shape, hidden=4, blocks=2), 5, inner_lr=0.4, inner_steps=1)


def a_machine(monkeypatch, cores: int) -> None:
    """This process sees `cores` cores, memory enough for a process on each, no OMP_NUM_THREADS."""
    monkeypatch.setattr(launch, "cores", lambda: cores)
    monkeypatch.setattr(launch, "memory", lambda: cores * MEMORY_PER_PROCESS)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.fixture
def four_cores(monkeypatch):
    a_machine(monkeypatch, 4)


def processes(
    algo=None,
    *,
    setting="auto",
    device=CPU,
    shape=OMNIGLOT,
    environments=False,
    meta_batch_size=32,
    iterations=60000,
    threads="auto",
) -> int:
    return launch.plan_processes(
        setting,
        device=device,
        algo=algo or conv_maml(shape),
        input_shape=shape,
        environments=environments,
        meta_batch_size=meta_batch_size,
        iterations=iterations,
        threads_setting=threads,
    )


def test_a_long_conv_run_on_small_images_takes_a_process_per_core(four_cores):
    assert processes() == 4


def test_processes_are_capped_by_the_memory_they_may_use(four_cores, monkeypatch):
    monkeypatch.setattr(launch, "memory", lambda: 2 * MEMORY_PER_PROCESS + 2**30)
    assert processes() == 2  # of the 4 cores


def test_a_cgroup_limit_below_the_machines_memory_is_what_a_run_may_use(tmp_path):
    machine = launch.memory(limits=[])
    limited, unlimited = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    limited.write_text(f"{2**30}\n")
    unlimited.write_text("max\n")
    assert launch.memory([limited, unlimited]) == min(2**30, machine)
    assert launch.memory([unlimited, tmp_path / "absent"]) == machine


def test_the_process_count_divides_the_meta_batch(four_cores):
    assert processes(meta_batch_size=6) == 3
    assert processes(meta_batch_size=1) == 1


@pytest.mark.parametrize(
    "case",
    [
        dict(shape=(3, 84, 84)),  # large images: threads use the cores as well
        dict(iterations=MIN_ITERATIONS - 1),  # starting workers would not pay
        dict(algo=MAML(MLP((1,), [8]), 1, inner_lr=0.01, inner_steps=1), shape=(1,)),
        dict(environments=True),
    ],
    ids=["large_images", "short_run", "mlp", "environments"],
)
def test_one_process_with_every_core_as_threads_otherwise(four_cores, case):
    assert processes(**case) == 1
    assert launch.plan_threads("auto", 1) == 4


def test_threads_per_process_make_up_the_cores(four_cores, monkeypatch):
    assert processes(threads=2) == 2 and launch.plan_threads("auto", 2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's thread count is an explicit one
    assert processes() == 4 and launch.plan_threads("auto", 4) == 1


def test_an_explicit_setting_always_wins(four_cores):
    assert processes(setting=3, shape=(3, 84, 84), iterations=5) == 3
    assert launch.plan_threads(3, 4) == 3


def test_cuda_takes_one_process_per_gpu(four_cores, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert processes(device=torch.device("cuda"), shape=(3, 84, 84)) == 2
    assert processes(device=torch.device("cuda:1")) == 1


@pytest.mark.parametrize("setting", [0, -1, "two", True])
def test_a_count_that_is_not_one_is_refused(setting):
    with pytest.raises(ConfigError, match="Use processes=auto or a count >= 1"):
        processes(setting=setting)


def test_compile_auto_compiles_a_conv_maml_run_that_repays_it():
    algo = conv_maml()
    assert resolve_compile("auto", "loop", algo, COMPILE_PAYS_AFTER)
    assert not resolve_compile("auto", "loop", algo, 20)  # a smoke run never compiles
    assert not resolve_compile("auto", "loop", algo, 0)  # evaluation


def test_compile_auto_leaves_untested_algorithms_and_running_statistics_alone():
    protonet = ProtoNet(Conv4(OMNIGLOT, hidden=4, blocks=2), 5)
    assert not resolve_compile("auto", "loop", protonet, 60000)
    algo = conv_maml()
    batchnorm.use_mode(algo, "running")
    assert not resolve_compile("auto", "loop", algo, 60000)


def test_compile_auto_compiles_vmap_without_convolutions_and_explicit_wins():
    mlp = MAML(MLP((1,), [8]), 1, inner_lr=0.01, inner_steps=1)
    assert resolve_compile("auto", "vmap", mlp, 0)
    assert not resolve_compile("auto", "vmap", mlp, 70000, shapes_vary=True)  # one per shape
    assert resolve_compile("auto", "vmap", conv_maml(), COMPILE_PAYS_AFTER)
    assert not resolve_compile(False, "loop", conv_maml(), 60000)
    assert resolve_compile(True, "loop", conv_maml(), 1)


def test_engine_auto_vmaps_small_conv_tasks_on_a_cpu_only_when_compiled():
    cpu, tiny_task, large_task = torch.device("cpu"), 5 * (1 + 1), 5 * (1 + 15)
    assert resolve_mode("auto", conv_maml(), cpu, tiny_task, COMPILE_PAYS_AFTER) == "vmap"
    assert resolve_mode("auto", conv_maml(), cpu, large_task, COMPILE_PAYS_AFTER) == "loop"
    assert resolve_mode("auto", conv_maml(), cpu, tiny_task, 20) == "loop"  # not compiled
    protonet = ProtoNet(Conv4(OMNIGLOT, hidden=4, blocks=2), 5)  # not checked compiled
    assert resolve_mode("auto", protonet, cpu, tiny_task, 60000) == "loop"
    assert resolve_mode("auto", conv_maml(), torch.device("cuda"), large_task, 0) == "vmap"
    assert resolve_mode("loop", conv_maml(), cpu, tiny_task, 60000) == "loop"


def test_a_long_run_asks_for_workers_before_training(tiny_cfg, tmp_path, monkeypatch):
    a_machine(monkeypatch, 2)
    cfg = tiny_cfg("trainer.iterations=1000")
    with pytest.raises(launch.StartWorkers) as plan:
        run.train(cfg, tmp_path, start_workers=True)
    assert (plan.value.processes, plan.value.threads) == (2, 1)
    assert not (tmp_path / "checkpoints").exists()


class Planned(Exception):
    """Raised in place of training, carrying the engine the run planned."""


def plan_of_resumed_run(tiny_cfg, run_dir, monkeypatch, iterations: int):
    """Trains 2 iterations, then resumes the same folder as a run of `iterations` on 2 cores,
    so that fewer than `iterations` are left."""
    a_machine(monkeypatch, 2)
    auto = "compile=auto"  # the runtime default, which debug=tiny turns off
    run.train(tiny_cfg("trainer.iterations=2", auto), run_dir)

    def planned(cfg, run_dir, state, engine, *rest):
        raise Planned(engine)

    monkeypatch.setattr(run, "_fit", planned)
    resumed = tiny_cfg(f"trainer.iterations={iterations}", "trainer.resume=auto", auto)
    return lambda start_workers: run.train(resumed, run_dir, start_workers=start_workers)


def test_a_resumed_run_starts_the_workers_of_the_whole_run(tiny_cfg, tmp_path, monkeypatch):
    resume = plan_of_resumed_run(tiny_cfg, tmp_path, monkeypatch, MIN_ITERATIONS + 1)
    with pytest.raises(launch.StartWorkers) as plan:
        resume(start_workers=True)
    assert plan.value.processes == 2


def test_a_resumed_run_compiles_as_the_whole_run(tiny_cfg, tmp_path, monkeypatch):
    resume = plan_of_resumed_run(tiny_cfg, tmp_path, monkeypatch, COMPILE_PAYS_AFTER + 1)
    with pytest.raises(Planned) as plan:
        resume(start_workers=False)
    assert plan.value.args[0].compile


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["processes=2", "task.meta_batch_size=3"], "task.meta_batch_size=3 cannot be split"),
        (["processes=2", "algo=baseline", "bn=running"], "Baseline trains on labelled batches"),
        (["processes=2", "threads=0"], "threads=0 is not allowed"),
    ],
    ids=["uneven_meta_batch", "labelled_batches", "no_threads"],
)
def test_impossible_process_settings_are_named(tiny_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run.train(tiny_cfg(*overrides), tmp_path, start_workers=True)


def test_a_sweep_job_does_not_start_workers(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="a sweep \\(-m\\) runs each job in one process"):
        run.train(tiny_cfg("processes=2"), tmp_path, start_workers=False)


def test_the_banner_says_when_omp_num_threads_decided(four_cores, monkeypatch):
    assert launch.environment_reason("auto", 1, 4) == ""
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert processes() == 1  # the variable's threads leave no core for a second process
    assert launch.environment_reason("auto", 1, 4) == (
        "threads from $OMP_NUM_THREADS=4, which keeps processes=auto to one where it would "
        "start 4: unset it to use every core"
    )
    assert launch.environment_reason("auto", 1, 1) == "threads from $OMP_NUM_THREADS=4"
    assert launch.environment_reason(2, 1, 4) == ""  # a setting decided


def test_a_run_under_omp_num_threads_says_why_it_keeps_one_process(
    tiny_cfg, tmp_path, monkeypatch, capsys
):
    a_machine(monkeypatch, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")

    def planned(cfg, run_dir, state, engine, *rest):
        raise Planned(engine)  # after the banner, before any training

    monkeypatch.setattr(run, "_fit", planned)
    with pytest.raises(Planned):
        run.train(tiny_cfg(f"trainer.iterations={MIN_ITERATIONS}"), tmp_path, start_workers=True)
    assert "keeps processes=auto to one where it would start 2" in capsys.readouterr().err


def test_the_workers_start_from_what_this_process_built(tiny_cfg, tmp_path, monkeypatch):
    """Rank 0 trains with the dataset and model it built before starting the workers, the
    generators where building left them: as if it had built them again, without doing so."""
    a_machine(monkeypatch, 2)
    cfg = tiny_cfg(f"trainer.iterations={MIN_ITERATIONS}")
    with pytest.raises(launch.StartWorkers) as plan:
        run.train(cfg, tmp_path, start_workers=True)
    dataset, algo, states = plan.value.built
    seed_everything(cfg.seed)
    rebuilt = run._starting_model(cfg, build("dataset", cfg.dataset), CPU, World.current())
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(algo.state_dict()[name], tensor), name
    assert torch.equal(states["torch"], torch.get_rng_state())

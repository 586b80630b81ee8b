"""How a run uses the machine: worker processes, threads per process, and starting the workers.

On a CPU, `processes=auto` gives one process per core (as many as divide the meta-batch, and at
most one per MEMORY_PER_PROCESS of the memory this process may use) to episodic meta-training
of a convolutional model on images of at most SMALL_IMAGE pixels a side, for runs of at least
MIN_ITERATIONS, and one process with every core as threads otherwise; models without
convolutions keep one process (the sinusoid MLP's compiled, vmapped meta-batch takes about half
a millisecond, too little to share). The thresholds and the measurements behind them are in
metarun.auto_rules. On CUDA it gives one process per visible GPU (each vmaps its share of the
meta-batch). An explicit setting always wins; under torchrun the world torchrun started is kept.

metarun starts the workers itself rather than through torchrun: after a stop signal torchrun
gives its workers a fixed time before killing them and exits with its own traceback, while a
stopped metarun run must finish its iteration, write its checkpoint and exit with status 75.
Here the process the user started becomes rank 0: signals reach it as they would a single
process, and the other ranks stop with it at the same iteration (World.any).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from metarun.auto_rules import MEMORY_PER_PROCESS, MIN_ITERATIONS, SMALL_IMAGE
from metarun.backbones import has_convolutions
from metarun.data.environments import EnvironmentDataset
from metarun.distributed import World
from metarun.engine import sequential_error
from metarun.errors import ConfigError

# A container's memory limit, cgroup v2 then v1 ("max" or a huge number when there is none).
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


class StartWorkers(Exception):
    """Raised by a lone process whose plan asks for several: the caller starts the others, then
    trains as rank 0 with `built` (what this process had built, set by run.train), so that
    nothing is built twice."""

    def __init__(self, processes: int, threads: int) -> None:
        super().__init__(f"{processes} processes of {threads} threads")
        self.processes, self.threads = processes, threads
        self.built: tuple | None = None


def cores() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cgroup cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory(limits: Sequence[Path] = CGROUP_LIMITS) -> int:
    """Bytes of memory this process may use: the machine's, or its container's (cgroup) limit
    when lower, as on a cluster job that asked for less memory than the node has."""
    usable = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in limits:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            usable = min(usable, int(text))
    return usable


def _count(setting: str, value) -> int | None:
    """An explicit count, or None for auto."""
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{setting}={value!r} is not allowed. Use {setting}=auto or a count >= 1."
        )
    return value


def _omp_threads() -> int | None:
    """$OMP_NUM_THREADS, the thread count a user or a launcher set for this process, if any."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def plan_processes(
    setting,
    *,
    device: torch.device,
    algo,
    input_shape: Sequence[int],
    environments: bool,
    meta_batch_size: int,
    iterations: int,
    threads_setting="auto",
) -> int:
    """How many processes meta-train this run (the rule in the module docstring)."""
    explicit = _count("processes", setting)
    if explicit is not None:
        return explicit
    if device.type == "cuda":
        available = torch.cuda.device_count() if device.index is None else 1
    else:
        threads = _count("threads", threads_setting) or _omp_threads() or 1
        small_images = len(input_shape) == 3 and max(input_shape[1:]) <= SMALL_IMAGE
        worth_it = (
            algo.capabilities.learns_from == "episodes"
            and not environments
            and small_images
            and not getattr(algo, "sequential_setting", None)
            and has_convolutions(algo)
            and iterations >= MIN_ITERATIONS
        )
        available = min(cores() // threads, memory() // MEMORY_PER_PROCESS) if worth_it else 1
    return max(p for p in range(1, max(available, 1) + 1) if meta_batch_size % p == 0)


def environment_reason(threads_setting, processes: int, processes_without_it: int) -> str:
    """Why a lone process computes as it does when $OMP_NUM_THREADS, not a setting, fixed its
    threads ("" otherwise). Many cluster profiles export it; it also keeps processes=auto from
    sharing the cores when `processes_without_it` (the plan without the variable) is larger."""
    omp = _omp_threads()
    if threads_setting != "auto" or omp is None or processes > 1:
        return ""
    reason = f"threads from $OMP_NUM_THREADS={omp}"
    if processes_without_it > processes:
        reason += (
            f", which keeps processes=auto to one where it would start {processes_without_it}: "
            "unset it to use every core"
        )
    return reason


def plan_threads(setting, processes: int) -> int:
    """Intra-op threads per process: explicit, else $OMP_NUM_THREADS, else cores / processes."""
    return _count("threads", setting) or _omp_threads() or max(1, cores() // processes)


def use_the_machine(
    cfg: DictConfig, dataset, algo, device: torch.device, world: World, start_workers: bool
) -> str:
    """Sets this process's threads by the rule above for the whole run (a resumed run plans as
    the run it continues, so it computes bit for bit as that run); a lone process whose plan
    asks for several raises StartWorkers before anything is trained. Returns what the banner
    says about the choice when an environment variable made it (environment_reason)."""
    environments = isinstance(dataset, EnvironmentDataset)
    if world.size > 1:
        processes = world.size  # torchrun's, or the workers this run started
    elif not start_workers and cfg.processes == "auto":
        processes = 1  # a caller that cannot start workers: a sweep's job, the Python API
    else:
        processes = plan_processes(
            cfg.processes,
            device=device,
            algo=algo,
            input_shape=dataset.input_shape,
            environments=environments,
            meta_batch_size=cfg.task.meta_batch_size,
            iterations=cfg.trainer.iterations,
            threads_setting=cfg.threads,
        )
    threads = plan_threads(cfg.threads, processes)
    without_variable = processes
    if processes == 1 and cfg.processes == "auto" and start_workers and world.size == 1:
        without_variable = plan_processes(
            "auto",
            device=device,
            algo=algo,
            input_shape=dataset.input_shape,
            environments=environments,
            meta_batch_size=cfg.task.meta_batch_size,
            iterations=cfg.trainer.iterations,
            threads_setting=1,  # what auto gives without $OMP_NUM_THREADS
        )
    reason = environment_reason(cfg.threads, processes, without_variable)
    if processes > 1 and getattr(algo, "sequential_setting", None):
        raise sequential_error(algo.sequential_setting, "processes=1")
    if processes > world.size:
        if environments or algo.capabilities.learns_from != "episodes":
            kind = "environment tasks" if environments else "labelled batches"
            raise ConfigError(
                f"processes={processes} splits each meta-batch of episodes between processes, "
                f"but {type(algo).__name__} trains on {kind}, in one process. Use processes=1 "
                "(or auto)."
            )
        World(0, processes).check_divides(cfg.task.meta_batch_size, "task.meta_batch_size")
        if not start_workers:
            raise ConfigError(
                f"processes={processes} starts worker processes for one run, but a sweep (-m) "
                "runs each job in one process. Drop processes (auto keeps one per job), or run "
                "the jobs one by one without -m."
            )
        raise StartWorkers(processes, threads)
    torch.set_num_threads(threads)
    return reason


def _die_with_parent() -> None:
    """In a worker before exec: the kernel kills it when rank 0 exits (Linux), so a worker never
    outlives the run, even after a second signal ended rank 0 at once."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    pr_set_pdeathsig, sigkill = 1, 9
    if hasattr(libc, "prctl"):
        libc.prctl(pr_set_pdeathsig, sigkill)


def free_port() -> int:
    """A TCP port on this machine free at the moment, for a rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def workers(
    processes: int, threads: int, arguments: Sequence[str], log_dir: Path
) -> Iterator[None]:
    """Makes this process rank 0 of `processes` and starts ranks 1.. as
    `python -m metarun <arguments>` (their output in log_dir/rank_<r>.log). torch.distributed's
    env:// rendezvous, as torchrun sets it up. On exit, waits for the workers; one that failed
    is reported with its log."""
    world = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(processes),
        "LOCAL_WORLD_SIZE": str(processes),
        "OMP_NUM_THREADS": str(threads),
    }
    os.environ.update(world, RANK="0", LOCAL_RANK="0")
    log_dir.mkdir(parents=True, exist_ok=True)
    started = []
    for rank in range(1, processes):
        log = log_dir / f"rank_{rank}.log"
        with open(log, "w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "metarun", *arguments],
                env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        started.append((process, log))
    grace = 5  # after an error or a stop on rank 0, the others end within its iteration
    try:
        yield
        grace = 60  # the others finish their share of the test
    finally:
        for process, log in started:
            try:
                status = process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                status = process.wait()
            if status not in (0, 75):
                print(
                    f"metarun: a worker process exited with status {status}; its output is in "
                    f"{log}",
                    file=sys.stderr,
                )

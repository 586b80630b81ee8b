"""Meta-training speed of metarun against a plain PyTorch loop and the peer libraries.

    python scripts/bench.py                       # every workload, every implementation found
    python scripts/bench.py --workloads W1 W5 --repeats 5 --json bench.json
    python scripts/bench.py --workloads W1 W3 --rounds 3   # interleaved, median round
    python scripts/bench.py --time-to-accuracy maml protonet --seeds 0 1 2

Each (workload, implementation) runs in its own process on synthetic data of the
workload's shapes (same seed, same initial weights for everyone), after one warm-up
meta-batch (for the -compiled rows it includes the compilation; its time is the "first
step" column, so first step minus a steady step is what compiling cost); it reports the median
tasks/s over `--repeats` meta-batches, the peak resident memory the workload added,
and the largest absolute difference between its meta-gradient and the plain loop's,
so a speed-up can never come from computing something else. "metarun-default" is what
`metarun train` does with every setting `auto` on a paper-length run of the workload's shape
(processes, threads, engine and compile by metarun's rules; several processes each time their
share of the meta-batch and the all-reduce; peak memory is their sum). Every implementation
gets the machine's threads unless OMP_NUM_THREADS says otherwise. Peers (learn2learn, higher,
torchopt) are used where installed (`pip install -e '.[bench]'` and
`scripts/install_learn2learn.sh`); a missing one is reported as missing. The
episode-sampling row uses the real Omniglot ($METARUN_DATA). A shared or virtual machine's
speed drifts over minutes; `--rounds R` measures every implementation R times, interleaved,
reports each one's median round with the range, and metarun-default's ratio to the fastest
peer round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from metarun.algorithms.maml import MAML
from metarun.algorithms.protonet import ProtoNet
from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.compiling import resolve_compile
from metarun.distributed import World
from metarun.engine import Engine, resolve_mode
from metarun.episode import Episode
from metarun.launch import plan_processes, plan_threads
from metarun.runtime import keep_freed_memory


@dataclass(frozen=True)
class Workload:
    title: str
    kind: str  # maml | protonet | sampling
    ways: int = 5
    shots: int = 1
    queries: int = 15
    tasks: int = 32
    steps: int = 1
    inner_lr: float = 0.4
    first_order: bool = False
    model: str = "conv4"  # conv4 | conv4-strided (MAML's Omniglot model) | mlp

    @property
    def implementations(self) -> list[str]:
        if self.kind == "sampling":
            return ["metarun", "learn2learn"]
        if self.model == "mlp":
            names = [
                "plain",
                "metarun-default",
                "metarun-loop",
                "metarun-vmap",
                "metarun-vmap-compiled",
            ]
        elif self.kind == "maml":
            names = [
                "plain",
                "plain-keep-freed-memory",
                "metarun-default",
                "metarun-loop",
                "metarun-loop-system-allocator",
                "metarun-loop-compiled",
                "metarun-loop-channels-last",
                "metarun-loop-bf16",
                "metarun-vmap",
            ]
        else:
            names = [
                "plain",
                "plain-keep-freed-memory",
                "metarun-default",
                "metarun-loop",
                "metarun-loop-channels-last",
                "metarun-loop-bf16",
                "metarun-vmap",
            ]
        return names + (list(PEERS) if self.kind == "maml" else [])


ENGINES = {  # implementation name -> metarun Engine settings (the default keep_freed_memory=true)
    "metarun-loop": dict(mode="loop"),
    "metarun-loop-system-allocator": dict(mode="loop", keep_freed_memory=False),
    "metarun-vmap": dict(mode="vmap"),
    "metarun-loop-compiled": dict(mode="loop", compile=True),
    "metarun-vmap-compiled": dict(mode="vmap", compile=True),
    "metarun-loop-channels-last": dict(mode="loop", channels_last=True),
    "metarun-loop-bf16": dict(mode="loop", precision="bf16", channels_last=True),
}


PEERS = ("learn2learn", "higher", "torchopt")
PAPER_ITERATIONS = 60000  # the run length the default row stands for (MAML's Omniglot presets)

WORKLOADS = {
    "W1": Workload("MAML 2nd order, 5w1s 15q, Conv-4, 1 step, 32 tasks", "maml"),
    "W2": Workload("MAML 1st order, 5w1s 15q, Conv-4, 1 step, 32 tasks", "maml", first_order=True),
    "W3": Workload(
        "MAML 2nd order, 20w1s 15q, Conv-4, 5 steps, 16 tasks",
        "maml",
        ways=20,
        tasks=16,
        steps=5,
        inner_lr=0.1,
    ),
    "W6": Workload(
        "MAML 2nd order, 5w1s 1q (the preset's training episodes), 32 tasks", "maml", queries=1
    ),
    "W1s": Workload(
        "MAML 2nd order, 5w1s 15q, MAML's Omniglot Conv-4 (stride 2), 1 step, 32 tasks",
        "maml",
        model="conv4-strided",
    ),
    "W6s": Workload(
        "MAML 2nd order, 5w1s 1q, MAML's Omniglot Conv-4 (stride 2), 32 tasks",
        "maml",
        queries=1,
        model="conv4-strided",
    ),
    "W4": Workload(
        "ProtoNet 60w5s 5q, Conv-4, 1 episode", "protonet", ways=60, shots=5, queries=5, tasks=1
    ),
    "W5": Workload(
        "MAML sinusoid, MLP 1-40-40-1, K=10, 1 step, 25 tasks",
        "maml",
        ways=1,
        shots=10,
        queries=10,
        tasks=25,
        inner_lr=0.01,
        model="mlp",
    ),
    "S": Workload("episode sampling, Omniglot 5w1s 15q", "sampling"),
}


def plain_model(w: Workload) -> nn.Module:
    """The workload's network from stock torch.nn layers (what the peers are given)."""
    if w.model == "mlp":
        return nn.Sequential(
            nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
        )
    return stock_conv4(w.ways if w.kind == "maml" else None, strided=w.model == "conv4-strided")


def stock_conv4(
    ways: int | None, running_statistics: bool = False, strided: bool = False
) -> nn.Sequential:
    """Conv-4 from stock layers, as the peers' examples build it; a linear head if `ways`.
    `strided`: convolutions of stride 2 and the last map averaged, as learn2learn's
    `OmniglotCNN` (MAML's Omniglot model), instead of max-pooling."""
    layers: list[nn.Module] = []
    for index in range(4):
        layers += [
            nn.Conv2d(1 if index == 0 else 64, 64, 3, 2 if strided else 1, padding=1),
            nn.BatchNorm2d(64, track_running_stats=running_statistics),
            nn.ReLU(),
            *([] if strided else [nn.MaxPool2d(2)]),
        ]
    average = [nn.AdaptiveAvgPool2d(1)] if strided else []
    return nn.Sequential(*layers, *average, nn.Flatten(), *([nn.Linear(64, ways)] if ways else []))


def metarun_algorithm(w: Workload, weights: nn.Module):
    if w.model == "mlp":
        backbone = MLP((1,), [40, 40])
    elif w.model == "conv4-strided":
        backbone = Conv4((1, 28, 28), downsample="stride", average_pool=True)
    else:
        backbone = Conv4((1, 28, 28))
    if w.kind == "maml":
        ways = 1 if w.model == "mlp" else w.ways
        algo = MAML(
            backbone, ways, inner_lr=w.inner_lr, inner_steps=w.steps, first_order=w.first_order
        )
    else:
        algo = ProtoNet(backbone, w.ways)
    with torch.no_grad():  # same initial weights as the plain model, parameter by parameter
        for mine, theirs in zip(algo.parameters(), weights.parameters(), strict=True):
            mine.copy_(theirs)
    return algo


def synthetic_batch(w: Workload) -> Episode:
    g = torch.Generator().manual_seed(0)
    if w.model == "mlp":
        x = torch.rand(w.tasks, w.shots + w.queries, 1, generator=g) * 10 - 5
        y = 3 * torch.sin(x - 1)
        return Episode(x[:, : w.shots], y[:, : w.shots], x[:, w.shots :], y[:, w.shots :], 1)
    labels = lambda n: torch.arange(w.ways).repeat_interleave(n).repeat(w.tasks, 1)
    return Episode(
        torch.rand(w.tasks, w.ways * w.shots, 1, 28, 28, generator=g),
        labels(w.shots),
        torch.rand(w.tasks, w.ways * w.queries, 1, 28, 28, generator=g),
        labels(w.queries),
        w.ways,
    )


def loss_fn(prediction, target):
    return (
        F.mse_loss(prediction, target)
        if target.dtype.is_floating_point
        else F.cross_entropy(prediction, target)
    )


def plain_step(w: Workload, model: nn.Module, batch: Episode) -> None:
    """The bar to beat: one task after another with torch.autograd.grad."""
    if w.kind == "protonet":
        support, query = model(batch.support_x[0]), model(batch.query_x[0])
        prototypes = support.view(w.ways, w.shots, -1).mean(1)
        loss_fn(-torch.cdist(query, prototypes).pow(2), batch.query_y[0]).backward()
        return
    names, params = zip(*model.named_parameters())
    for t in range(batch.num_tasks):
        fast = params
        for _ in range(w.steps):
            out = torch.func.functional_call(model, dict(zip(names, fast)), (batch.support_x[t],))
            grads = torch.autograd.grad(
                loss_fn(out, batch.support_y[t]), fast, create_graph=not w.first_order
            )
            fast = [p - w.inner_lr * g for p, g in zip(fast, grads)]
        out = torch.func.functional_call(model, dict(zip(names, fast)), (batch.query_x[t],))
        (loss_fn(out, batch.query_y[t]) / batch.num_tasks).backward()


def peer_step(name: str, w: Workload, model: nn.Module, batch: Episode):
    """Returns a function running one meta-batch with a peer library, or raises ImportError."""
    if name == "learn2learn":
        import learn2learn as l2l

        maml = l2l.algorithms.MAML(model, lr=w.inner_lr, first_order=w.first_order)

        def step() -> None:
            for t in range(batch.num_tasks):
                learner = maml.clone()
                for _ in range(w.steps):
                    learner.adapt(loss_fn(learner(batch.support_x[t]), batch.support_y[t]))
                (loss_fn(learner(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks).backward()

        return step
    if w.first_order:
        raise NotImplementedError(f"{name} has no first-order MAML mode")
    if name == "higher":
        import higher

        inner = torch.optim.SGD(model.parameters(), lr=w.inner_lr)

        def step() -> None:
            for t in range(batch.num_tasks):
                with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (
                    fmodel,
                    diffopt,
                ):
                    for _ in range(w.steps):
                        diffopt.step(loss_fn(fmodel(batch.support_x[t]), batch.support_y[t]))
                    (
                        loss_fn(fmodel(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks
                    ).backward()

        return step
    import torchopt

    inner = torchopt.MetaSGD(model, lr=w.inner_lr)
    state = torchopt.extract_state_dict(model)

    def step() -> None:
        for t in range(batch.num_tasks):
            for _ in range(w.steps):
                inner.step(loss_fn(model(batch.support_x[t]), batch.support_y[t]))
            (loss_fn(model(batch.query_x[t]), batch.query_y[t]) / batch.num_tasks).backward()
            torchopt.recover_state_dict(model, state)

    return step


def gradients(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def run_one(workload: str, impl: str, repeats: int) -> dict:
    """Times one implementation on one workload in this process."""
    w = WORKLOADS[workload]
    if w.kind == "sampling":
        return run_sampling(impl, repeats)
    if impl == "metarun-default":
        return run_default(workload, repeats)
    torch.manual_seed(0)
    model, batch = plain_model(w), synthetic_batch(w)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    if impl.startswith("metarun"):
        algo = metarun_algorithm(w, model)
        engine = Engine(**{"keep_freed_memory": True, **ENGINES[impl]})
        engine.prepare(algo)
        target, step = algo, lambda: engine.meta_backward(algo, batch)
        detail = _describe(engine)
    elif impl.startswith("plain"):
        if impl == "plain-keep-freed-memory":
            keep_freed_memory()
        target, step = model, lambda: plain_step(w, model, batch)
        detail = "torch.autograd.grad loop" + (
            ", glibc keeps freed memory (as metarun does)" if impl != "plain" else ""
        )
    else:
        target, step, detail = model, peer_step(impl, w, model, batch), ""
    return _cell(w, time_steps(target, step, repeats), initial, batch, detail)


def _describe(engine: Engine) -> str:
    return ", ".join(f"{k}={v}" for k, v in engine.describe().items())


def _cell(w: Workload, timed: dict, initial: dict, batch: Episode, detail: str) -> dict:
    """One table cell from time_steps' measurements: throughput, first step, peak memory, the
    difference from the plain loop's meta-gradient, and what ran."""
    gradient, median_s = timed.pop("gradient"), timed.pop("median_s")
    difference = difference_from_plain(w, initial, batch, gradient)
    return {
        **timed,
        "tasks_per_s": w.tasks / median_s,
        "grad_max_abs_diff": difference,
        "detail": detail,
    }


def time_steps(target: nn.Module, step, repeats: int) -> dict:
    """A warm-up meta-batch (with any compilation), then `repeats` timed ones."""
    torch.func.grad(torch.sum)(torch.ones(1))  # its one-off lazy imports (~160 MB) are not timed
    baseline_kb = rss_kb()
    target.zero_grad()
    start = time.perf_counter()
    step()
    first_step_s = time.perf_counter() - start
    gradient = gradients(target)
    times = []
    for _ in range(repeats):
        target.zero_grad()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024
    return {
        "median_s": statistics.median(times),
        "first_step_s": first_step_s,
        "peak_mb": peak_mb,
        "gradient": gradient,
    }


def difference_from_plain(w: Workload, initial: dict, batch: Episode, gradient) -> float:
    """Largest absolute difference from the plain loop's meta-gradient (computed after timing,
    so it does not count in the peak)."""
    reference_model = plain_model(w)
    reference_model.load_state_dict(initial)
    plain_step(w, reference_model, batch)
    return (gradient - gradients(reference_model)).abs().max().item()


def run_default(workload: str, repeats: int) -> dict:
    """metarun as `metarun train` runs a paper-length run of this shape on this machine: processes
    and threads by metarun.launch's rule, engine and compile by metarun.engine's (60,000 planned
    iterations), each process timing its share of the meta-batch and the all-reduce."""
    w = WORKLOADS[workload]
    algo = metarun_algorithm(w, plain_model(w))
    shape = (1,) if w.model == "mlp" else (1, 28, 28)
    processes = plan_processes(
        "auto",
        device=torch.device("cpu"),
        algo=algo,
        input_shape=shape,
        environments=False,
        meta_batch_size=w.tasks,
        iterations=PAPER_ITERATIONS,
    )
    threads = plan_threads("auto", processes)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(
            _default_rank, args=(workload, repeats, processes, threads, folder), nprocs=processes
        )
        ranks = [json.loads((Path(folder) / f"{r}.json").read_text()) for r in range(processes)]
    result = ranks[0]
    result["peak_mb"] = sum(rank["peak_mb"] for rank in ranks)
    machine = f"{processes} process{'es' * (processes > 1)} x {threads} thread{'s' * (threads > 1)}"
    result["detail"] = f"{machine}, " + result["detail"]
    return result


def _default_rank(
    rank: int, workload: str, repeats: int, processes: int, threads: int, folder: str
) -> None:
    torch.set_num_threads(threads)
    if processes > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=processes
        )
    w = WORKLOADS[workload]
    torch.manual_seed(0)
    model, batch = plain_model(w), synthetic_batch(w)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    algo = metarun_algorithm(w, model)
    task_images = w.ways * (w.shots + w.queries) if w.model != "mlp" else 0
    cpu = torch.device("cpu")
    mode = resolve_mode("auto", algo, cpu, task_images, PAPER_ITERATIONS)
    engine = Engine(
        mode,
        evaluation_mode=resolve_mode("auto", algo, cpu),  # as make_engine
        compile=resolve_compile("auto", mode, algo, PAPER_ITERATIONS),
        keep_freed_memory=True,
        world=World(rank, processes),
    )
    engine.prepare(algo)
    timed = time_steps(algo, lambda: engine.meta_backward(algo, batch), repeats)
    result = _cell(w, timed, initial, batch, _describe(engine))
    (Path(folder) / f"{rank}.json").write_text(json.dumps(result))
    if processes > 1:
        dist.barrier()
        dist.destroy_process_group()


def rss_kb() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run_sampling(impl: str, repeats: int) -> dict:
    """Episodes per second for 5-way 1-shot 15-query episodes from the real Omniglot train split."""
    from metarun.data.omniglot import Omniglot
    from metarun.data.sampler import ClassImageSampler

    images = Omniglot(os.environ.get("METARUN_DATA", "data"), download=False).split_images("train")
    baseline_kb = rss_kb()
    if impl == "metarun":
        sampler, g, per_call = (
            ClassImageSampler(images, "train", 5, 1, 15),
            torch.Generator().manual_seed(0),
            32,
        )
        draw = lambda: sampler.sample(per_call, g)
        detail = f"{per_call} episodes per call, device-resident uint8 images"
    else:
        import learn2learn as l2l

        flat = images.flatten(0, 1).float() / 255  # [classes*20, 1, 28, 28]
        labels = torch.arange(images.shape[0]).repeat_interleave(images.shape[1])
        dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(flat, labels))
        transforms = [
            l2l.data.transforms.NWays(dataset, 5),
            l2l.data.transforms.KShots(dataset, 16),
            l2l.data.transforms.LoadData(dataset),
            l2l.data.transforms.RemapLabels(dataset),
        ]
        tasks, per_call = l2l.data.TaskDataset(dataset, task_transforms=transforms, num_tasks=-1), 1

        def draw():
            x, y = tasks.sample()
            order = y.argsort(stable=True).view(
                5, 16
            )  # one support image per class, the rest queries
            return x[order[:, :1].flatten()], x[order[:, 1:].flatten()]

        detail = "TaskDataset with NWays, KShots, LoadData, RemapLabels"
    draw()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(max(1, 64 // per_call)):
            draw()
        times.append((time.perf_counter() - start) / (max(1, 64 // per_call) * per_call))
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024
    return {
        "tasks_per_s": 1 / statistics.median(times),
        "peak_mb": peak_mb,
        "grad_max_abs_diff": None,
        "detail": detail,
    }


def measure(workload: str, impl: str, repeats: int) -> dict:
    """Runs one cell in a fresh process, so peak memory is its own."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", workload, impl, "--repeats", str(repeats)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = (
            done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        )
        missing = "No module named" in reason or "ModuleNotFoundError" in reason
        return {"status": "not installed" if missing else "failed", "reason": reason}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def measure_rounds(workload: str, chosen: list[str], repeats: int, rounds: int) -> dict:
    """Every implementation `rounds` times, interleaved (each round in a rotated order), so a
    slow or fast spell of the machine touches every implementation alike. Each keeps the
    round of its median speed, plus every round's tasks/s."""
    cells: dict[str, list[dict]] = {impl: [] for impl in chosen}
    for turn in range(rounds):
        for impl in chosen[turn % len(chosen) :] + chosen[: turn % len(chosen)]:
            cells[impl].append(measure(workload, impl, repeats))
    return {impl: _median_round(runs) for impl, runs in cells.items()}


def _median_round(runs: list[dict]) -> dict:
    """The round of median speed among those that ran; `rounds` keeps every round in order
    (None where one failed, so rounds still pair up across implementations)."""
    ok = sorted((run for run in runs if run["status"] == "ok"), key=lambda run: run["tasks_per_s"])
    if not ok:
        return runs[0]
    speeds = [run["tasks_per_s"] if run["status"] == "ok" else None for run in runs]
    return {**ok[(len(ok) - 1) // 2], "rounds": speeds}


def paired_ratios(cells: dict) -> list[float]:
    """metarun-default over the fastest peer, round by round."""
    peers = [c for n, c in cells.items() if n in PEERS and c["status"] == "ok"]
    default = cells.get("metarun-default", {})
    if not peers or default.get("status") != "ok" or "rounds" not in default:
        return []
    ran = lambda column: [speed for speed in column if speed is not None]
    fastest = [max(ran(column), default=None) for column in zip(*(c["rounds"] for c in peers))]
    pairs = zip(default["rounds"], fastest)
    return [mine / theirs for mine, theirs in pairs if mine is not None and theirs is not None]


def table(results: dict) -> str:
    lines = [
        "| workload | implementation | tasks/s | first step s | peak MB | vs fastest peer | "
        "vs plain loop | max abs grad diff vs plain | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, cells in results.items():
        peers = [c["tasks_per_s"] for n, c in cells.items() if n in PEERS and c["status"] == "ok"]
        plain = cells.get("plain", {}).get("tasks_per_s")
        for name, cell in cells.items():
            if cell["status"] != "ok":
                lines.append(
                    f"| {workload} | {name} | {cell['status']} | | | | | | {cell['reason'][:90]} |"
                )
                continue
            speed = cell["tasks_per_s"]
            ratio_peer = f"{speed / max(peers):.2f}x" if peers else "-"
            ratio_plain = f"{speed / plain:.2f}x" if plain else "-"
            diff = "-" if cell["grad_max_abs_diff"] is None else f"{cell['grad_max_abs_diff']:.1e}"
            first = f"{cell['first_step_s']:.1f}" if "first_step_s" in cell else "-"
            rounds = cell.get("rounds", [])
            spread = [round_speed for round_speed in rounds if round_speed is not None]
            failed = len(rounds) - len(spread)
            speed_text = f"{speed:.1f}"
            if len(spread) > 1:
                speed_text += f" ({min(spread):.1f}-{max(spread):.1f})"
            if failed:
                speed_text += f", {failed} round(s) failed"
            lines.append(
                f"| {workload} | {name} | {speed_text} | {first} | {cell['peak_mb']:.0f} | "
                f"{ratio_peer} | {ratio_plain} | {diff} | {cell['detail']} |"
            )
    for workload, cells in results.items():
        ratios = paired_ratios(cells)
        if len(ratios) > 1:
            lines.append(
                f"\n{workload}: metarun-default over the fastest peer, round by round: "
                + ", ".join(f"{r:.2f}x" for r in ratios)
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every implementation this many times, "
        "interleaved; report each one's median round and the spread",
    )
    parser.add_argument("--only", nargs="+", metavar="IMPL", help="run only these implementations")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--time-to-accuracy",
        nargs="+",
        metavar="TARGET",
        choices=["maml", "protonet"],
        help="wall time to a validation accuracy (scripts/time_to_accuracy.py)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--limit", type=float, default=3600, help="seconds per run to accuracy")
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.repeats)))
        return
    if args.time_to_accuracy:
        from time_to_accuracy import time_to_accuracy

        results = time_to_accuracy(args.time_to_accuracy, args.seeds, args.limit)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    results = {}
    for workload in args.workloads:
        w = WORKLOADS[workload]
        print(f"{workload}: {w.title}", flush=True)
        chosen = [impl for impl in w.implementations if not args.only or impl in args.only]
        results[workload] = measure_rounds(workload, chosen, args.repeats, args.rounds)
    print(table(results))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"workloads": {k: WORKLOADS[k].title for k in results}, "results": results},
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()

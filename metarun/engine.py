"""The one place a meta-batch of tasks is turned into a meta-gradient.

Five independent settings, all computing the mean over tasks of the algorithm's
`task_loss` and so the same meta-gradient (the test suite checks every combination it
ships against a slow reference, with BatchNorm):
- mode: `loop` runs tasks one after another and backpropagates each at once (low
  memory); `vmap` runs all tasks as one batched torch.func.vmap computation.
- compile: the meta-gradient (one task's under loop, the meta-batch's under vmap) is
  one torch.compile'd torch.func.grad; costs a compilation per episode shape. compile_mode
  reduce-overhead adds CUDA graphs on a GPU (episode shapes are fixed per run).
- precision: fp32, or bf16 autocast (weights, optimiser state and losses stay fp32).
- channels_last: images and convolution weights in NHWC memory order.
- keep_freed_memory (CPU): glibc reuses freed activation memory (faster, higher peak RSS).
Under torchrun each process computes its share of the meta-batch and the shares' meta-
gradients are averaged (metarun.distributed); evaluation episodes are split the same way.
Measured with scripts/bench.py on a 2-core CPU (docs/results.md): for Conv-4 the loop is about
2x faster than vmap with 1/15 of its memory (all tasks' activations at once fall out of
cache), except for tiny tasks compiled (auto_rules.SMALL_TASK_IMAGES); for the sinusoid MLP
vmap is 7x and compiled vmap about 40x the fastest peer;
channels_last speeds first-order convolutional training (a metric method's) 1.5x but slows a
second-order double backward. `auto` encodes that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any, NamedTuple, cast

import torch
from torch.func import vmap

from metarun import batchnorm
from metarun.algorithms.base import Algorithm
from metarun.algorithms.policy_gradient import CollectingAlgorithm
from metarun.auto_rules import SMALL_TASK_IMAGES
from metarun.backbones import has_convolutions
from metarun.compiling import COMPILE_MODES, compile_options, meta_gradient, resolve_compile
from metarun.data.environments import EnvironmentTasks
from metarun.distributed import World
from metarun.episode import Episode
from metarun.errors import ConfigError
from metarun.runtime import keep_freed_memory

MODES = ("auto", "loop", "vmap")
PRECISIONS = ("fp32", "bf16")


def resolve_mode(
    mode: str, algo: Algorithm, device: torch.device, task_images: int = 0, iterations: int = 0
) -> str:
    """The concrete batching mode for this model, device and run: vmap on CUDA and for models
    without convolutions; on a CPU a convolutional meta-batch is vmapped only when it will be
    compiled (`iterations` planned) and its tasks are small (`task_images`), else looped."""
    if mode not in MODES:
        raise ConfigError(f"engine={mode!r} is not known. Use one of: {', '.join(MODES)}.")
    if mode != "auto":
        return mode
    if batchnorm.keeps_running_statistics(algo) or getattr(algo, "sequential_setting", None):
        return "loop"
    if device.type == "cuda" or not has_convolutions(algo):
        return "vmap"
    small = 0 < task_images <= SMALL_TASK_IMAGES
    return "vmap" if small and resolve_compile("auto", "vmap", algo, iterations) else "loop"


def sequential_error(setting: str, fix: str) -> ConfigError:
    """The error for running tasks that carry state from one to the next in parallel."""
    return ConfigError(
        f"{setting} starts each task's adaptation from the state the previous task left, so the "
        f"tasks of a meta-batch run one after another, uncompiled, in one process. Use {fix} "
        "(or auto), or drop that setting."
    )


def make_engine(
    cfg, algo: Algorithm, device: torch.device, world: World | None = None, iterations: int = 0
) -> Engine:
    """The engine the runtime settings (configs/runtime/) ask for, `auto` resolved for this model,
    device, meta-training tasks and planned number of meta-batches, with the model put in its
    memory format."""
    task_images = cfg.task.train_ways * (cfg.task.shots + cfg.task.queries)
    varying = cfg.task.get("min_shots") is not None or cfg.task.get("min_queries") is not None
    shapes_vary = iterations > 0 and varying  # training episodes of several shapes
    mode = resolve_mode(cfg.engine, algo, device, task_images, iterations)
    engine = Engine(
        mode,
        evaluation_mode=resolve_mode(cfg.engine, algo, device),  # test tasks are not small
        precision=cfg.precision,
        compile=resolve_compile(cfg.compile, mode, algo, iterations, shapes_vary),
        compile_mode=cfg.compile_mode,
        channels_last=cfg.channels_last,
        keep_freed_memory=cfg.keep_freed_memory,
        world=world,
    )
    engine.prepare(algo)
    return engine


class MetaStep(NamedTuple):
    """What one meta-batch gave: mean loss and score, the closure an optimiser that re-evaluates
    the objective needs (a trust-region step's; None for episodes) and further statistics to
    log."""

    loss: float
    score: float
    closure: Any = None  # an objective with `evaluate` for a trust-region step
    stats: dict = {}


class Engine:
    def __init__(
        self,
        mode: str,
        *,
        evaluation_mode: str | None = None,
        precision: str = "fp32",
        compile: bool = False,
        compile_mode: str = "default",
        channels_last: bool = False,
        keep_freed_memory: bool = False,
        world: World | None = None,
    ) -> None:
        """`evaluation_mode` batches the tasks of validation and test (uncompiled, 15 queries
        a class): on a CPU a convolutional meta-training batch of tiny tasks is vmapped but its
        evaluation looped (vmap took 104-110 ms per 5-way 15-query episode, the loop 68-75)."""
        evaluation_mode = evaluation_mode or mode
        for name in (mode, evaluation_mode):
            if name not in MODES[1:]:
                known = ", ".join(MODES)
                raise ConfigError(f"engine={name!r} is not known. Use one of: {known}.")
        if precision not in PRECISIONS:
            known = ", ".join(PRECISIONS)
            raise ConfigError(f"precision={precision!r} is not known. Use one of: {known}.")
        if compile_mode not in COMPILE_MODES:
            known = ", ".join(COMPILE_MODES)
            raise ConfigError(f"compile_mode={compile_mode!r} is not known. Use one of: {known}.")
        self.mode, self.evaluation_mode = mode, evaluation_mode
        self.precision, self.compile = precision, compile
        self.compile_mode = compile_mode
        self.channels_last, self.keep_freed_memory = channels_last, keep_freed_memory
        self.world = world or World()
        self._compiled: dict[tuple, Callable[..., Any]] = {}

    def describe(self) -> dict:
        """The settings as the run used them (`auto` resolved), for results.json's protocol."""
        names = ("precision", "compile", "compile_mode", "channels_last", "keep_freed_memory")
        return {
            "engine": self.mode,
            "evaluation_engine": self.evaluation_mode,
            **{name: getattr(self, name) for name in names},
        }

    @contextmanager
    def _computing(self, device: torch.device, mode: str) -> Iterator[None]:
        with ExitStack() as stack:
            if mode == "vmap":
                stack.enter_context(batchnorm.vmap_safe())
            if self.precision == "bf16":
                stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
            yield

    def prepare(self, algo: Algorithm) -> Algorithm:
        """Puts the weights in the engine's memory format and tunes the CPU allocator."""
        if self.channels_last:
            algo.to(memory_format=torch.channels_last)
        if self.keep_freed_memory and all(p.device.type == "cpu" for p in algo.parameters()):
            keep_freed_memory()
        return algo

    def _tasks(self, batch: Episode) -> tuple[torch.Tensor, ...]:
        """The meta-batch's tensors; images [T, N, C, H, W] in channels_last per task if asked."""
        if not self.channels_last:
            return batch.tensors
        nhwc = lambda t: t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return tuple(nhwc(t) if t.dim() == 5 else t for t in batch.tensors)

    def meta_backward(
        self, algo: Algorithm, batch: Episode | EnvironmentTasks, steps: int | None = None
    ) -> MetaStep:
        """Accumulates d(mean task loss)/d(meta-parameters) into .grad; returns the mean loss
        and score. Environment tasks: the algorithm collects trajectories and returns its
        objective, which is the closure of the step.

        With several processes, this one's share of the tasks, averaged over all processes."""
        if isinstance(batch, EnvironmentTasks):
            return self._interactive_backward(algo, batch)
        self.world.check_divides(batch.num_tasks, "task.meta_batch_size")
        support_x, support_y, query_x, query_y = map(self.world.my_share, batch.tensors)
        mine = Episode(support_x, support_y, query_x, query_y, batch.ways)
        with self._computing(batch.support_x.device, self.mode):
            if self.mode == "loop" and not self.compile:
                with batchnorm.recording(algo, self.world.gather):
                    loss, score = self._backward(algo, mine, steps)
            elif batchnorm.keeps_running_statistics(algo):
                raise ConfigError(
                    "bn=running updates BatchNorm's running statistics batch by batch, which "
                    "only the uncompiled loop engine does. Use engine=loop compile=false (or "
                    "auto for both) with bn=running, or another bn mode."
                )
            elif algo.sequential_setting:
                raise sequential_error(algo.sequential_setting, "engine=loop compile=false")
            elif self.compile:
                loss, score = self._compiled_backward(algo, mine, steps)
            else:
                loss, score = self._backward(algo, mine, steps)
        self.world.average_gradients(algo.parameters())
        mean_loss, mean_score = self.world.mean(loss, score)
        return MetaStep(mean_loss, mean_score)

    def _interactive_backward(self, algo: Algorithm, tasks: EnvironmentTasks) -> MetaStep:
        if self.world.size > 1:
            raise ConfigError(
                "Environment tasks train in one process: the trust-region step is not split "
                "between processes. Run `metarun train` without torchrun for this dataset."
            )
        objective = cast(CollectingAlgorithm, algo).objective(tasks)
        loss = objective.backward()
        return MetaStep(loss.item(), objective.score, objective, objective.stats)

    def _backward(self, algo: Algorithm, batch: Episode, steps: int | None) -> tuple[float, float]:
        tensors, tasks = self._tasks(batch), batch.num_tasks
        fn = partial(algo.task_loss, algo.params(), ways=batch.ways, steps=steps)
        if self.mode == "vmap":
            losses, scores = vmap(fn, randomness="different")(*tensors)
            losses.mean().backward()
            return losses.mean().item(), scores.mean().item()
        task_losses, task_scores = [], []
        for index in range(tasks):
            loss, score = fn(*(t[index] for t in tensors))
            (loss / tasks).backward()
            task_losses.append(loss.detach())
            task_scores.append(score)
        return torch.stack(task_losses).mean().item(), torch.stack(task_scores).mean().item()

    def _compiled_backward(
        self, algo: Algorithm, batch: Episode, steps: int | None
    ) -> tuple[float, float]:
        key, vmapped = (id(algo), batch.ways, steps), self.mode == "vmap"
        if key not in self._compiled:
            options = compile_options(self.compile_mode, batch.support_x.device)
            self._compiled[key] = torch.compile(
                meta_gradient(algo, vmapped, batch.ways, steps), options=options
            )
        compiled, tensors = self._compiled[key], self._tasks(batch)
        params = {name: p.detach() for name, p in algo.named_parameters()}
        parts = (
            [tensors] if vmapped else [tuple(t[i] for t in tensors) for i in range(batch.num_tasks)]
        )
        losses, scores = [], []
        for part in parts:
            grads, (loss, score) = compiled(params, *part)
            for name, p in algo.named_parameters():
                g = grads[name] / len(parts)
                p.grad = g if p.grad is None else p.grad + g
            losses.append(loss)
            scores.append(score)
        return torch.stack(losses).mean().item(), torch.stack(scores).mean().item()

    @torch.no_grad()
    def scores(self, algo: Algorithm, batch: Episode, steps: int | None = None) -> torch.Tensor:
        """Per-task query scores (accuracy or MSE) after adaptation, in eval mode: [tasks]. For
        environment tasks, the return after 0, 1, ..., steps adaptation steps: [tasks, steps+1]."""
        if isinstance(batch, EnvironmentTasks):
            return cast(CollectingAlgorithm, algo).returns_after(batch, steps)

        def score(support_x, support_y, query_x, query_y):
            return algo.task_loss(
                algo.params(), support_x, support_y, query_x, query_y, batch.ways, steps
            )[1]

        return cast(torch.Tensor, self.per_task(algo, batch, score))

    @torch.no_grad()
    def query_outputs(
        self,
        algo: Algorithm,
        batch: Episode,
        steps: int | None,
        read: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """`read` (e.g. algo.probabilities, algo.gaussian) of each task's query predictions after
        adaptation, in eval mode: [tasks, queries, ...]."""

        def outputs(support_x, support_y, query_x, query_y):
            return read(algo.adapt(algo.params(), support_x, support_y, batch.ways, steps)(query_x))

        return cast(torch.Tensor, self.per_task(algo, batch, outputs))

    @torch.no_grad()
    def per_task(self, algo: Algorithm, batch: Episode, fn) -> torch.Tensor | tuple:
        """fn(support_x, support_y, query_x, query_y) of every task, stacked (each part stacked
        where fn returns a tuple), in eval mode. fn may take gradients with torch.func."""
        tensors = self._tasks(batch)
        was_training = algo.training
        algo.eval()
        try:
            with self._computing(batch.support_x.device, self.evaluation_mode):
                if self.evaluation_mode == "vmap":
                    return vmap(fn, randomness="different")(*tensors)
                each = [fn(*(t[i] for t in tensors)) for i in range(batch.num_tasks)]
                if isinstance(each[0], tuple):
                    return tuple(torch.stack(part) for part in zip(*each))
                return torch.stack(each)
        finally:
            algo.train(was_training)

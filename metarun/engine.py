"""The one place a meta-batch of tasks is turned into a meta-gradient.

`loop` runs tasks one after another and backpropagates each at once (low memory);
`vmap` runs all tasks as one batched computation with torch.func.vmap; `compiled`
loops over tasks but computes each task's meta-gradient with one torch.compile'd
torch.func.grad of its task_loss (minutes of compilation per episode shape, then
7-20% faster than the loop for Conv-4 on a CPU: worth it for long runs only). All compute
the mean over tasks of the algorithm's `task_loss` and so the same meta-gradient
(the test suite checks each against a slow reference, with BatchNorm).
Measured with scripts/bench.py on a 2-core CPU: for Conv-4 the loop is about 2x faster
than vmap with 1/15 of its memory (all tasks' activations at once fall out of cache);
for the sinusoid MLP vmap is 11x faster than the loop; on CUDA batching keeps the GPU
busy. `auto` encodes that.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn
from torch.func import vmap

from metarun.algorithms.base import Algorithm
from metarun.backbones.task_batchnorm import vmap_safe_batchnorm
from metarun.episode import Episode
from metarun.errors import ConfigError

MODES = ("auto", "loop", "vmap", "compiled")
PRECISIONS = ("fp32", "bf16")


def resolve_mode(mode: str, algo: nn.Module, device: torch.device) -> str:
    """The concrete batching mode for this model and device."""
    if mode not in MODES:
        raise ConfigError(f"engine={mode!r} is not known. Use one of: {', '.join(MODES)}.")
    if mode != "auto":
        return mode
    if device.type == "cuda":
        return "vmap"
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in algo.modules())
    return "loop" if has_conv else "vmap"


class Engine:
    """mode: loop | vmap | compiled.

    precision: fp32, or bf16 (autocast + channels_last; weights and losses stay fp32).
    """

    def __init__(self, mode: str, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r} is not known. Use one of: {', '.join(PRECISIONS)}.")
        self.mode, self.precision = mode, precision
        self._compiled: dict[tuple, object] = {}

    @contextmanager
    def _computing(self, device: torch.device) -> Iterator[None]:
        with ExitStack() as stack:
            if self.mode == "vmap":
                stack.enter_context(vmap_safe_batchnorm())
            if self.precision == "bf16":
                stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
            yield

    def prepare(self, algo: Algorithm) -> Algorithm:
        """bf16 convolutions are fastest with channels_last weights and images (CPU and CUDA)."""
        if self.precision == "bf16":
            algo.to(memory_format=torch.channels_last)
        return algo

    def _per_task(self, algo: Algorithm, batch: Episode, steps: int | None):
        fn = partial(algo.task_loss, algo.params(), ways=batch.ways, steps=steps)
        return fn, (batch.support_x, batch.support_y, batch.query_x, batch.query_y)

    def _task(self, tensors: tuple[torch.Tensor, ...], index: int) -> list[torch.Tensor]:
        """One task's tensors; images [N, C, H, W] in channels_last under bf16."""
        if self.precision != "bf16":
            return [t[index] for t in tensors]
        return [t[index].contiguous(memory_format=torch.channels_last) if t.dim() == 5 else t[index]
                for t in tensors]

    def meta_backward(self, algo: Algorithm, batch: Episode, steps: int | None = None
                      ) -> tuple[float, float]:
        """Accumulates d(mean task loss)/d(meta-parameters) into .grad; returns (loss, score)."""
        fn, tensors = self._per_task(algo, batch, steps)
        tasks = batch.num_tasks
        with self._computing(batch.support_x.device):
            if self.mode == "vmap":
                losses, scores = vmap(fn)(*tensors)
                losses.mean().backward()
                return losses.mean().item(), scores.mean().item()
            if self.mode == "compiled":
                return self._compiled_meta_backward(algo, batch, steps, tensors)
            losses, scores = [], []
            for index in range(tasks):
                loss, score = fn(*self._task(tensors, index))
                (loss / tasks).backward()
                losses.append(loss.detach())
                scores.append(score)
        return torch.stack(losses).mean().item(), torch.stack(scores).mean().item()

    def _compiled_meta_backward(self, algo: Algorithm, batch: Episode, steps: int | None,
                                tensors: tuple[torch.Tensor, ...]) -> tuple[float, float]:
        key = (id(algo), batch.ways, steps)
        if key not in self._compiled:
            def objective(params, *task):
                loss, score = algo.task_loss(params, *task, ways=batch.ways, steps=steps)
                return loss, (loss.detach(), score)

            self._compiled[key] = torch.compile(torch.func.grad(objective, has_aux=True))
        meta_gradient = self._compiled[key]
        params = {name: p.detach() for name, p in algo.named_parameters()}
        losses, scores = [], []
        for index in range(batch.num_tasks):
            grads, (loss, score) = meta_gradient(params, *self._task(tensors, index))
            for name, p in algo.named_parameters():
                g = grads[name] / batch.num_tasks
                p.grad = g if p.grad is None else p.grad + g
            losses.append(loss)
            scores.append(score)
        return torch.stack(losses).mean().item(), torch.stack(scores).mean().item()

    @torch.no_grad()
    def scores(self, algo: Algorithm, batch: Episode, steps: int | None = None) -> torch.Tensor:
        """Per-task query scores (accuracy or MSE) after adaptation: [tasks]."""
        fn, tensors = self._per_task(algo, batch, steps)
        with self._computing(batch.support_x.device):
            if self.mode == "vmap":
                return vmap(fn)(*tensors)[1]
            return torch.stack([fn(*self._task(tensors, index))[1]
                                for index in range(batch.num_tasks)])

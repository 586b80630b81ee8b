"""BatchNorm policy, in one place: the `bn` modes, the task BatchNorm layer, which statistics
normalise the queries, and the recording and folding of running statistics.

In MAML each task is normalised by its own batch, at training and at test time (the
original MAML code does the same). With `bn=running` (ProtoNet's original protocol,
MAML++'s per-step statistics) the layer also keeps running statistics, updated from the
batches seen in meta-training and used in eval mode, as torch's BatchNorm does.

Two formulations of the batch-statistics function: the fused F.batch_norm (about 3x
faster on a CPU) and one written from var_mean/addcmul. The second exists because, in
torch 2.14.1, vmapping second-order MAML through training-mode F.batch_norm gives wrong
meta-gradients; the engine switches to it with `vmap_safe()` while it vmaps.

Running statistics cannot be updated in place inside torch.func transforms (the inner
loop's grad, the engine's vmap), so batches seen inside `recording(model)` are noted and
folded into the running averages when the block ends. Only that model's layers record.

The per-call flags (inner step, vmap safety, which rows give the statistics, which layers
record) live in a context variable, set and restored by the context managers below, so
two models in one process (or thread) cannot leave state in each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from metarun.errors import ConfigError

MODES = {
    "transductive": "queries are normalised as one batch with their own statistics",
    "support": "queries are normalised with the support set's statistics",
    "support_plus_one": "each query is normalised with the support set's and its own statistics",
    "running": "batch statistics in meta-training; at test, running statistics from meta-training",
}


@dataclasses.dataclass(frozen=True)
class _Flags:
    step: int = 0  # the inner step whose per-step scale, shift and statistics apply
    vmap_safe: bool = False  # use the formulation that is correct under vmap
    statistics_rows: int | None = None  # normalise with the statistics of the first rows only
    recording: frozenset[int] = frozenset()  # ids of the layers that note their batches


_NO_FLAGS = _Flags()
_flags: ContextVar[_Flags] = ContextVar("metarun_batchnorm", default=_NO_FLAGS)


@contextmanager
def _changed(**changes) -> Iterator[None]:
    token = _flags.set(dataclasses.replace(_flags.get(), **changes))
    try:
        yield
    finally:
        _flags.reset(token)


def vmap_safe() -> AbstractContextManager[None]:
    """Within this block every TaskBatchNorm2d uses the formulation that is correct under vmap."""
    return _changed(vmap_safe=True)


def at_step(step: int) -> AbstractContextManager[None]:
    """Within this block a per-step TaskBatchNorm2d uses the scale, shift and running
    statistics of inner step `step`."""
    return _changed(step=step)


def statistics_from(rows: int) -> AbstractContextManager[None]:
    """Within this block BatchNorm normalises every row with the statistics of the first `rows`
    (the support set), so queries appended after them do not influence each other."""
    return _changed(statistics_rows=rows)


def not_recording() -> AbstractContextManager[None]:
    """Within this block no layer notes its batches (an attacker's trial passes are not data)."""
    return _changed(recording=frozenset())


def _unchanged(rows: torch.Tensor) -> torch.Tensor:
    return rows


def _layers(model: nn.Module) -> list[TaskBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, TaskBatchNorm2d)]


def keeps_running_statistics(model: nn.Module) -> bool:
    """True when a layer of `model` keeps running statistics (then only the plain loop can train
    it)."""
    return any(layer.uses_running_statistics for layer in _layers(model))


@contextmanager
def recording(
    model: nn.Module, gather: Callable[[torch.Tensor], torch.Tensor] = _unchanged
) -> Iterator[None]:
    """Within this block training-mode batches update the running statistics of `model`'s layers
    that keep them, in the order the batches were seen; other models' layers are untouched.

    `gather` turns this process's recorded rows into every process's, in task order, so that
    ranks sharing a meta-batch fold the same batches in the same order as one process would.
    """
    keeping = [layer for layer in _layers(model) if layer.uses_running_statistics]
    if not keeping:  # the common case: nothing to note, no flags to change
        yield
        return
    with _changed(recording=_flags.get().recording | {id(layer) for layer in keeping}):
        yield
    for layer in keeping:
        layer.fold_recorded_batches(gather)


def _owner(model: nn.Module, path: str) -> str:
    """The class of the first module on the way to `path` that is not a container (the
    backbone, in an algorithm that wraps it in nn.Sequential with a head)."""
    parts = path.split(".")
    for depth in range(1, len(parts)):
        module = model.get_submodule(".".join(parts[:depth]))
        if not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return type(module).__name__
    return type(model).__name__


def use_mode(model: nn.Module, mode: str) -> None:
    """Applies the `bn` setting to a model: its layers keep running statistics for `running`.

    torch's own BatchNorm layers are refused: inside torch.func transforms they can neither
    update running statistics nor take the support set's statistics, so a `bn` mode would
    silently not apply to them."""
    if mode not in MODES:
        raise ConfigError(f"bn={mode!r} is not one of {', '.join(MODES)}. Set bn to one of them.")
    foreign = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    if foreign:
        path, module = foreign[0]
        raise ConfigError(
            f"bn={mode}: backbone {_owner(model, path)} uses torch's {type(module).__name__} "
            f"({path}), which metarun's BatchNorm modes cannot steer (its statistics would "
            "bypass the mode). Build the backbone with metarun.batchnorm.TaskBatchNorm2d instead."
        )
    model.bn = mode  # type: ignore[assignment]  # an Algorithm's setting, typed there
    for layer in _layers(model):
        layer.use_running_statistics(mode == "running")


def normalise_queries(
    mode: str,
    network: Callable[[torch.Tensor], torch.Tensor],
    support_x: torch.Tensor,
    query_x: torch.Tensor,
) -> torch.Tensor:
    """network(query_x) with BatchNorm statistics taken as the `bn` mode says (in eval mode,
    `running` uses the running statistics; in training it is transductive, as torch's BatchNorm)."""
    if mode in ("transductive", "running"):
        return network(query_x)
    if mode == "support":
        with statistics_from(support_x.shape[0]):
            return network(torch.cat([support_x, query_x]))[support_x.shape[0] :]
    with statistics_from(support_x.shape[0] + 1):
        return vmap(lambda query: network(torch.cat([support_x, query.unsqueeze(0)]))[-1])(query_x)


class TaskBatchNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.running_mean: torch.Tensor | None
        self.running_var: torch.Tensor | None
        self.register_buffer("running_mean", None)  # [steps, C] once running statistics are used
        self.register_buffer("running_var", None)
        self.uses_running_statistics = False
        self.statistics_steps = 1  # sets of running statistics, one per inner step (MAML++)
        self._recorded: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def per_step(self, steps: int, weights: bool = True, statistics: bool = False) -> None:
        """Gives every inner step its own scale and shift (MAML++), all starting from the current
        ones, and/or its own running statistics."""
        if weights:
            with torch.no_grad():
                self.weight = nn.Parameter(self.weight.expand(steps, -1).clone())
                self.bias = nn.Parameter(self.bias.expand(steps, -1).clone())
        if statistics:
            self.statistics_steps = steps

    def use_running_statistics(self, enabled: bool) -> None:
        """Eval mode normalises with running statistics (kept per inner step if statistics_steps
        > 1) when enabled; they are created at their torch defaults on first use."""
        if enabled and self.running_mean is None:
            channels = self.weight.shape[-1]
            self.running_mean = self.weight.new_zeros(self.statistics_steps, channels)
            self.running_var = self.weight.new_ones(self.statistics_steps, channels)
        self.uses_running_statistics = enabled

    def fold_recorded_batches(
        self, gather: Callable[[torch.Tensor], torch.Tensor] = _unchanged
    ) -> None:
        """Moves the running statistics towards each recorded batch's, as torch's BatchNorm does."""
        running_mean, running_var = self._running()
        channels = running_mean.shape[1]
        steps = torch.tensor([step for step, _, _ in self._recorded], dtype=torch.long)
        statistics = (
            torch.stack([torch.cat([mean, var]) for _, mean, var in self._recorded])
            if self._recorded
            else running_mean.new_zeros(0, 2 * channels)
        )  # [batches, 2C]
        self._recorded.clear()
        statistics = gather(statistics.to(running_mean.dtype))
        with torch.no_grad():
            for step, row in zip(
                gather(steps).tolist(), statistics
            ):  # step indices stay on the host
                running_mean[step].lerp_(row[:channels], self.momentum)
                running_var[step].lerp_(row[channels:], self.momentum)

    def _scale_and_shift(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.weight.dim() == 1:
            return self.weight, self.bias
        index = min(step, self.weight.shape[0] - 1)
        return self.weight[index], self.bias[index]

    def _running(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The running mean and variance [steps, C]; they exist once running statistics are used."""
        assert self.running_mean is not None and self.running_var is not None
        return self.running_mean, self.running_var

    def _statistics_index(self, step: int) -> int:
        return min(step, self._running()[0].shape[0] - 1)

    def folded_into(
        self, conv: nn.Conv2d, patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight [C_out, K] and bias [C_out] of the product `weight @ patches + bias` that equals
        this layer applied to `conv`'s output, where `patches` [N, K, P] are conv's input patches
        (F.unfold). Batch statistics come from the patches' mean and K x K covariance (the
        convolution is linear in them), so the output map is neither normalised nor measured
        in passes of its own: for a few input channels (K small) that is cheaper than the map."""
        flags = _flags.get()
        weight, bias = self._scale_and_shift(flags.step)
        kernel = conv.weight.flatten(1)
        conv_bias = conv.bias if conv.bias is not None else kernel.new_zeros(kernel.shape[0])
        if self.uses_running_statistics and not self.training:
            index = self._statistics_index(flags.step)
            running_mean, running_var = self._running()
            mean, var = running_mean[index], running_var[index]
        else:
            rows = patches if flags.statistics_rows is None else patches[: flags.statistics_rows]
            count = rows.shape[0] * rows.shape[2]
            centre = rows.sum((0, 2)) / count
            centred = rows - centre[:, None]
            covariance = torch.bmm(centred, centred.transpose(1, 2)).sum(0) / count
            mean = kernel @ centre + conv_bias
            var = ((kernel @ covariance) * kernel).sum(1)
            if self.uses_running_statistics and id(self) in flags.recording:
                unbiased = var.detach() * count / (count - 1)
                self._recorded.append((self._statistics_index(flags.step), mean.detach(), unbiased))
        scale = weight * torch.rsqrt(var + self.eps)
        return kernel * scale[:, None], bias + scale * (conv_bias - mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W]
        flags = _flags.get()
        weight, bias = self._scale_and_shift(flags.step)
        rows = flags.statistics_rows
        fused = not flags.vmap_safe and rows is None
        batch_statistics = None, None  # buffers the fused call fills while it normalises
        if self.uses_running_statistics:
            index = self._statistics_index(flags.step)
            running_mean, running_var = self._running()
            if not self.training:
                return F.batch_norm(
                    x,
                    running_mean[index],
                    running_var[index],
                    weight,
                    bias,
                    training=False,
                    eps=self.eps,
                )
            if id(self) in flags.recording:
                if fused:  # statistics from the normalising pass itself, not a second pass
                    mean, var = running_mean.new_zeros(2, x.shape[1])
                    batch_statistics = mean, var
                else:
                    var, mean = torch.var_mean(x.detach(), dim=(0, 2, 3), unbiased=True)
                self._recorded.append((index, mean, var))
        if fused:
            # With momentum 1, F.batch_norm writes the batch's mean and unbiased variance into
            # the buffers it is given (as torch's BatchNorm updates running statistics).
            return F.batch_norm(
                x, *batch_statistics, weight, bias, training=True, momentum=1.0, eps=self.eps
            )
        reference = x if rows is None else x[:rows]
        var, mean = torch.var_mean(reference, dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * weight.view(1, -1, 1, 1)
        return torch.addcmul(bias.view(1, -1, 1, 1) - mean * scale, x, scale)

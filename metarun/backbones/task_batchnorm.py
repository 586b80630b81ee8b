"""BatchNorm for tasks: normalises with a batch's own statistics, or with running ones.

In MAML each task is normalised by its own batch, at training and at test time (the
original MAML code does the same). With `bn=running` (ProtoNet's original protocol,
MAML++'s per-step statistics) the module also keeps running statistics, updated from
the batches seen in meta-training and used in eval mode, as torch's BatchNorm does.

Two formulations of the batch-statistics function: the fused F.batch_norm (about 3x
faster on a CPU) and one written from var_mean/addcmul. The second exists because, in
torch 2.14.1, vmapping second-order MAML through training-mode F.batch_norm gives wrong
meta-gradients; the engine switches to it with `vmap_safe_batchnorm()` while it vmaps.

Running statistics cannot be updated in place inside torch.func transforms (the inner
loop's grad, the engine's vmap), so batches seen inside `running_statistics_recorded()`
are noted and folded into the running averages when the block ends.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

_mode = {"vmap_safe": False, "step": 0, "statistics_rows": None, "recording": False}


@contextmanager
def _setting(name: str, value) -> Iterator[None]:
    previous, _mode[name] = _mode[name], value
    try:
        yield
    finally:
        _mode[name] = previous


def vmap_safe_batchnorm():
    """Within this block every TaskBatchNorm2d uses the formulation that is correct under vmap."""
    return _setting("vmap_safe", True)


def batchnorm_step(step: int):
    """Within this block a per-step TaskBatchNorm2d uses the scale, shift and running
    statistics of inner step `step`."""
    return _setting("step", step)


def batchnorm_statistics_from(rows: int):
    """Within this block BatchNorm normalises every row with the statistics of the first `rows`
    (the support set), so queries appended after them do not influence each other."""
    return _setting("statistics_rows", rows)


def _unchanged(rows: torch.Tensor) -> torch.Tensor:
    return rows


@contextmanager
def running_statistics_recorded(model: nn.Module,
                                gather: Callable[[torch.Tensor], torch.Tensor] = _unchanged) -> Iterator[None]:
    """Within this block training-mode batches update the running statistics of `model`'s
    TaskBatchNorm2d modules that keep them, in the order the batches were seen.

    `gather` turns this process's recorded rows into every process's, in task order, so that
    ranks sharing a meta-batch fold the same batches in the same order as one process would.
    """
    with _setting("recording", True):
        yield
    for module in model.modules():
        if isinstance(module, TaskBatchNorm2d) and module.uses_running_statistics:
            module.fold_recorded_batches(gather)


class TaskBatchNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", None)  # [steps, C] once running statistics are used
        self.register_buffer("running_var", None)
        self.uses_running_statistics = False
        self._recorded: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def per_step(self, steps: int) -> None:
        """Gives every inner step its own scale and shift (MAML++), all starting from the current ones."""
        with torch.no_grad():
            self.weight = nn.Parameter(self.weight.expand(steps, -1).clone())
            self.bias = nn.Parameter(self.bias.expand(steps, -1).clone())

    def use_running_statistics(self, enabled: bool, steps: int = 1) -> None:
        """Eval mode normalises with running statistics (kept per inner step if steps > 1)
        when enabled; they are created at their torch defaults on first use."""
        if enabled and self.running_mean is None:
            channels = self.weight.shape[-1]
            like = {"device": self.weight.device, "dtype": self.weight.dtype}
            self.running_mean = torch.zeros(steps, channels, **like)
            self.running_var = torch.ones(steps, channels, **like)
        self.uses_running_statistics = enabled

    def fold_recorded_batches(self, gather: Callable[[torch.Tensor], torch.Tensor] = _unchanged) -> None:
        """Moves the running statistics towards each recorded batch's, as torch's BatchNorm does."""
        channels = self.running_mean.shape[1]
        steps = torch.tensor([step for step, _, _ in self._recorded], dtype=torch.long)
        statistics = (torch.stack([torch.cat([mean, var]) for _, mean, var in self._recorded])
                      if self._recorded else self.running_mean.new_zeros(0, 2 * channels))  # [batches, 2C]
        self._recorded.clear()
        statistics = gather(statistics.to(self.running_mean.dtype))
        with torch.no_grad():
            for step, row in zip(gather(steps).tolist(), statistics):  # step indices stay on the host
                self.running_mean[step].lerp_(row[:channels], self.momentum)
                self.running_var[step].lerp_(row[channels:], self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W]
        weight, bias = self.weight, self.bias
        if weight.dim() == 2:
            index = min(_mode["step"], weight.shape[0] - 1)
            weight, bias = weight[index], bias[index]
        if self.uses_running_statistics:
            index = min(_mode["step"], self.running_mean.shape[0] - 1)
            if not self.training:
                return F.batch_norm(x, self.running_mean[index], self.running_var[index], weight, bias,
                                    training=False, eps=self.eps)
            if _mode["recording"]:
                var, mean = torch.var_mean(x.detach(), dim=(0, 2, 3), unbiased=True)
                self._recorded.append((index, mean, var))
        rows = _mode["statistics_rows"]
        if not _mode["vmap_safe"] and rows is None:
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
        reference = x if rows is None else x[:rows]
        var, mean = torch.var_mean(reference, dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * weight.view(1, -1, 1, 1)
        return torch.addcmul(bias.view(1, -1, 1, 1) - mean * scale, x, scale)

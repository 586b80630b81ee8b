"""2x2 max-pooling that evaluates fast on a CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2) with the same values everywhere. Whenever a gradient can be taken it is
    torch's own kernel (and its rule on ties: the first maximum gets the gradient). Without
    autograd on a CPU (evaluation's query forward, under no_grad) it takes the maximum of
    strided halves instead: torch's kernel, which also computes the indices a backward would
    need, took 33 ms for a 75x64x28x28 map at one thread, the halves 3.7 ms, and the pooling
    was half of a MAML evaluation episode's time (docs/results.md)."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def max_of_window(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """The elementwise maximum of a 2x2 window's four values, given as four maps in the window's
    row-major order, with torch's max-pooling rule on ties: the first maximum wins, so the
    gradient goes where torch's would. Each map is contiguous, so a compiler turns forward and
    backward into vectorised selections instead of the scatter of a max-pooling backward.

    NaNs are not ranked (torch would pick them; testing for them cost 7% of a compiled MAML
    step): in Conv4's folded first block, the caller, a NaN comes from a channel's weights or
    batch statistics and so fills the whole channel."""
    best = values[0]
    for later in values[1:]:
        best = torch.where(later > best, later, best)
    return best

"""BatchNorm that always normalises with the current batch's statistics.

In MAML each task is normalised by its own batch, at training and at test time (the
original MAML code does the same), so no running statistics are kept.

Two formulations of the same function: the fused F.batch_norm (about 3x faster on a
CPU) and one written from var_mean/addcmul. The second exists because, in torch
2.14.1, vmapping second-order MAML through training-mode F.batch_norm gives wrong
meta-gradients; the engine switches to it with `vmap_safe_batchnorm()` while it vmaps.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_vmap_safe = False


@contextmanager
def vmap_safe_batchnorm() -> Iterator[None]:
    """Within this block every TaskBatchNorm2d uses the formulation that is correct under vmap."""
    global _vmap_safe
    previous, _vmap_safe = _vmap_safe, True
    try:
        yield
    finally:
        _vmap_safe = previous


class TaskBatchNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W]
        if not _vmap_safe:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        return torch.addcmul(self.bias.view(1, -1, 1, 1) - mean * scale, x, scale)

"""BatchNorm that always normalises with the current batch's statistics.

Written from mean/var operations rather than F.batch_norm because, in torch 2.14.1,
vmapping second-order MAML through training-mode F.batch_norm yields wrong
meta-gradients. It keeps no running statistics: in MAML each task is normalised by
its own batch (the original MAML code does the same at test time).
"""

from __future__ import annotations

import torch
from torch import nn


class TaskBatchNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W]
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        normalised = (x - mean) * torch.rsqrt(var + self.eps)
        return normalised * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

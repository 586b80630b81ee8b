"""The typed episode every sampler produces and every algorithm consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Episode:
    """A batch of tasks. With a task dimension: support_x is [tasks, ways*shots, ...].

    `ways` is the number of classes (static, so algorithms can size tensors under vmap).
    Labels are class indices 0..ways-1 (long) for classification and float targets
    for regression; the dtype alone tells an algorithm which loss applies.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(support_x, support_y, query_x, query_y), the arguments of `task_loss` after params."""
        return self.support_x, self.support_y, self.query_x, self.query_y

"""Per-episode scores, their mean with a 95% interval, and the JSON-lines log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def task_loss_and_score(
    prediction: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy for class labels, MSE (as both) for float targets."""
    if target.dtype.is_floating_point:
        mse = F.mse_loss(prediction, target)
        return mse, mse.detach()
    loss = F.cross_entropy(prediction, target)
    accuracy = (prediction.argmax(dim=-1) == target).float().mean()
    return loss, accuracy.detach()


def accuracy_by_instance(
    logits: torch.Tensor, labels: torch.Tensor, instances: int
) -> torch.Tensor:
    """Accuracy at the 1st, 2nd, ... `instances`-th presentation of a class in a sequence
    (Santoro et al. 2016's table): [instances]. logits [T, ways], labels [T]."""
    seen = F.one_hot(labels, logits.shape[-1])  # [T, ways]
    instance = ((seen.cumsum(0) - seen) * seen).sum(
        -1
    )  # earlier presentations of each step's class
    at = F.one_hot(instance.clamp_max(instances - 1), instances).to(logits.dtype)  # [T, instances]
    correct = (logits.argmax(-1) == labels).to(logits.dtype)
    return (correct @ at / at.sum(0).clamp_min(1)).detach()


def mean_ci95(scores: torch.Tensor) -> dict[str, float]:
    """Mean and half-width of the 95% interval: 1.96 * std / sqrt(n) over episodes."""
    scores = scores.double().flatten()
    n = scores.numel()
    std = scores.std(unbiased=True).item() if n > 1 else 0.0
    return {"mean": scores.mean().item(), "ci95": 1.96 * std / math.sqrt(n)}


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a killed run keeps its log."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def drop_after(self, iteration: int) -> None:
        """Removes rows logged after `iteration`: a run resumed from there logs them again."""
        if self.path.exists():
            rows = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["iteration"] <= iteration
            ]
            self.path.write_text("".join(row + "\n" for row in rows))

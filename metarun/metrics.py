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

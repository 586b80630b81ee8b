"""Per-episode scores, their mean with a 95% interval, and the JSON-lines log."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from metarun.algorithms.functional import gaussian_log_prob

NORMAL_97_5 = 1.959963984540054  # the standard normal's 97.5% quantile


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


def predictive_scores(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int
) -> dict[str, torch.Tensor]:
    """Per-episode accuracy, negative log-likelihood and Brier score of the queries' predictive
    distributions ([episodes, Q, ways], labels [episodes, Q]), and their reliability counts
    [episodes, bins, 3]: queries, summed confidence and correct predictions per equal-width
    confidence bin ((m-1)/bins, m/bins], from which pooled calibration errors follow."""
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).to(probabilities.dtype)
    truth = F.one_hot(labels, probabilities.shape[-1]).to(probabilities.dtype)
    chosen = (probabilities * truth).sum(-1)
    tiny = torch.finfo(probabilities.dtype).tiny
    in_bin = F.one_hot((confidence * bins).ceil().long().clamp(1, bins) - 1, bins)
    in_bin = in_bin.to(probabilities.dtype)  # [episodes, Q, bins]
    reliability = torch.stack(
        [
            in_bin.sum(1),
            (confidence.unsqueeze(-1) * in_bin).sum(1),
            (correct.unsqueeze(-1) * in_bin).sum(1),
        ],
        dim=-1,
    )
    return {
        "accuracy": correct.mean(-1),
        "nll": -chosen.clamp_min(tiny).log().mean(-1),
        "brier": (probabilities - truth).pow(2).sum(-1).mean(-1),
        "reliability": reliability,
    }


def gaussian_scores(
    gaussian: torch.Tensor, targets: torch.Tensor, noise_std: float | None
) -> dict[str, torch.Tensor]:
    """Per-episode squared error of the predictive means, and, where there is a spread (the
    predictor's own std, with `noise_std` added in quadrature), the targets' negative
    log-likelihood and how often they fall in the central 95% interval. gaussian [episodes, Q,
    2] (mean, std), targets [episodes, Q, 1]."""
    mean, std = gaussian[..., :1], gaussian[..., 1:]
    scores = {"mse": (mean - targets).pow(2).mean((-2, -1))}
    if noise_std is not None:
        std = (std.square() + noise_std**2).sqrt()
    if (std > 0).all():
        z = (targets - mean) / std
        scores["nll"] = -gaussian_log_prob(mean, std.log(), targets).mean(-1)
        scores["coverage95"] = (z.abs() <= NORMAL_97_5).to(z.dtype).mean((-2, -1))
    return scores


def calibration_errors(reliability: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected and maximum calibration error of pooled reliability counts [..., bins, 3]: the
    query-weighted and the largest gap between mean confidence and accuracy over non-empty bins."""
    count, confidence, correct = reliability.unbind(-1)
    gap = (confidence - correct).abs() / count.clamp_min(1)
    return gap.mul(count).sum(-1) / count.sum(-1), gap.amax(-1)


def calibration_summary(measures: dict[str, torch.Tensor], resamples: int = 1000) -> dict:
    """results.json's `calibration`: NLL and Brier score as means over episodes with 95%
    intervals; ECE and MCE of all queries pooled, their 95% intervals from resampling the
    episodes (a fixed generator, so the interval is reproducible); and the reliability diagram
    (per bin: queries, mean confidence, accuracy)."""
    reliability = measures["reliability"].double()  # [episodes, bins, 3]
    episodes = reliability.shape[0]
    pooled = reliability.sum(0)
    ece, mce = calibration_errors(pooled)
    picks = torch.randint(
        episodes, (resamples, episodes), generator=torch.Generator().manual_seed(0)
    )
    times_picked = torch.zeros(resamples, episodes, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(resamples, episodes, dtype=torch.float64)
    )
    eces, mces = calibration_errors((times_picked @ reliability.flatten(1)).view(-1, *pooled.shape))
    count = pooled[:, 0].clamp_min(1)
    return {
        "bins": reliability.shape[1],
        "ece": {"value": ece.item(), "ci95": 1.96 * eces.std().item()},
        "mce": {"value": mce.item(), "ci95": 1.96 * mces.std().item()},
        "nll": mean_ci95(measures["nll"]),
        "brier": mean_ci95(measures["brier"]),
        "reliability": {
            "queries": pooled[:, 0].long().tolist(),
            "confidence": (pooled[:, 1] / count).tolist(),
            "accuracy": (pooled[:, 2] / count).tolist(),
        },
    }


def regression_summary(measures: dict[str, torch.Tensor], noise_std: float | None) -> dict:
    """results.json's `calibration` of a regressor: NLL and coverage of the central 95%
    interval as means over episodes with 95% intervals, and the noise level assumed."""
    return {
        "noise_std": noise_std,
        "nll": mean_ci95(measures["nll"]),
        "coverage95": mean_ci95(measures["coverage95"]),
    }


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

"""The outer loop: sample -> meta-gradient -> step, with validation, checkpoints and metrics.

It knows nothing about any algorithm: everything algorithm-specific sits behind the
engine (which calls the algorithm's task_loss) and the evaluator.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from metarun.checkpoint import FORMAT_VERSION, atomic_save
from metarun.metrics import JsonlWriter


@dataclass(frozen=True)
class Schedule:
    iterations: int
    meta_batch_size: int
    log_every: int
    val_every: int
    ckpt_every: int


class Trainer:
    def __init__(self, algo, engine, optimizer, scheduler, sampler, validate: Callable[[], dict],
                 schedule: Schedule, run_dir: Path, config: dict, metric: str, seed: int) -> None:
        self.algo, self.engine, self.optimizer, self.scheduler = algo, engine, optimizer, scheduler
        self.sampler, self.validate, self.schedule = sampler, validate, schedule
        self.run_dir, self.config, self.metric = Path(run_dir), config, metric
        self.generator = torch.Generator().manual_seed(seed)
        self.higher_is_better = metric == "accuracy"
        self.best_score = -math.inf if self.higher_is_better else math.inf
        self.best_iteration = 0
        self.metrics = JsonlWriter(self.run_dir / "metrics.jsonl")
        self.shown = ("train_loss", f"train_{metric}", "tasks_per_s", f"val_{metric}")

    def fit(self) -> dict:
        """Trains for the configured iterations; returns throughput and the best validation."""
        s = self.schedule
        window: list[tuple[float, float]] = []  # (loss, score) of the steps since the last log row
        window_seconds, started = 0.0, time.perf_counter()
        bar = tqdm(range(1, s.iterations + 1), desc="meta-train", dynamic_ncols=True)
        for iteration in bar:
            step_start = time.perf_counter()
            window.append(self._step())
            window_seconds += time.perf_counter() - step_start
            last = iteration == s.iterations
            row: dict = {}
            if iteration % s.log_every == 0 or last:
                tasks_per_s = len(window) * s.meta_batch_size / window_seconds
                row.update(self._train_row(iteration, window, tasks_per_s))
                window, window_seconds = [], 0.0
            if iteration % s.val_every == 0 or last:
                row.update(iteration=iteration, **self._validate_and_keep_best(iteration))
            if row:
                self.metrics.write(row)
                bar.set_postfix({k.removeprefix("train_"): f"{v:.3g}" for k, v in row.items() if k in self.shown})
            if iteration % s.ckpt_every == 0 or last:
                self.save("last", iteration)
        wall = time.perf_counter() - started
        return {"wall_time_s": wall, "tasks_per_s_overall": s.iterations * s.meta_batch_size / wall,
                "best_iteration": self.best_iteration, f"best_val_{self.metric}": self.best_score}

    def _step(self) -> tuple[float, float]:
        batch = self.sampler.sample(self.schedule.meta_batch_size, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss, score = self.engine.meta_backward(self.algo, batch)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss, score

    def _train_row(self, iteration: int, window: list[tuple[float, float]], tasks_per_s: float) -> dict:
        losses, scores = zip(*window)
        return {"iteration": iteration, "train_loss": sum(losses) / len(losses),
                f"train_{self.metric}": sum(scores) / len(scores), "tasks_per_s": tasks_per_s}

    def _validate_and_keep_best(self, iteration: int) -> dict:
        summary = self.validate()[self.metric]
        better = summary["mean"] > self.best_score if self.higher_is_better else summary["mean"] < self.best_score
        if better:
            self.best_score, self.best_iteration = summary["mean"], iteration
            self.save("best", iteration)
        return {f"val_{self.metric}": summary["mean"], f"val_{self.metric}_ci95": summary["ci95"]}

    def save(self, name: str, iteration: int) -> None:
        """Writes checkpoints/<name>.pt atomically with everything needed to resume or evaluate."""
        state = {
            "format": FORMAT_VERSION,
            "model": self.algo.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "iteration": iteration,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "sampler": self.generator.get_state()},
            "config": self.config,
        }
        atomic_save(state, self.run_dir / "checkpoints" / f"{name}.pt")

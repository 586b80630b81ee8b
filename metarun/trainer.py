"""The outer loop: sample -> meta-gradient -> step, with validation, checkpoints and metrics.

It knows nothing about any algorithm: everything algorithm-specific sits behind the
engine (which calls the algorithm's task_loss) and the evaluator. What a resumed run needs
(weights, optimiser, scheduler, every random generator, progress) is the TrainingState in
metarun.checkpoint; signals come from metarun.runtime.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from metarun.checkpoint import TrainingState, atomic_save
from metarun.distributed import World
from metarun.errors import Preempted, TrainingError
from metarun.metrics import JsonlWriter
from metarun.runtime import stoppable


@dataclass(frozen=True, kw_only=True)
class Schedule:
    iterations: int
    meta_batch_size: int
    log_every: int
    val_every: int
    ckpt_every: int
    nonfinite: str = "stop"  # stop | skip
    clip_grad_norm: float | None = None  # largest meta-gradient norm applied; None: no clipping


def _training_row(window: list[tuple], seconds: float, tasks: int, metric: str) -> dict:
    """Mean loss, score and statistics of the steps since the last row, and their throughput."""
    if not window:
        return {}
    losses, scores = [entry[0] for entry in window], [entry[1] for entry in window]
    stats: dict[str, list[float]] = {}
    for entry in window:  # (loss, score) in checkpoints of older runs
        for name, value in (entry[2] if len(entry) > 2 else {}).items():
            stats.setdefault(name, []).append(value)
    return {
        "train_loss": sum(losses) / len(losses),
        f"train_{metric}": sum(scores) / len(scores),
        **{f"train_{name}": sum(values) / len(values) for name, values in stats.items()},
        "tasks_per_s": len(window) * tasks / seconds,
    }


def _stopped(iteration: int, run_dir: Path) -> Preempted:
    return Preempted(
        f"Stopped by a signal after iteration {iteration}; checkpoint written to "
        f"{run_dir / 'checkpoints' / 'last.pt'}. Resume with the same command plus "
        f"hydra.run.dir={run_dir} trainer.resume=auto."
    )


class Trainer:
    def __init__(
        self,
        *,
        state: TrainingState,
        engine,
        sampler,
        validate: Callable[[], dict],
        schedule: Schedule,
        run_dir: Path,
        metric: str,
        world: World | None = None,
        logger=None,
    ) -> None:
        """`logger` (optional, metarun.loggers) receives every metrics row besides metrics.jsonl."""
        self.state, self.engine, self.sampler, self.validate = state, engine, sampler, validate
        self.schedule, self.run_dir, self.metric = schedule, Path(run_dir), metric
        self.logger, self.world = logger, world or World()  # rank 0 alone writes and shows progress
        self.progress, self.algo = state.progress, state.model
        self.metrics = JsonlWriter(self.run_dir / "metrics.jsonl")
        self.shown = ("train_loss", f"train_{metric}", "tasks_per_s", f"val_{metric}")
        self.last_saved: int | None = self.progress.iteration or None

    def fit(self) -> dict:
        """Trains up to the configured iterations; returns throughput and the best validation."""
        s, p = self.schedule, self.progress
        if self.world.is_main:
            self.metrics.drop_after(p.iteration)
        if s.iterations == 0:  # nothing to train: validate and keep the starting model (init_from)
            self._log_and_validate(0, 0.0)
            self.save("last")
        first, elapsed_before, window_seconds = p.iteration, p.elapsed_s, 0.0
        started = time.perf_counter() - elapsed_before  # wall time carries over a resume
        bar = tqdm(
            range(first + 1, s.iterations + 1),
            desc="meta-train",
            dynamic_ncols=True,
            initial=first,
            total=s.iterations,
            disable=not self.world.is_main,
        )
        with stoppable(announce=self.world.is_main) as stop:
            for iteration in bar:
                step_start = time.perf_counter()
                self._step(iteration)
                window_seconds += time.perf_counter() - step_start
                p.iteration, p.elapsed_s = iteration, time.perf_counter() - started
                row = self._log_and_validate(iteration, window_seconds)
                if row:
                    window_seconds = 0.0
                    bar.set_postfix(
                        {
                            k.removeprefix("train_"): f"{v:.3g}"
                            for k, v in row.items()
                            if k in self.shown
                        }
                    )
                stopping = self.world.any(stop.requested)  # every rank stops at one iteration
                if iteration % s.ckpt_every == 0 or iteration == s.iterations or stopping:
                    self.save("last")
                if stopping:
                    raise _stopped(iteration, self.run_dir)
        wall = time.perf_counter() - started
        return {
            "wall_time_s": wall,
            "tasks_per_s_overall": (s.iterations - first)
            * s.meta_batch_size
            / max(wall - elapsed_before, 1e-9),
            "best_iteration": p.best_iteration,
            f"best_val_{self.metric}": p.best_score,
            "skipped_nonfinite": p.skipped_nonfinite,
        }

    def _step(self, iteration: int) -> None:
        optimizer, scheduler = self.state.optimizer, self.state.scheduler
        batch = self.sampler.sample(self.schedule.meta_batch_size, self.state.generator)
        optimizer.zero_grad(set_to_none=True)
        self.algo.set_progress(iteration)
        step = self.engine.meta_backward(self.algo, batch)
        if not self._finite(step.loss):
            if self.schedule.nonfinite != "skip":
                raise TrainingError(
                    f"The meta-loss or its gradient is not finite at iteration {iteration}. "
                    f"{self._last_good()} Lower optimizer.lr or algo.inner_lr, or set "
                    "trainer.nonfinite=skip to skip such meta-batches."
                )
            self.progress.skipped_nonfinite += 1
            optimizer.zero_grad(set_to_none=True)
            return
        if self.schedule.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.algo.parameters(), self.schedule.clip_grad_norm)
        optimizer.step(step.closure)
        if scheduler is not None:
            scheduler.step()
        self.progress.window.append((step.loss, step.score, step.stats))

    def _last_good(self) -> str:
        if self.last_saved is None:
            return "No checkpoint has been written yet."
        path = self.run_dir / "checkpoints" / "last.pt"
        return f"The last good checkpoint is {path} (iteration {self.last_saved})."

    def _finite(self, loss: float) -> bool:
        grads = [p.grad.flatten() for p in self.algo.parameters() if p.grad is not None]
        return math.isfinite(loss) and (not grads or bool(torch.cat(grads).isfinite().all()))

    def _log_and_validate(self, iteration: int, window_seconds: float) -> dict:
        """Writes a metrics row when one is due; returns it (empty when none was due)."""
        s, p, last = self.schedule, self.progress, iteration == self.schedule.iterations
        row: dict = {}
        if iteration % s.log_every == 0 or last:
            trained = _training_row(p.window, window_seconds, s.meta_batch_size, self.metric)
            row = {"iteration": iteration, **trained}
            if p.skipped_nonfinite:
                row["skipped_nonfinite"] = p.skipped_nonfinite
            p.window = []
        if iteration % s.val_every == 0 or last:
            row.update(iteration=iteration, **self._validate(iteration))
        if row and self.world.is_main:
            row["elapsed_s"] = round(p.elapsed_s, 3)
            self.metrics.write(row)
            if self.logger is not None:
                self.logger.log(row)
        return row

    def _validate(self, iteration: int) -> dict:
        """Validation's row entries; a better score than any before is kept as best.pt."""
        summary = self.validate()[self.metric]
        if self.progress.improves(summary["mean"]):
            self.progress.best_score, self.progress.best_iteration = summary["mean"], iteration
            self.save("best")
        return {f"val_{self.metric}": summary["mean"], f"val_{self.metric}_ci95": summary["ci95"]}

    def save(self, name: str) -> None:
        """Writes checkpoints/<name>.pt atomically; `last` keeps the one it replaces as previous."""
        if name == "last":
            self.last_saved = self.progress.iteration
        if self.world.is_main:
            folder = self.run_dir / "checkpoints"
            previous = folder / "previous.pt" if name == "last" else None
            atomic_save(self.state.capture(), folder / f"{name}.pt", previous=previous)

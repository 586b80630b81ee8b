"""The outer loop: sample -> meta-gradient -> step, with validation, checkpoints and metrics.

It knows nothing about any algorithm: everything algorithm-specific sits behind the
engine (which calls the algorithm's task_loss) and the evaluator. Everything that
influences the rest of a run (weights, optimiser, scheduler, every random generator,
the unlogged part of the metrics window) goes into the checkpoint, so a resumed run
is the same run.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy
import torch
from tqdm import tqdm

from metarun.checkpoint import FORMAT_VERSION, atomic_save
from metarun.distributed import World
from metarun.errors import Preempted, TrainingError
from metarun.metrics import JsonlWriter


def capture_rng(sampler: torch.Generator) -> dict:
    """Every random generator's state: Python, NumPy, torch CPU and CUDA, the episode sampler."""
    name, keys, position, has_gauss, gauss = numpy.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(numpy.int64)), position, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "sampler": sampler.get_state()}


def restore_rng(state: dict, sampler: torch.Generator) -> None:
    """Puts every generator back as capture_rng found it (tuples arrive as lists from a file)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    numpy.random.set_state((name, keys.numpy().astype(numpy.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    sampler.set_state(state["sampler"])


@dataclass(frozen=True)
class Schedule:
    iterations: int
    meta_batch_size: int
    log_every: int
    val_every: int
    ckpt_every: int
    nonfinite: str = "stop"  # stop | skip
    clip_grad_norm: float | None = None  # largest meta-gradient norm applied; None: no clipping


class Trainer:
    def __init__(self, algo, engine, optimizer, scheduler, sampler, validate: Callable[[], dict],
                 schedule: Schedule, run_dir: Path, config: dict, metric: str, seed: int,
                 world: World | None = None) -> None:
        self.world = world or World()  # rank 0 alone writes files and progress output
        self.algo, self.engine, self.optimizer, self.scheduler = algo, engine, optimizer, scheduler
        self.sampler, self.validate, self.schedule = sampler, validate, schedule
        self.run_dir, self.config, self.metric = Path(run_dir), config, metric
        self.generator = torch.Generator().manual_seed(seed)
        self.higher_is_better = metric == "accuracy"
        self.best_score = -math.inf if self.higher_is_better else math.inf
        self.best_iteration = self.iteration = self.skipped = 0
        self.window: list[tuple[float, float]] = []  # (loss, score) of steps since the last log row
        self.metrics = JsonlWriter(self.run_dir / "metrics.jsonl")
        self.shown = ("train_loss", f"train_{metric}", "tasks_per_s", f"val_{metric}")
        self.stop_signal: int | None = None
        self.logger = None
        self.last_saved: int | None = None
        self.elapsed_before = self.elapsed = 0.0  # training wall time before this process, and so far

    def fit(self, logger=None) -> dict:
        """Trains up to the configured iterations; returns throughput and the best validation.

        `logger` (optional, metarun.loggers) receives every metrics row as well."""
        s, self.logger = self.schedule, logger
        if s.iterations == 0:  # nothing to train: validate and keep the model as it starts (e.g. init_from)
            self._log_and_validate(0, 0.0)
            self.save("last", 0)
        window_seconds, first = 0.0, self.iteration
        started = time.perf_counter() - self.elapsed_before  # wall time carries over a resume
        bar = tqdm(range(first + 1, s.iterations + 1), desc="meta-train", dynamic_ncols=True,
                   initial=first, total=s.iterations, disable=not self.world.is_main)
        with self._preemptible():
            for iteration in bar:
                step_start = time.perf_counter()
                self._step(iteration)
                window_seconds += time.perf_counter() - step_start
                self.iteration = iteration
                self.elapsed = time.perf_counter() - started
                row = self._log_and_validate(iteration, window_seconds)
                if row:
                    window_seconds = 0.0
                    bar.set_postfix({k.removeprefix("train_"): f"{v:.3g}" for k, v in row.items() if k in self.shown})
                stopping = self.world.any(self.stop_signal is not None)  # every rank stops at one iteration
                if iteration % s.ckpt_every == 0 or iteration == s.iterations or stopping:
                    self.save("last", iteration)
                if stopping:
                    raise Preempted(f"Stopped by a signal after iteration {iteration}; "
                                    f"checkpoint written to {self.run_dir / 'checkpoints' / 'last.pt'}. "
                                    f"Resume with the same command plus hydra.run.dir={self.run_dir} "
                                    "trainer.resume=auto.")
        wall = time.perf_counter() - started
        this_process = max(wall - self.elapsed_before, 1e-9)
        return {"wall_time_s": wall,
                "tasks_per_s_overall": (s.iterations - first) * s.meta_batch_size / this_process,
                "best_iteration": self.best_iteration, f"best_val_{self.metric}": self.best_score,
                "skipped_nonfinite": self.skipped}

    def _step(self, iteration: int) -> None:
        batch = self.sampler.sample(self.schedule.meta_batch_size, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        self.algo.set_progress(iteration)
        loss, score = self.engine.meta_backward(self.algo, batch)
        if not self._finite(loss):
            if self.schedule.nonfinite != "skip":
                raise TrainingError(
                    f"The meta-loss or its gradient is not finite at iteration {iteration}. "
                    f"{self._last_good()} Lower optimizer.lr or "
                    "algo.inner_lr, or set trainer.nonfinite=skip to skip such meta-batches.")
            self.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            return
        if self.schedule.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.algo.parameters(), self.schedule.clip_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.window.append((loss, score))

    def _last_good(self) -> str:
        if self.last_saved is None:
            return "No checkpoint has been written yet."
        return (f"The last good checkpoint is {self.run_dir / 'checkpoints' / 'last.pt'} "
                f"(iteration {self.last_saved}).")

    def _finite(self, loss: float) -> bool:
        grads = [p.grad.flatten() for p in self.algo.parameters() if p.grad is not None]
        return math.isfinite(loss) and (not grads or bool(torch.cat(grads).isfinite().all()))

    def _log_and_validate(self, iteration: int, window_seconds: float) -> dict:
        """Writes a metrics row when one is due; returns it (empty when none was due)."""
        s, last = self.schedule, iteration == self.schedule.iterations
        row: dict = {}
        if iteration % s.log_every == 0 or last:
            row["iteration"] = iteration
            if self.window:
                losses, scores = zip(*self.window)
                row.update(train_loss=sum(losses) / len(losses),
                           **{f"train_{self.metric}": sum(scores) / len(scores)},
                           tasks_per_s=len(self.window) * s.meta_batch_size / window_seconds)
            if self.skipped:
                row["skipped_nonfinite"] = self.skipped
            self.window = []
        if iteration % s.val_every == 0 or last:
            row.update(iteration=iteration, **self._validate_and_keep_best(iteration))
        if row and self.world.is_main:
            row["elapsed_s"] = round(self.elapsed, 3)
            self.metrics.write(row)
            if self.logger is not None:
                self.logger.log(row)
        return row

    def _validate_and_keep_best(self, iteration: int) -> dict:
        summary = self.validate()[self.metric]
        better = summary["mean"] > self.best_score if self.higher_is_better else summary["mean"] < self.best_score
        if better or self.best_iteration == 0:  # the first validation always leaves a best.pt
            self.best_score, self.best_iteration = summary["mean"], iteration
            self.save("best", iteration)
        return {f"val_{self.metric}": summary["mean"], f"val_{self.metric}_ci95": summary["ci95"]}

    @contextmanager
    def _preemptible(self) -> Iterator[None]:
        """First SIGTERM/SIGINT: finish the iteration, checkpoint, stop. A second: exit at once."""
        def request_stop(signum, frame) -> None:
            if self.stop_signal is not None:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
            self.stop_signal = signum

        handled = (signal.SIGTERM, signal.SIGINT)
        try:
            previous = {s: signal.signal(s, request_stop) for s in handled}
        except ValueError:  # not the main thread: leave signals to the host program
            previous = {}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def save(self, name: str, iteration: int) -> None:
        """Writes checkpoints/<name>.pt atomically with everything needed to resume or evaluate."""
        if name == "last":
            self.last_saved = iteration
        if not self.world.is_main:
            return
        state = {
            "format": FORMAT_VERSION,
            "model": self.algo.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "iteration": iteration,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "skipped_nonfinite": self.skipped,
            "elapsed_s": self.elapsed,
            "window": self.window,
            "rng": capture_rng(self.generator),
            "config": self.config,
        }
        folder = self.run_dir / "checkpoints"
        atomic_save(state, folder / f"{name}.pt", previous=folder / "previous.pt" if name == "last" else None)

    def restore(self, state: dict) -> None:
        """Continues from a checkpoint exactly where it was written."""
        self.algo.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.iteration, self.skipped = state["iteration"], state["skipped_nonfinite"]
        self.last_saved = state["iteration"]
        self.elapsed_before = self.elapsed = state["elapsed_s"]
        self.best_score, self.best_iteration = state["best_score"], state["best_iteration"]
        self.window = [tuple(pair) for pair in state["window"]]
        restore_rng(state["rng"], self.generator)
        self._drop_metrics_after(self.iteration)

    def _drop_metrics_after(self, iteration: int) -> None:
        """Rows logged after the checkpoint will be logged again by the resumed run."""
        path = self.metrics.path
        if path.exists() and self.world.is_main:
            rows = [line for line in path.read_text().splitlines()
                    if line and json.loads(line)["iteration"] <= iteration]
            path.write_text("".join(row + "\n" for row in rows))

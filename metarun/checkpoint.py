"""One checkpoint format: a dict holding everything to resume or evaluate from the file alone.

Writes are atomic (temporary file, flush, fsync, rename) so a crash or a full disk
mid-save never destroys a checkpoint; the periodic checkpoint it replaces is kept as
previous.pt, so a newest file that later turns out damaged still leaves one to resume
from. Reads never execute pickled code (weights_only).
"""

from __future__ import annotations

import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy
import torch

from metarun.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    from metarun.algorithms.base import Algorithm

FORMAT_VERSION = 1
RESUME_ORDER = ("last.pt", "previous.pt")


def atomic_save(obj: dict, path: Path, previous: Path | None = None) -> None:
    """Writes obj to path atomically; the file it replaces is renamed to `previous` if given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise TrainingError(
            f"Could not write {path} ({error.strerror or error}). The checkpoint "
            f"that was there before is intact. Free disk space (or point "
            "hydra.run.dir at another disk) and resume with trainer.resume=auto."
        ) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def capture_rng(sampler: torch.Generator) -> dict:
    """Every random generator's state: Python, NumPy, torch CPU and CUDA, the episode sampler."""
    state = cast(tuple[str, numpy.ndarray, int, int, float], numpy.random.get_state())
    name, keys, position, has_gauss, gauss = state
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(numpy.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampler": sampler.get_state(),
    }


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


@dataclass
class Progress:
    """Where a training run stands, beside its weights and optimiser: all of it is checkpointed."""

    higher_is_better: bool
    iteration: int = 0
    best_score: float = math.nan
    best_iteration: int = 0
    skipped_nonfinite: int = 0
    elapsed_s: float = 0.0  # training wall time so far, over every process that ran this run
    window: list[tuple] = field(default_factory=list)  # (loss, score, stats) since the last row

    def __post_init__(self) -> None:
        if math.isnan(self.best_score):
            self.best_score = -math.inf if self.higher_is_better else math.inf

    def improves(self, score: float) -> bool:
        """True for the first validation and for any score better than the best so far."""
        better = score > self.best_score if self.higher_is_better else score < self.best_score
        return better or self.best_iteration == 0


@dataclass(frozen=True)
class TrainingState:
    """Everything that influences the rest of a run, so a resumed run is the same run."""

    model: Algorithm
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator  # draws the training episodes
    progress: Progress
    config: dict

    def capture(self) -> dict:
        p = self.progress
        return {
            "format": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "iteration": p.iteration,
            "best_score": p.best_score,
            "best_iteration": p.best_iteration,
            "skipped_nonfinite": p.skipped_nonfinite,
            "elapsed_s": p.elapsed_s,
            "window": p.window,
            "rng": capture_rng(self.generator),
            "config": self.config,
        }

    def restore(self, state: dict, path: Path) -> None:
        """Continues from a checkpoint exactly where it was written."""
        restore_model(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        p = self.progress
        p.iteration, p.skipped_nonfinite, p.elapsed_s = (
            state["iteration"],
            state["skipped_nonfinite"],
            state["elapsed_s"],
        )
        p.best_score, p.best_iteration = state["best_score"], state["best_iteration"]
        p.window = [tuple(entry) for entry in state["window"]]
        restore_rng(state["rng"], self.generator)


def load_checkpoint(path: Path) -> dict:
    """Reads a checkpoint safely (weights_only) or explains why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"No checkpoint at {path}. Train first, or pass "
            "checkpoint=best|last|<path to a .pt file>."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"The checkpoint {path} cannot be read ({type(error).__name__}: {error}). "
            "It is truncated, corrupted or not a metarun checkpoint: use another one "
            "(checkpoint=last or checkpoint=best) or retrain."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "model" not in state:
        raise ConfigError(
            f"{path} is not a metarun checkpoint (format {FORMAT_VERSION}). "
            "Pass a file written by `metarun train`."
        )
    return state


def newest_valid_checkpoint(folder: Path) -> tuple[dict, Path] | None:
    """The resumable checkpoint with the highest iteration, skipping (and reporting) bad files."""
    found = []
    for name in RESUME_ORDER:
        path = Path(folder) / name
        if not path.exists():
            continue
        try:
            found.append((load_checkpoint(path), path))
        except ConfigError as error:
            print(
                f"metarun: warning: {error} Falling back to an older checkpoint.", file=sys.stderr
            )
    return max(found, key=lambda item: item[0]["iteration"], default=None)


def restore_model(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Loads weights, turning a shape mismatch into a clear error instead of a traceback."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        detail = str(error).split("\n", 1)[-1].strip()
        raise ConfigError(
            f"The checkpoint {path} was saved by a model of a different shape than "
            f"the current configuration builds ({detail[:400]}). Evaluate it with the "
            "config saved beside it (metarun eval run_dir=<its run folder>) or change "
            "backbone/algo/task settings back to the ones it was trained with."
        ) from None


def checkpoint_file(path: Path) -> Path:
    """A run folder names its best checkpoint; a file names itself."""
    path = Path(path)
    return path / "checkpoints" / "best.pt" if path.is_dir() else path


def copy_matching_weights(model: torch.nn.Module, source: Path) -> int:
    """Starts `model` from another run's weights (`init_from`): every tensor whose name and shape
    match is copied, the rest keep their initialisation. Returns how many were copied."""
    weights = load_checkpoint(checkpoint_file(source))["model"]
    own = model.state_dict()
    matching = {
        name: value
        for name, value in weights.items()
        if name in own and own[name].shape == value.shape
    }
    if not matching:
        raise ConfigError(
            f"init_from={source}: none of its weights has a name and shape of this model. "
            "Start from a run whose algorithm keeps its embedding under the same names "
            "(ProtoNet, Matching/Relation Networks, Baseline and nearest neighbour share "
            "`model.*`) and the same backbone settings."
        )
    model.load_state_dict(matching, strict=False)
    return len(matching)

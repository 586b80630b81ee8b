"""What a dataset and its samplers implement, written down for the datasets still to come.

A dataset yields samplers of episodes for a split; a sampler draws a plan (cheap integers
or numbers on the CPU, from a seeded generator) and builds the episode's tensors from it on
the device, so the same seed gives the same episodes anywhere and the evaluator can split
a plan between processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from metarun.episode import Episode
from metarun.errors import ConfigError


@dataclass
class EpisodeShapeError(ConfigError):
    """An episode shape the split cannot provide, with the values that fed it. Its own message
    names the task.* settings; a caller that knows other settings fed the values (eval.shots...)
    names those with `explain`."""

    split: str
    ways: int
    shots: int
    queries: int
    classes: int | None = None  # classes in the split
    per_class: int | None = None  # examples per class
    online: bool = False  # one sequence of `shots` instances per class, no queries
    smallest: str | None = None  # the class with the fewest examples, where classes differ

    def __str__(self) -> str:
        return self.explain("task.ways", "task.shots", "task.queries")

    def explain(self, ways: str, shots: str, queries: str) -> str:
        """One paragraph naming the settings `ways`, `shots` and `queries` (their full keys)."""
        counts = ((ways, self.ways), (shots, self.shots), (queries, self.queries))
        for name, value in counts[: 2 if self.online else 3]:
            if value <= 0:
                return (
                    f"{name}={value} is not allowed: it must be greater than zero. "
                    f"Set {name}=1 or more."
                )
        if self.classes is not None and self.ways > self.classes:
            return (
                f"{ways}={self.ways} but the '{self.split}' split has only {self.classes} classes. "
                f"Lower {ways} to at most {self.classes}."
            )
        if self.online:
            return (
                f"Each class of the '{self.split}' split has {self.per_class} images but the "
                f"online protocol shows {shots}={self.shots} instances of each. Lower {shots} "
                f"to at most {self.per_class}."
            )
        total = self.shots + self.queries
        owner = f"Each class of the '{self.split}' split has"
        if self.smallest is not None:
            owner = f"Class {self.smallest!r}, the smallest of the '{self.split}' split, has"
        return (
            f"{owner} {self.per_class} images but "
            f"{shots} + {queries} = {self.shots} + {self.queries} = {total}. "
            f"Lower {shots} or {queries} so their sum is at most {self.per_class}."
        )


def check_shape(
    split: str,
    ways: int,
    shots: int,
    queries: int,
    classes: int | None = None,
    per_class: int | None = None,
    smallest: str | None = None,
) -> None:
    """Raises EpisodeShapeError when the split cannot give episodes of this shape; `per_class` is
    the smallest class's size, `smallest` its name where class sizes differ."""
    error = EpisodeShapeError(split, ways, shots, queries, classes, per_class, smallest=smallest)
    if min(ways, shots, queries) <= 0 or (classes is not None and ways > classes):
        raise error
    if per_class is not None and shots + queries > per_class:
        raise error


@runtime_checkable
class Sampler(Protocol):
    """A sampler whose scores per episode have columns (environments: the return after each
    adaptation step; online sequences: the accuracy at each showing of a class) also names them
    in a class attribute `score_columns` (metarun.evaluator.HEADLINES)."""

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """The plan of `num_tasks` tasks, on the CPU: [tasks, ...]."""

    def build(self, plan: torch.Tensor) -> Episode:
        """The planned tasks' tensors, on the sampler's device."""

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        """build(draw(...))."""


@runtime_checkable
class Dataset(Protocol):
    metric: str  # "accuracy" or "mse": how query predictions are scored
    input_shape: tuple[int, ...]  # one model input's shape, for sizing the backbone

    def out_features(self, ways: int) -> int:
        """Outputs a model needs for `ways`-way tasks (1 for regression)."""

    def preprocess(self, raw: Any) -> torch.Tensor:
        """The dataset's native item (a PIL image, a number) -> one model input (metarun.load)."""

    def protocol(self) -> dict:
        """What a published number must share with ours (split, rotations, ranges...)."""

    def sampler(
        self, split: str, ways: int, shots: int, queries: int, device: torch.device
    ) -> Sampler:
        """Episodes of one split; raises EpisodeShapeError for a shape the split cannot give."""


@runtime_checkable
class LabelledDataset(Dataset, Protocol):
    """A classification dataset that can also serve labelled batches of every class of a split,
    for algorithms trained as ordinary classifiers (`Capabilities.learns_from`
    "labelled_batches")."""

    def num_classes(self, split: str) -> int: ...

    def labelled_batches(self, split: str, batch_size: int, device: torch.device) -> Sampler: ...


@runtime_checkable
class SequenceDataset(Dataset, Protocol):
    """A classification dataset that can also serve the online protocol's sequences
    (task.protocol=online): `ways` classes x `instances` examples each, in random order."""

    def online_sequences(
        self, split: str, ways: int, instances: int, device: torch.device
    ) -> Sampler: ...


class ScalarRegression:
    """What the 1-D regression datasets share (sinusoid, gp_1d): MSE, scalar inputs, one output."""

    metric = "mse"
    input_shape = (1,)

    def out_features(self, ways: int) -> int:
        return 1

    def preprocess(self, x: float | torch.Tensor) -> torch.Tensor:
        """A scalar input position -> the model's input [1]."""
        return torch.as_tensor(x, dtype=torch.float32).reshape(1)

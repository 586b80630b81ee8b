"""Episodes from a class-indexed image tensor that lives on the training device.

Which classes and images make up each episode is drawn on the CPU from a seeded
generator (cheap integer work), so the same seed gives the same episodes on any
device; the pixels are gathered on the device in one indexing operation.
"""

from __future__ import annotations

import torch

from metarun.data.base import EpisodeShapeError, check_shape
from metarun.episode import Episode


def draw_images(
    images: torch.Tensor, tasks: int, ways: int, per_class: int, generator: torch.Generator
) -> torch.Tensor:
    """Flat indices into images [classes, examples, ...] of `ways` distinct classes and
    `per_class` distinct examples of each, per task: [tasks, ways, per_class]."""
    num_classes, examples = images.shape[:2]
    classes = torch.rand(tasks, num_classes, generator=generator).argsort(dim=1)[:, :ways]
    picks = torch.rand(tasks, ways, examples, generator=generator).argsort(dim=2)[:, :, :per_class]
    return classes.unsqueeze(-1) * examples + picks


class ClassImageSampler:
    """Samples N-way K-shot episodes from images stored as [classes, per_class, C, H, W] uint8."""

    def __init__(
        self, images: torch.Tensor, split: str, ways: int, shots: int, queries: int
    ) -> None:
        check_shape(split, ways, shots, queries, classes=images.shape[0], per_class=images.shape[1])
        self.images = images
        self.ways, self.shots, self.queries = ways, shots, queries

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Flat image indices for each task: [tasks, ways, shots+queries], drawn on the CPU."""
        return draw_images(self.images, num_tasks, self.ways, self.shots + self.queries, generator)

    def build(self, plan: torch.Tensor) -> Episode:
        """Gathers the planned images on the device and splits them into support and query."""
        tasks = plan.shape[0]
        flat = self.images.flatten(0, 1)
        pixels = flat[plan.to(flat.device)].float().div_(255.0)  # [tasks, ways, S+Q, C, H, W]
        labels = torch.arange(self.ways, device=flat.device).view(1, self.ways, 1)
        labels = labels.expand(tasks, self.ways, self.shots + self.queries)
        s = self.shots
        return Episode(
            support_x=pixels[:, :, :s].flatten(1, 2),  # [tasks, ways*shots, C, H, W]
            support_y=labels[:, :, :s].flatten(1, 2),
            query_x=pixels[:, :, s:].flatten(1, 2),  # [tasks, ways*queries, C, H, W]
            query_y=labels[:, :, s:].flatten(1, 2),
            ways=self.ways,
        )

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        return self.build(self.draw(num_tasks, generator))


class LabelledImageSampler:
    """Batches of labelled images drawn uniformly (with replacement) from every class of a split,
    for algorithms trained as ordinary classifiers (`Algorithm.episodic = False`, e.g. Baseline).

    Each batch is an Episode with an empty support set whose queries carry the split's class
    indices, `ways` being the split's class count, so the engine and trainer need nothing new.
    """

    def __init__(self, images: torch.Tensor, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Flat image indices [tasks, batch_size], drawn on the CPU."""
        total = self.images.shape[0] * self.images.shape[1]
        return torch.randint(total, (num_tasks, self.batch_size), generator=generator)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        flat = self.images.flatten(0, 1)
        plan = self.draw(num_tasks, generator).to(flat.device)
        pixels = flat[plan].float().div_(255.0)  # [tasks, batch, C, H, W]
        labels = plan // self.images.shape[1]
        return Episode(pixels[:, :0], labels[:, :0], pixels, labels, ways=self.images.shape[0])


class VariableShape:
    """Episodes whose shots (and queries) are drawn per meta-batch, uniformly from the ranges in
    the keys of `samplers` (one sampler per (shots, queries) pair; SNAIL trains one model for
    K = 1..5, the CNP notebook draws its contexts and targets per batch). All episodes of one
    batch share their shape, so the batch stays one rectangular tensor per field."""

    def __init__(self, samplers: dict[tuple[int, int], object]) -> None:
        self.samplers = samplers
        self.shots = sorted({shots for shots, _ in samplers})
        self.queries = sorted({queries for _, queries in samplers})

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        shots = self.shots[torch.randint(len(self.shots), (1,), generator=generator).item()]
        queries = self.queries[0]
        if len(self.queries) > 1:
            queries = self.queries[
                torch.randint(len(self.queries), (1,), generator=generator).item()
            ]
        return self.samplers[shots, queries].sample(num_tasks, generator)


class OnlineSequenceSampler:
    """Santoro et al. (2016)'s episodes: `ways` classes x `instances` images each, shown as one
    sequence in random order with labels 0..ways-1 assigned at random. The Episode has an empty
    support set and the sequence as its queries (metarun.algorithms.sequence reads it)."""

    score_columns = "by_instance"

    def __init__(self, images: torch.Tensor, split: str, ways: int, instances: int) -> None:
        classes, per_class = images.shape[:2]
        if ways > classes or instances > per_class:
            raise EpisodeShapeError(split, ways, instances, 0, classes, per_class, online=True)
        self.images, self.ways, self.instances = images, ways, instances

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """[tasks, ways*instances, 2]: (flat image index, label) of each step, in showing order."""
        episodes = draw_images(self.images, num_tasks, self.ways, self.instances, generator)
        labels = torch.arange(self.ways).view(1, -1, 1).expand_as(episodes)
        steps = torch.stack([episodes, labels], dim=-1).flatten(1, 2)  # grouped by class
        order = torch.rand(num_tasks, steps.shape[1], generator=generator).argsort(dim=1)
        return steps[torch.arange(num_tasks).unsqueeze(1), order]

    def build(self, plan: torch.Tensor) -> Episode:
        flat = self.images.flatten(0, 1)
        plan = plan.to(flat.device)
        pixels = flat[plan[..., 0]].float().div_(255.0)  # [tasks, T, C, H, W]
        labels = plan[..., 1]
        return Episode(pixels[:, :0], labels[:, :0], pixels, labels, ways=self.ways)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        return self.build(self.draw(num_tasks, generator))

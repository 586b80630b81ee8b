"""Episodes from a class-indexed image tensor that lives on the training device.

Which classes and images make up each episode is drawn on the CPU from a seeded
generator (cheap integer work), so the same seed gives the same episodes on any
device; the pixels are gathered on the device in one indexing operation.
"""

from __future__ import annotations

from typing import Any

import torch

from metarun.data.base import EpisodeShapeError, check_shape
from metarun.episode import Episode


def class_layout(
    images: torch.Tensor, counts: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat images [total, ...], examples per class on the CPU) of images stored as
    [classes, per_class, ...] (counts None) or as [total, ...] grouped by class."""
    if counts is None:
        counts = torch.full((images.shape[0],), images.shape[1], dtype=torch.long)
        images = images.flatten(0, 1)
    return images, counts.long().cpu()


def draw_images(
    counts: torch.Tensor, tasks: int, ways: int, per_class: int, generator: torch.Generator
) -> torch.Tensor:
    """Flat indices into class-grouped images (`counts[c]` examples of class c, stored one class
    after another) of `ways` distinct classes and `per_class` distinct examples of each, per task:
    [tasks, ways, per_class]. Equal counts draw exactly what the rectangular layout drew."""
    num_classes, examples = len(counts), int(counts.max())
    classes = torch.rand(tasks, num_classes, generator=generator).argsort(dim=1)[:, :ways]
    keys = torch.rand(tasks, ways, examples, generator=generator)
    keys[torch.arange(examples) >= counts[classes].unsqueeze(-1)] = 2.0  # past a class's end
    picks = keys.argsort(dim=2)[:, :, :per_class]
    offsets = torch.cumsum(counts, 0) - counts
    return offsets[classes].unsqueeze(-1) + picks


class ClassImageSampler:
    """Samples N-way K-shot episodes from uint8 images stored as [classes, per_class, C, H, W], or
    as [total, C, H, W] grouped by class with `counts` images per class (classes of unequal size,
    named by `names` in errors)."""

    def __init__(
        self,
        images: torch.Tensor,
        split: str,
        ways: int,
        shots: int,
        queries: int,
        counts: torch.Tensor | None = None,
        names: list[str] | None = None,
    ) -> None:
        self.flat, self.counts = class_layout(images, counts)
        smallest = int(self.counts.argmin())
        check_shape(
            split,
            ways,
            shots,
            queries,
            len(self.counts),
            int(self.counts[smallest]),
            names[smallest] if names else None,
        )
        self.ways, self.shots, self.queries = ways, shots, queries

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Flat image indices for each task: [tasks, ways, shots+queries], drawn on the CPU."""
        return draw_images(self.counts, num_tasks, self.ways, self.shots + self.queries, generator)

    def build(self, plan: torch.Tensor) -> Episode:
        """Gathers the planned images on the device and splits them into support and query."""
        tasks, flat = plan.shape[0], self.flat
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
    for algorithms trained as ordinary classifiers (`learns_from="labelled_batches"`: Baseline).
    Images are laid out as for ClassImageSampler.

    Each batch is an Episode with an empty support set whose queries carry the split's class
    indices, `ways` being the split's class count, so the engine and trainer need nothing new.
    """

    def __init__(
        self, images: torch.Tensor, batch_size: int, counts: torch.Tensor | None = None
    ) -> None:
        self.flat, self.counts = class_layout(images, counts)
        self.class_ends = self.counts.cumsum(0)
        self.batch_size = batch_size

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """Flat image indices [tasks, batch_size], drawn on the CPU."""
        return torch.randint(len(self.flat), (num_tasks, self.batch_size), generator=generator)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        plan = self.draw(num_tasks, generator)
        labels = torch.bucketize(plan, self.class_ends, right=True).to(self.flat.device)
        pixels = self.flat[plan.to(self.flat.device)].float().div_(255.0)  # [tasks, batch, C, H, W]
        return Episode(pixels[:, :0], labels[:, :0], pixels, labels, ways=len(self.counts))


class Augmented:
    """Training batches whose images are each transformed at random (`transform`: torchvision
    transforms of one float [C, H, W] image in [0, 1], e.g. random resized crop, flip, colour
    jitter). The randomness is seeded from the episode generator, so a seed, and a resumed run,
    give the same augmented batches."""

    def __init__(self, sampler, transform) -> None:
        self.sampler, self.transform = sampler, transform

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        batch = self.sampler.sample(num_tasks, generator)
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            support_x, query_x = self._each(batch.support_x), self._each(batch.query_x)
        return Episode(support_x, batch.support_y, query_x, batch.query_y, batch.ways)

    def _each(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(0, 1)  # [tasks * examples, C, H, W]
        if len(flat) == 0:
            return images
        return torch.stack([self.transform(image) for image in flat]).view_as(images)


class VariableShape:
    """Episodes whose shots (and queries) are drawn per meta-batch, uniformly from the ranges in
    the keys of `samplers` (one sampler per (shots, queries) pair; SNAIL trains one model for
    K = 1..5, the CNP notebook draws its contexts and targets per batch). All episodes of one
    batch share their shape, so the batch stays one rectangular tensor per field."""

    def __init__(self, samplers: dict[tuple[int, int], Any]) -> None:
        self.samplers = samplers
        self.shots = sorted({shots for shots, _ in samplers})
        self.queries = sorted({queries for _, queries in samplers})

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        shots = self.shots[int(torch.randint(len(self.shots), (1,), generator=generator))]
        queries = self.queries[0]
        if len(self.queries) > 1:
            queries = self.queries[int(torch.randint(len(self.queries), (1,), generator=generator))]
        return self.samplers[shots, queries].sample(num_tasks, generator)


class OnlineSequenceSampler:
    """Santoro et al. (2016)'s episodes: `ways` classes x `instances` images each, shown as one
    sequence in random order with labels 0..ways-1 assigned at random. The Episode has an empty
    support set and the sequence as its queries (metarun.algorithms.sequence reads it)."""

    score_columns = "by_instance"

    def __init__(
        self,
        images: torch.Tensor,
        split: str,
        ways: int,
        instances: int,
        counts: torch.Tensor | None = None,
    ) -> None:
        self.flat, self.counts = class_layout(images, counts)
        classes, per_class = len(self.counts), int(self.counts.min())
        if ways > classes or instances > per_class:
            raise EpisodeShapeError(split, ways, instances, 0, classes, per_class, online=True)
        self.ways, self.instances = ways, instances

    def draw(self, num_tasks: int, generator: torch.Generator) -> torch.Tensor:
        """[tasks, ways*instances, 2]: (flat image index, label) of each step, in showing order."""
        episodes = draw_images(self.counts, num_tasks, self.ways, self.instances, generator)
        labels = torch.arange(self.ways).view(1, -1, 1).expand_as(episodes)
        steps = torch.stack([episodes, labels], dim=-1).flatten(1, 2)  # grouped by class
        order = torch.rand(num_tasks, steps.shape[1], generator=generator).argsort(dim=1)
        return steps[torch.arange(num_tasks).unsqueeze(1), order]

    def build(self, plan: torch.Tensor) -> Episode:
        plan = plan.to(self.flat.device)
        pixels = self.flat[plan[..., 0]].float().div_(255.0)  # [tasks, T, C, H, W]
        labels = plan[..., 1]
        return Episode(pixels[:, :0], labels[:, :0], pixels, labels, ways=self.ways)

    def sample(self, num_tasks: int, generator: torch.Generator) -> Episode:
        return self.build(self.draw(num_tasks, generator))

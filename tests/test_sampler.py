"""Episode sampler invariants (on in-memory images), and the real Omniglot splits' limits."""

from __future__ import annotations

import pytest
import torch
from synthetic import TinyImages

from metarun.data.omniglot import Omniglot
from metarun.data.sampler import ClassImageSampler
from metarun.errors import ConfigError


@pytest.fixture(scope="module")
def omniglot(data_root):
    return Omniglot(str(data_root), download=False)


@pytest.fixture(scope="module")
def images():
    """Omniglot-shaped classes in memory: 30 classes of 20 images of 28x28."""
    return TinyImages(classes=30, per_class=20, image_size=28)


def plan_and_episode(images, ways=5, shots=2, queries=3, tasks=8, seed=0):
    sampler = ClassImageSampler(images, "test", ways, shots, queries)
    plan = sampler.draw(tasks, torch.Generator().manual_seed(seed))
    return sampler, plan, sampler.build(plan)


def test_episode_shapes_and_labels(images):
    _, _, episode = plan_and_episode(images.split_images("test"))
    assert episode.support_x.shape == (8, 10, 1, 28, 28)
    assert episode.query_x.shape == (8, 15, 1, 28, 28)
    for labels, per_class in ((episode.support_y, 2), (episode.query_y, 3)):
        assert torch.equal(
            labels.bincount(minlength=5)
            if labels.dim() == 1
            else torch.stack([row.bincount(minlength=5) for row in labels]),
            torch.full((8, 5), per_class),
        )


def test_classes_distinct_and_support_query_disjoint(images):
    sampler, plan, _ = plan_and_episode(images.split_images("test"), tasks=50)
    per_class = int(sampler.counts[0])  # every class has as many images
    classes = plan // per_class  # [tasks, ways, S+Q]
    assert (classes == classes[..., :1]).all(), "one class per way"
    for task in classes[..., 0]:
        assert task.unique().numel() == 5
    for task in plan:
        assert task.flatten().unique().numel() == task.numel(), "no image twice in a task"


def test_same_seed_same_episodes_and_different_seed_differs(images):
    pixels = images.split_images("val")
    first = plan_and_episode(pixels, seed=3)[2]
    again = plan_and_episode(pixels, seed=3)[2]
    other = plan_and_episode(pixels, seed=4)[2]
    assert torch.equal(first.support_x, again.support_x) and torch.equal(
        first.query_x, again.query_x
    )
    assert not torch.equal(first.support_x, other.support_x)


def test_splits_share_no_character(omniglot):
    split_characters = {
        s: {
            line.rsplit("/", 1)[0]
            for line in (omniglot.folder / "splits" / "vinyals" / f"{s}.txt").read_text().split()
        }
        for s in ("train", "val", "test")
    }
    assert not split_characters["train"] & split_characters["val"]
    assert not split_characters["train"] & split_characters["test"]
    assert not split_characters["val"] & split_characters["test"]


def test_too_many_ways_is_a_clear_error(omniglot):
    with pytest.raises(ConfigError, match=r"task.ways=700 .* only 688 classes"):
        ClassImageSampler(omniglot.split_images("val"), "val", 700, 1, 1)


def test_too_many_shots_and_queries_is_a_clear_error(omniglot):
    with pytest.raises(ConfigError, match=r"20 images but task.shots \+ task.queries = 10 \+ 15"):
        ClassImageSampler(omniglot.split_images("val"), "val", 5, 10, 15)


def test_classes_of_unequal_size_give_distinct_images_of_one_class_per_way():
    counts = torch.tensor([3, 7, 4, 9, 3, 5])
    labels = torch.repeat_interleave(torch.arange(6), counts)  # the class of each flat image
    images = labels.view(-1, 1, 1, 1).to(torch.uint8).expand(-1, 1, 2, 2).contiguous()
    sampler = ClassImageSampler(images, "train", 3, 1, 2, counts=counts)
    plan = sampler.draw(200, torch.Generator().manual_seed(0))  # [tasks, ways, 3]
    assert (labels[plan] == labels[plan][..., :1]).all(), "every image of a way from one class"
    assert all(len(set(row.tolist())) == 3 for row in plan.flatten(0, 1)), "no image twice"
    assert set(plan[labels[plan] == 3].tolist()) == set(range(14, 23)), "the whole class is used"


def test_equal_counts_draw_the_episodes_of_the_rectangular_layout(images):
    rectangular = images.split_images("test")  # [classes, per_class, C, H, W]
    counts = torch.full((rectangular.shape[0],), rectangular.shape[1])
    flat = ClassImageSampler(rectangular.flatten(0, 1), "test", 5, 2, 3, counts=counts)
    _, plan, episode = plan_and_episode(rectangular)
    assert torch.equal(flat.draw(8, torch.Generator().manual_seed(0)), plan)
    assert torch.equal(flat.build(plan).query_x, episode.query_x)

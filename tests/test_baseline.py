"""Baseline / Baseline++: a classifier of every training class, then a new head per task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metarun.algorithms.baseline import Baseline
from metarun.backbones.mlp import MLP
from metarun.data.sampler import LabelledImageSampler


def separable_task():
    """Three classes around far-apart centres, in 2-D (the identity embedding)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 1.0], [0.0, -5.0]], dtype=torch.float64)
    labels = torch.arange(3).repeat(4)
    points = centres[labels] + 0.5 * torch.randn(12, 2, generator=g, dtype=torch.float64)
    return points, labels


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_head_fit_on_a_separable_support_set_classifies_it_perfectly(head):
    algo = Baseline(MLP((2,), hidden=[]), out_features=7, head=head).double()
    points, labels = separable_task()
    logits = algo.adapt(algo.params(), points, labels, ways=3)(points)
    assert torch.equal(logits.argmax(1), labels)


def test_linear_head_follows_gradient_descent_with_momentum_and_weight_decay():
    algo = Baseline(MLP((2,), hidden=[]), out_features=7, finetune_steps=3).double()
    points, labels = separable_task()
    head = torch.nn.Linear(2, 3).double()
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    sgd = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, weight_decay=0.001)
    for _ in range(3):
        sgd.zero_grad()
        F.cross_entropy(head(points), labels).backward()
        sgd.step()
    fitted = algo.fit_head(points, labels, ways=3, steps=3)
    torch.testing.assert_close(fitted["weight"], head.weight.detach())
    torch.testing.assert_close(fitted["bias"], head.bias.detach())


def test_a_batch_without_support_is_classified_over_every_training_class():
    algo = Baseline(MLP((2,), hidden=[4]), out_features=7, head="cosine").double()
    x = torch.randn(5, 2, dtype=torch.float64)
    logits = algo.adapt(algo.params(), x[:0], torch.zeros(0, dtype=torch.long), ways=7)(x)
    expected = (
        10.0 * F.normalize(algo.model(x), dim=-1) @ F.normalize(algo.classifier.weight, dim=-1).T
    )
    torch.testing.assert_close(logits, expected)


def test_labelled_batches_carry_each_image_class_index():
    images = torch.arange(6 * 4, dtype=torch.uint8).view(
        6, 4, 1, 1, 1
    )  # class c, image i has value 4c + i
    batch = LabelledImageSampler(images, batch_size=10).sample(3, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (3, 0, 1, 1, 1) and batch.query_x.shape == (3, 10, 1, 1, 1)
    assert batch.ways == 6
    torch.testing.assert_close(batch.query_y, (batch.query_x.flatten(1) * 255).round().long() // 4)

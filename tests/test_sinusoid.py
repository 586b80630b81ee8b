"""dataset=sinusoid: MAML's curves, and their noisy variant."""

from __future__ import annotations

import torch

from metarun.data.sinusoid import Sinusoid


def test_noise_free_episodes_are_the_curves_themselves():
    sampler = Sinusoid().sampler("train", 1, 5, 5, "cpu")
    plan = sampler.draw(4, torch.Generator().manual_seed(0))
    assert plan.shape == (4, 2 + 10)  # amplitude, phase, x: no noise draws
    batch = sampler.build(plan)
    curve = plan[:, :1] * torch.sin(plan[:, 2:] - plan[:, 1:2])
    torch.testing.assert_close(torch.cat([batch.support_y, batch.query_y], 1)[..., 0], curve)


def test_noise_std_adds_gaussian_noise_to_support_and_query_targets():
    sampler = Sinusoid(noise_std=0.3).sampler("train", 1, 5, 5, "cpu")
    plan = sampler.draw(4000, torch.Generator().manual_seed(0))
    batch = sampler.build(plan)
    curve = plan[:, :1] * torch.sin(plan[:, 2:12] - plan[:, 1:2])
    noise = torch.cat([batch.support_y, batch.query_y], 1)[..., 0] - curve
    assert abs(noise.std().item() - 0.3) < 0.01 and abs(noise.mean().item()) < 0.01


def test_bmaml_curves_have_a_frequency_and_noise_in_proportion_to_the_amplitude():
    sampler = Sinusoid(frequency=(0.5, 2.0), noise_per_amplitude=0.01).sampler(
        "test", 1, 5, 5, "cpu"
    )
    plan = sampler.draw(4000, torch.Generator().manual_seed(0))
    amplitude, phase, x, frequency = plan[:, :1], plan[:, 1:2], plan[:, 2:12], plan[:, 12:13]
    assert 0.5 <= frequency.min() and frequency.max() <= 2.0
    batch = sampler.build(plan)
    curve = amplitude * torch.sin(frequency * x - phase)
    noise = (torch.cat([batch.support_y, batch.query_y], 1)[..., 0] - curve) / amplitude
    assert abs(noise.std().item() - 0.01) < 0.0005 and abs(noise.mean().item()) < 0.0005


def test_a_finite_task_set_trains_on_those_tasks_only_and_tests_on_fresh_ones():
    dataset = Sinusoid(train_tasks=3)
    train = dataset.sampler("train", 1, 5, 5, "cpu")
    drawn = train.draw(50, torch.Generator().manual_seed(1))
    assert len(torch.unique(drawn, dim=0)) == 3
    again = dataset.sampler("train", 1, 5, 5, "cpu").draw(50, torch.Generator().manual_seed(2))
    assert torch.unique(again, dim=0).tolist() == torch.unique(drawn, dim=0).tolist()
    test = dataset.sampler("test", 1, 5, 5, "cpu").draw(50, torch.Generator().manual_seed(1))
    assert len(torch.unique(test, dim=0)) == 50

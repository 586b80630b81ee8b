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

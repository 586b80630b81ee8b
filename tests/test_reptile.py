"""Reptile moves the initialisation towards the mean of the adapted weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_maml import classification_batch

from metarun.algorithms.reptile import Reptile
from metarun.backbones.conv4 import Conv4
from metarun.engine import Engine


def adapted_by_torch_adam(algo, support_x, support_y, steps, batch, lr):
    """phi from torch.optim.Adam(betas=(0, 0.999)) on class-interleaved support mini-batches."""
    model = copy.deepcopy(algo.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.999))
    ways = int(support_y.max()) + 1
    order = torch.arange(len(support_y)).view(ways, -1).T.flatten()
    for step in range(steps):
        chosen = order[[(step * batch + i) % len(order) for i in range(batch)]]
        optimizer.zero_grad()
        F.cross_entropy(model(support_x[chosen]), support_y[chosen]).backward()
        optimizer.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_update_moves_theta_towards_the_mean_adapted_weights(mode):
    torch.manual_seed(0)
    algo = Reptile(
        Conv4((1, 12, 12), hidden=4, blocks=2), 3, inner_lr=0.01, inner_steps=4, inner_batch=4
    ).double()
    batch = classification_batch(tasks=3, shots=2)
    theta = [p.detach().clone() for p in algo.parameters()]
    phis = [
        adapted_by_torch_adam(algo, batch.support_x[t], batch.support_y[t], 4, 4, 0.01)
        for t in range(3)
    ]
    eps = 0.7
    Engine(mode).meta_backward(algo, batch)
    torch.optim.SGD(algo.parameters(), lr=eps).step()
    for index, p in enumerate(algo.parameters()):
        mean_phi = torch.stack([phi[index] for phi in phis]).mean(0)
        torch.testing.assert_close(
            p.detach(), theta[index] + eps * (mean_phi - theta[index]), rtol=1e-7, atol=1e-9
        )

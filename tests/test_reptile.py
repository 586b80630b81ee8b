"""Reptile moves the initialisation towards the mean of the adapted weights; its inner Adam runs
on across tasks as in the released code, or starts afresh per task."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_maml import classification_batch

from metarun.algorithms.reptile import Reptile
from metarun.backbones.conv4 import Conv4
from metarun.engine import Engine, resolve_mode
from metarun.errors import ConfigError


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


def reptile(inner_state: str) -> Reptile:
    torch.manual_seed(0)
    return Reptile(
        Conv4((1, 12, 12), hidden=4, blocks=2),
        3,
        inner_lr=0.01,
        inner_steps=4,
        inner_batch=4,
        inner_state=inner_state,
    ).double()


def released_code_meta_batches(algo, batches, steps, lr, eps):
    """supervised-reptile's train_step: one Adam(beta1 = 0) trains every task, in order; only
    the weights are reset to theta before each task."""
    model = copy.deepcopy(algo.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.0, 0.999))
    for batch in batches:
        theta = [p.detach().clone() for p in model.parameters()]
        phis = []
        for t in range(batch.num_tasks):
            with torch.no_grad():
                for p, start in zip(model.parameters(), theta, strict=True):
                    p.copy_(start)
            x, y = batch.support_x[t], batch.support_y[t]
            order = torch.arange(len(y)).view(batch.ways, -1).T.flatten()
            for step in range(steps):
                chosen = order[[(step * 4 + i) % len(order) for i in range(4)]]
                optimizer.zero_grad()
                F.cross_entropy(model(x[chosen]), y[chosen]).backward()
                optimizer.step()
            phis.append([p.detach().clone() for p in model.parameters()])
        with torch.no_grad():
            for index, p in enumerate(model.parameters()):
                mean_phi = torch.stack([phi[index] for phi in phis]).mean(0)
                p.copy_(theta[index] + eps * (mean_phi - theta[index]))
    return model, optimizer


def test_carried_inner_adam_trains_as_the_released_code():
    algo = reptile("carried")
    batches = [classification_batch(tasks=3, shots=2), classification_batch(tasks=2, shots=2)]
    model, _ = released_code_meta_batches(algo, batches, steps=4, lr=0.01, eps=0.7)
    engine = Engine("loop")
    for batch in batches:
        algo.zero_grad()
        engine.meta_backward(algo, batch)
        torch.optim.SGD(algo.parameters(), lr=0.7).step()
    for mine, theirs in zip(algo.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-7, atol=1e-9)
    assert int(algo.adam_steps) == 5 * 4  # five tasks of four steps


def test_evaluation_starts_from_the_carried_state_and_leaves_it():
    algo = reptile("carried")
    batch = classification_batch(tasks=3, shots=2)
    model, optimizer = released_code_meta_batches(algo, [batch], steps=4, lr=0.01, eps=0.7)
    Engine("loop").meta_backward(algo, batch)
    torch.optim.SGD(algo.parameters(), lr=0.7).step()
    state = {name: value.clone() for name, value in algo.named_buffers()}
    algo.eval()
    adapted = algo.fit(algo.params(), batch.support_x[0], batch.support_y[0], batch.ways)
    x, y = batch.support_x[0], batch.support_y[0]
    order = torch.arange(len(y)).view(batch.ways, -1).T.flatten()
    for step in range(4):  # the released evaluate: the trained optimizer runs on
        chosen = order[[(step * 4 + i) % len(order) for i in range(4)]]
        optimizer.zero_grad()
        F.cross_entropy(model(x[chosen]), y[chosen]).backward()
        optimizer.step()
    for mine, theirs in zip(adapted.values(), model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs.detach(), rtol=1e-7, atol=1e-9)
    for name, value in algo.named_buffers():
        assert torch.equal(value, state[name]), name


def test_carried_state_is_saved_with_the_weights():
    algo = reptile("carried")
    Engine("loop").meta_backward(algo, classification_batch(tasks=2, shots=2))
    copy_of = reptile("carried")
    copy_of.load_state_dict(algo.state_dict())
    assert int(copy_of.adam_steps) == 8
    assert torch.equal(copy_of.adam_second, algo.adam_second)
    assert algo.adam_second.abs().sum() > 0


def test_carried_state_runs_tasks_in_sequence():
    algo = reptile("carried")
    assert resolve_mode("auto", algo, torch.device("cpu")) == "loop"
    with pytest.raises(ConfigError, match="algo.inner_state=carried starts each task"):
        Engine("vmap").meta_backward(algo, classification_batch(tasks=2, shots=2))


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_update_moves_theta_towards_the_mean_adapted_weights(mode):
    torch.manual_seed(0)
    algo = reptile("fresh")
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

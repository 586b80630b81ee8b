"""MAML++: every fix a switch; with all off it is MAML."""

from __future__ import annotations

import pytest
import torch
from reference import maml_meta_gradient
from test_maml import classification_batch

from metarun import batchnorm
from metarun.algorithms.maml import MAML
from metarun.algorithms.maml_plus_plus import MAMLPlusPlus
from metarun.backbones.conv4 import Conv4
from metarun.engine import Engine


def meta_gradient(algo, batch, mode="loop") -> dict:
    algo.zero_grad()
    Engine(mode).meta_backward(algo, batch)
    return {name: p.grad.clone() for name, p in algo.named_parameters()}


def plus_plus(**switches):
    torch.manual_seed(0)
    options = (
        dict(
            multi_step_loss=False,
            first_order_epochs=0,
            learned_step_sizes=False,
            per_step_bn_weights=False,
        )
        | switches
    )
    return MAMLPlusPlus(
        Conv4((1, 12, 12), hidden=4, blocks=2), 3, inner_lr=0.4, inner_steps=3, **options
    ).double()


def test_all_switches_off_is_maml():
    algo, batch = plus_plus(), classification_batch()
    expected = maml_meta_gradient(algo, batch, 0.4, 3, first_order=False)
    actual = meta_gradient(algo, batch)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_learned_step_sizes_at_their_start_value_are_maml(mode):
    algo, batch = plus_plus(learned_step_sizes=True), classification_batch()
    for rates in algo.step_sizes:
        rates.data.fill_(0.4)  # exactly MAML's float64 rate
    expected = maml_meta_gradient(algo, batch, 0.4, 3, first_order=False)
    actual = meta_gradient(algo, batch, mode)
    for name in expected:
        if name.startswith("model."):
            torch.testing.assert_close(
                actual[name], expected[name], rtol=1e-9, atol=1e-11, msg=name
            )
    assert all(actual[f"step_sizes.{i}"].abs().max() > 0 for i in range(len(algo.step_sizes)))


def test_each_inner_step_uses_its_own_batchnorm_scale_and_shift():
    algo = plus_plus(per_step_bn_weights=True)
    norm = algo.model[0].features[1]
    assert norm.weight.shape == (3, 4)
    with torch.no_grad():
        norm.weight[1].mul_(3.0)
    x = torch.randn(6, 1, 12, 12, dtype=torch.float64)
    fast = {name: p for name, p in algo.params().items() if name.startswith("model.")}
    outputs = [algo.run_at_step(fast, x, step) for step in range(3)]
    torch.testing.assert_close(outputs[0], outputs[2])
    assert not torch.allclose(outputs[0], outputs[1])


def test_multi_step_loss_weights_anneal_to_the_last_step():
    algo = plus_plus(multi_step_loss=True, msl_epochs=10)
    weights = []
    for iteration in (0, 2500, 4999, 5000):
        algo.set_progress(iteration)
        weights.append(algo.step_weights(3))
    assert weights[0] == pytest.approx([1 / 3] * 3)
    assert weights[1][0] == pytest.approx(1 / 6) and weights[1][2] == pytest.approx(2 / 3)
    assert weights[2][0] == pytest.approx(1 / 30) and sum(weights[2]) == pytest.approx(1)
    assert weights[3] == [0.0, 0.0, 1.0]


def test_multi_step_loss_is_the_weighted_sum_of_per_step_query_losses():
    algo, batch = plus_plus(multi_step_loss=True), classification_batch(tasks=1)
    task = (batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0])
    loss, _ = algo.task_loss(algo.params(), *task, ways=3)
    per_step = [MAML.task_loss(algo, algo.params(), *task, ways=3, steps=k)[0] for k in (1, 2, 3)]
    torch.testing.assert_close(loss, sum(per_step) / 3)


def test_derivative_order_annealing_is_first_order_early_then_second_order():
    algo, batch = plus_plus(first_order_epochs=2), classification_batch()
    algo.set_progress(999)
    early = meta_gradient(algo, batch)
    algo.set_progress(1000)
    late = meta_gradient(algo, batch)
    first = maml_meta_gradient(algo, batch, 0.4, 3, first_order=True)
    second = maml_meta_gradient(algo, batch, 0.4, 3, first_order=False)
    for name in first:
        torch.testing.assert_close(early[name], first[name], rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(late[name], second[name], rtol=1e-9, atol=1e-11)


def test_per_step_bn_statistics_keep_one_running_average_per_inner_step():
    algo = plus_plus(per_step_bn_statistics=True)
    batchnorm.use_mode(algo, "running")
    Engine("loop").meta_backward(algo, classification_batch())
    running = algo.model[0].features[1].running_mean
    assert running.shape == (3, 4)
    assert not torch.allclose(running[0], running[1]) and not torch.allclose(running[1], running[2])

"""ADML's meta-gradient against a slow reference written with plain autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import assert_engines_agree
from torch.func import functional_call

from metarun.algorithms.adml import ADML
from metarun.attacks import Attack
from metarun.backbones.mlp import MLP
from metarun.engine import Engine
from metarun.episode import Episode


def batch(tasks=3, ways=3, shots=2, queries=2, features=6):
    g = torch.Generator().manual_seed(1)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
    images = lambda n: torch.rand(tasks, ways * n, features, generator=g, dtype=torch.float64)
    return Episode(images(shots), labels(shots), images(queries), labels(queries), ways)


def fgsm(loss, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """x + epsilon sign(d loss / dx), clipped to [0, 1], as a constant."""
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loss(x), x, retain_graph=True)
    return (x + epsilon * gradient.sign()).clamp(0, 1).detach()


def adml_reference(algo, episode, epsilon: float, inner_lr: float, first_order: bool) -> dict:
    """Per task: adversarial support against theta, one SGD step on it and on the clean support,
    adversarial queries against the cleanly adapted weights; the meta-loss is the adversarially
    adapted weights on clean queries plus the cleanly adapted weights on adversarial queries."""
    params = {name: p.detach().clone().requires_grad_(True) for name, p in algo.named_parameters()}
    run = lambda weights, x: functional_call(algo, weights, (x,))
    total = 0.0
    for t in range(episode.num_tasks):
        support_x, support_y = episode.support_x[t], episode.support_y[t]
        query_x, query_y = episode.query_x[t], episode.query_y[t]

        def adapted(support: torch.Tensor) -> dict:
            loss = F.cross_entropy(run(params, support), support_y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
            return {name: p - inner_lr * g for (name, p), g in zip(params.items(), grads)}

        summed = lambda weights, y: lambda x: F.cross_entropy(run(weights, x), y, reduction="sum")
        adversarial_support = fgsm(summed(params, support_y), support_x, epsilon)
        from_adversarial, from_clean = adapted(adversarial_support), adapted(support_x)
        adversarial_queries = fgsm(summed(from_clean, query_y), query_x, epsilon)
        total = total + F.cross_entropy(run(from_adversarial, query_x), query_y)
        total = total + F.cross_entropy(run(from_clean, adversarial_queries), query_y)
    meta = torch.autograd.grad(total / episode.num_tasks, list(params.values()))
    return dict(zip(params, meta))


def adml(first_order: bool = False) -> ADML:
    torch.manual_seed(0)
    algo = ADML(MLP((6,), hidden=[16]), 3, inner_lr=0.5, inner_steps=1, first_order=first_order)
    algo.train_attack = Attack(0.1)
    return algo.double()


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_the_slow_reference(first_order):
    algo, episode = adml(first_order), batch()
    expected = adml_reference(algo, episode, 0.1, 0.5, first_order)
    algo.zero_grad()
    Engine("loop").meta_backward(algo, episode)
    for name, value in expected.items():
        torch.testing.assert_close(
            dict(algo.named_parameters())[name].grad, value, rtol=1e-9, atol=1e-12, msg=name
        )


def test_loop_and_vmap_agree():
    assert_engines_agree(adml(), batch())

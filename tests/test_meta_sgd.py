"""Meta-SGD: MAML with a learned inner rate per weight coordinate."""

from __future__ import annotations

import torch
from test_maml import classification_batch, regression_batch

from metarun.algorithms.maml import MAML
from metarun.algorithms.meta_sgd import MetaSGD
from metarun.backbones.conv4 import Conv4
from metarun.backbones.mlp import MLP
from metarun.engine import Engine


def meta_gradient(algo, batch) -> dict:
    algo.zero_grad()
    Engine("loop").meta_backward(algo, batch)
    return {name: p.grad.clone() for name, p in algo.named_parameters()}


def test_equal_rates_reduce_to_maml():
    torch.manual_seed(0)
    meta_sgd = MetaSGD(
        Conv4((1, 12, 12), hidden=4, blocks=2), 3, inner_lr=0.4, inner_steps=2
    ).double()
    maml = MAML(Conv4((1, 12, 12), hidden=4, blocks=2), 3, inner_lr=0.4, inner_steps=2).double()
    maml.model.load_state_dict(meta_sgd.model.state_dict())
    for rates in meta_sgd.inner_lrs:
        rates.data.fill_(0.4)  # exactly MAML's float64 rate, not float32's nearest 0.4
    batch = classification_batch()
    ours, theirs = meta_gradient(meta_sgd, batch), meta_gradient(maml, batch)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-9, atol=1e-11, msg=name)


def test_rate_gradients_match_finite_differences():
    torch.manual_seed(0)
    algo = MetaSGD(
        MLP((1,), hidden=[5]), 1, inner_lr=0.05, inner_steps=2, inner_lr_range=(0.01, 0.1)
    ).double()
    batch = regression_batch()
    analytic = meta_gradient(algo, batch)

    def meta_loss() -> float:
        return Engine("loop").scores(algo, batch).mean().item()

    for index, rates in enumerate(algo.inner_lrs):
        flat = rates.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 3)):
            original = flat[i].item()
            flat[i] = original + 1e-6
            up = meta_loss()
            flat[i] = original - 1e-6
            down = meta_loss()
            flat[i] = original
            numeric = (up - down) / 2e-6
            assert abs(numeric - analytic[f"inner_lrs.{index}"].view(-1)[i].item()) < 1e-6, (
                index,
                i,
            )
    assert all(analytic[f"inner_lrs.{i}"].abs().max() > 0 for i in range(len(algo.inner_lrs)))

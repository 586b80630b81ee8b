"""ANIL is MAML with the inner loop on the head alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference import maml_meta_gradient
from test_maml import classification_batch

from metarun.algorithms.anil import ANIL
from metarun.backbones.conv4 import Conv4
from metarun.engine import Engine


@pytest.mark.parametrize("mode", ["loop", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_equals_maml_adapting_only_the_head(mode, first_order):
    torch.manual_seed(0)
    algo = ANIL(
        Conv4((1, 12, 12), hidden=4, blocks=2),
        3,
        inner_lr=0.4,
        inner_steps=2,
        first_order=first_order,
    ).double()
    batch = classification_batch()
    expected = maml_meta_gradient(
        algo, batch, 0.4, 2, first_order, adapts=lambda n: n.startswith("model.1.")
    )
    Engine(mode).meta_backward(algo, batch)
    for name, p in algo.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-9, atol=1e-11, msg=name)


def test_backbone_receives_no_inner_update():
    """Predictions are the adapted head on the meta-learned (unadapted) backbone's features."""
    torch.manual_seed(0)
    algo = ANIL(Conv4((1, 12, 12), hidden=4, blocks=2), 3, inner_lr=0.4, inner_steps=3).double()
    batch = classification_batch(tasks=1)
    predict = algo.adapt(algo.params(), batch.support_x[0], batch.support_y[0], ways=3)
    backbone, head = algo.model
    with torch.no_grad():
        support, query = backbone(batch.support_x[0]), backbone(batch.query_x[0])
    weight, bias = head.weight.detach().requires_grad_(), head.bias.detach().requires_grad_()
    for _ in range(3):
        loss = F.cross_entropy(support @ weight.T + bias, batch.support_y[0])
        grad_weight, grad_bias = torch.autograd.grad(loss, (weight, bias))
        weight, bias = weight - 0.4 * grad_weight, bias - 0.4 * grad_bias
    torch.testing.assert_close(predict(batch.query_x[0]), query @ weight.T + bias)

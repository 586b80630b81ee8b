"""The fast evaluation path of 2x2 max-pooling gives torch's values; gradients stay torch's."""

import torch
import torch.nn.functional as F

from metarun.backbones.pooling import MaxPool2x2


def _maps_with_ties_and_odd_sides() -> torch.Tensor:
    x = torch.randn(3, 4, 9, 11, generator=torch.Generator().manual_seed(0))
    x[0, :, :4, :4] = 0.5  # whole windows of equal values, as on Omniglot's blank background
    x[1, 2, 3, 5] = float("nan")
    return x


def test_without_autograd_the_values_are_torch_max_pooling():
    x = _maps_with_ties_and_odd_sides()
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(x).isnan(), F.max_pool2d(x, 2).isnan())
        assert torch.equal(MaxPool2x2()(x).nan_to_num(), F.max_pool2d(x, 2).nan_to_num())


def test_gradients_follow_torch_rule_on_ties_even_inside_no_grad():
    x = _maps_with_ties_and_odd_sides().nan_to_num()
    loss = lambda pool: lambda t: (pool(t * t) ** 2).sum()
    with torch.no_grad():  # evaluation's inner steps: torch.func.grad under no_grad
        mine = torch.func.grad(loss(MaxPool2x2()))(x)
        torch_own = torch.func.grad(loss(lambda t: F.max_pool2d(t, 2)))(x)
    assert torch.equal(mine, torch_own)

"""2x2 max-pooling: the fast evaluation path and the maximum of a window's four maps give torch's
values and gradients (its rule on ties)."""

import torch
import torch.nn.functional as F

from metarun.backbones.pooling import MaxPool2x2, max_of_window


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


def test_the_maximum_of_a_windows_four_maps_is_torch_max_pooling_ties_included():
    x = _maps_with_ties_and_odd_sides().nan_to_num()[..., :8, :10].requires_grad_()
    window = [x[..., row::2, column::2] for row in (0, 1) for column in (0, 1)]
    mine, torchs = max_of_window(window), F.max_pool2d(x, 2)
    assert torch.equal(mine, torchs)
    weights = torch.randn_like(torchs)
    assert torch.equal(*(torch.autograd.grad((y * weights).sum(), x)[0] for y in (mine, torchs)))

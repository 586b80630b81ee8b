"""Conv-4's first block as one product (compiled on a CPU) is the layers' function: values,
gradients and second-order gradients, in every BatchNorm mode, on images with ties."""

from __future__ import annotations

import pytest
import torch

from metarun import batchnorm
from metarun.backbones.conv4 import Conv4

MODELS = {
    "maxpool": {},
    "stride": {"downsample": "stride"},
    "unpooled": {"pooled_blocks": 0},
}


def images(count=6, channels=1, size=12):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(count, channels, size, size, generator=g) > 0.6).double()  # blank runs: ties
    x[0] = torch.rand(channels, size, size, generator=g)
    return x


def compiled_on_cpu(monkeypatch, compiled: bool) -> None:
    """What Conv4 sees inside torch.compile, without paying for a compilation."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiled)


def outputs_and_gradients(net, x, monkeypatch, compiled):
    """The output, and first and second derivatives of a loss in the parameters and images (the
    images' gradient is where torch's rule on ties shows)."""
    compiled_on_cpu(monkeypatch, compiled)
    x = x.clone().requires_grad_()
    params = [*net.parameters(), x]
    out = net(x)
    first = torch.autograd.grad(out.sin().sum(), params, create_graph=True, allow_unused=True)
    first = [torch.zeros_like(p) if g is None else g for p, g in zip(params, first)]
    second = torch.autograd.grad(sum(g.square().sum() for g in first), params, allow_unused=True)
    second = [torch.zeros_like(p) if g is None else g for p, g in zip(params, second)]
    return out, first, second


def assert_same(product, layers):
    for mine, expected in zip(product, layers, strict=True):
        if isinstance(mine, list):
            assert_same(mine, expected)
        else:
            torch.testing.assert_close(mine, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_first_block_as_one_product_is_the_layers_function(model, monkeypatch):
    torch.manual_seed(0)
    net = Conv4((1, 12, 12), hidden=5, blocks=2, **model).double()
    x = images()
    products, first_block = [], Conv4._first_block
    monkeypatch.setattr(
        Conv4, "_first_block", lambda *args: products.append(1) or first_block(*args)
    )
    product = outputs_and_gradients(net, x, monkeypatch, compiled=True)
    assert products, "the compiled forward took the product"
    assert_same(product, outputs_and_gradients(net, x, monkeypatch, compiled=False))
    assert len(products) == 1, "the uncompiled forward kept the layers"


def test_first_block_as_one_product_normalises_with_the_support_rows_at_each_step(monkeypatch):
    torch.manual_seed(0)
    net = Conv4((1, 12, 12), hidden=5, blocks=2).double()
    net.features[1].per_step(3)
    with torch.no_grad():
        net.features[1].weight.uniform_(0.5, 1.5)
    x = images()
    with batchnorm.statistics_from(2), batchnorm.at_step(2):
        product = outputs_and_gradients(net, x, monkeypatch, compiled=True)
        assert_same(product, outputs_and_gradients(net, x, monkeypatch, compiled=False))


def test_first_block_as_one_product_records_and_uses_running_statistics(monkeypatch):
    torch.manual_seed(0)
    nets = [Conv4((1, 12, 12), hidden=5, blocks=2).double() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for net, compiled in zip(nets, (True, False)):
        batchnorm.use_mode(net, "running")
        compiled_on_cpu(monkeypatch, compiled)
        with batchnorm.recording(net):
            net(images() * 3 - 1)
    first_norms = [net.features[1] for net in nets]
    torch.testing.assert_close(first_norms[0].running_mean, first_norms[1].running_mean)
    torch.testing.assert_close(first_norms[0].running_var, first_norms[1].running_var)
    for net in nets:
        net.eval()
    compiled_on_cpu(monkeypatch, True)
    product = nets[0](images())
    compiled_on_cpu(monkeypatch, False)
    torch.testing.assert_close(product, nets[1](images()))


@pytest.mark.parametrize(
    "channels, size, autocast",
    [(3, 12, False), (1, 9, False), (1, 12, True)],
    ids=["three-channels", "odd-first-map", "bf16-autocast"],
)
def test_first_block_stays_layered_for_three_channels_an_odd_map_or_autocast(
    channels, size, autocast, monkeypatch
):
    net = Conv4((channels, size, size), hidden=5, blocks=1)
    compiled_on_cpu(monkeypatch, True)
    monkeypatch.setattr(Conv4, "_first_block", lambda *_: pytest.fail("took the product path"))
    x = torch.rand(4, channels, size, size)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        net(x)


def test_blocks_without_batchnorm_are_conv_pool_relu_and_stay_layered():
    model = Conv4((1, 8, 8), hidden=3, blocks=2, batch_norm=False)
    kinds = [type(layer).__name__ for layer in model.features]
    assert kinds == ["Conv2d", "MaxPool2x2", "ReLU"] * 2 + ["Flatten"]
    assert not model.first_block_can_be_product  # the product folds BatchNorm
